"""LazyConfig: detectron2's new-style Mask R-CNN R50-FPN (model_zoo common/models/mask_rcnn_fpn.py) with our
ResNet-50 as FPN bottom-up, torchvision ImageNet conventions (RGB, mean/std in 0..255, stride in the 3x3 conv).

    from detectron2.config import LazyConfig, instantiate
    cfg = LazyConfig.load("configs/detectron2/mask_rcnn_R_50_FPN_lazy.py")
    model = instantiate(cfg.model)

or train with detectron2's tools/lazyconfig_train_net.py --config-file this_file. For weights, set
train.init_checkpoint to a detectron2 .pth made by resbackbones.integrations.detectron2.save_for_detectron2.
"""
from detectron2.model_zoo import get_config

from resbackbones.integrations.detectron2 import lazy_fpn_backbone

model = get_config("common/models/mask_rcnn_fpn.py").model
dataloader = get_config("common/data/coco.py").dataloader
optimizer = get_config("common/optim.py").SGD
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_1x
train = get_config("common/train.py").train

model.backbone = lazy_fpn_backbone(
    name="resnet50", out_features=("res2", "res3", "res4", "res5"), backbone_norm="FrozenBN", freeze_at=2,
    stride_in_1x1=False,
)
model.pixel_mean = [123.675, 116.280, 103.530]
model.pixel_std = [58.395, 57.120, 57.375]
model.input_format = "RGB"
dataloader.train.mapper.image_format = "RGB"
train.init_checkpoint = ""

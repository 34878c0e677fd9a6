"""Our backbones built by detectron2 itself (build_model from yaml / LazyConfig): every builder, every family, every
config in configs/detectron2; declared output_shape() equals the real feature maps."""
import glob
from pathlib import Path

import pytest
import torch

from conftest import REPO, require_detectron2


require_detectron2()

from detectron2.config import LazyConfig, get_cfg, instantiate  # noqa: E402
from detectron2.model_zoo import get_config_file  # noqa: E402
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone, build_model  # noqa: E402

from resbackbones.integrations import detectron2 as rbd2  # noqa: E402

CONFIG_DIR = REPO / "configs" / "detectron2"
OUR_YAMLS = sorted(Path(p).name for p in glob.glob(str(CONFIG_DIR / "*.yaml")) if not Path(p).name.startswith("Base-"))
BUILDERS = ("build_resbackbones_backbone", "build_resbackbones_fpn_backbone", "build_resbackbones_retinanet_fpn_backbone")


def _cfg(yaml=None, **overrides):
    cfg = get_cfg()
    rbd2.add_resbackbones_config(cfg)
    if yaml:
        cfg.merge_from_file(str(CONFIG_DIR / yaml))
    cfg.MODEL.DEVICE = "cpu"
    cfg.merge_from_list([x for kv in overrides.items() for x in kv])
    return cfg


def _check_shapes(backbone, image):
    """Real [N, C, H, W] of every output == output_shape() (channels, and H, W == ceil(input / stride))."""
    with torch.no_grad():
        features = backbone(image)
    declared = backbone.output_shape()
    assert list(features) == list(declared)
    for name, tensor in features.items():
        spec = declared[name]
        expected = (image.shape[0], spec.channels, -(-image.shape[2] // spec.stride), -(-image.shape[3] // spec.stride))
        assert tuple(tensor.shape) == expected, f"{name}: real {tuple(tensor.shape)} vs declared {spec}"
    return features


def test_builders_are_registered():
    for name in BUILDERS:
        assert name in BACKBONE_REGISTRY, name


def test_our_yamls_cover_the_issue_and_every_builder():
    assert {"faster_rcnn_R_50_FPN_1x.yaml", "faster_rcnn_R_101_FPN_3x.yaml", "mask_rcnn_R_50_FPN_1x.yaml",
            "mask_rcnn_R_101_FPN_3x.yaml", "faster_rcnn_vgg16_C4.yaml"} <= set(OUR_YAMLS)
    assert {_cfg(yaml).MODEL.BACKBONE.NAME for yaml in OUR_YAMLS} == set(BUILDERS)


@pytest.mark.parametrize("base", ["Base-RCNN-FPN.yaml", "Base-RCNN-C4.yaml", "Base-RetinaNet.yaml"])
def test_base_yamls_are_verbatim_copies_of_installed_detectron2(base):
    ours = [line for line in (CONFIG_DIR / base).read_text().splitlines() if not line.startswith("# ")]
    theirs = Path(get_config_file(base)).read_text().splitlines()
    assert ours[: len(theirs)] == theirs and len(ours) == len(theirs)


@pytest.mark.parametrize("yaml", OUR_YAMLS)
def test_every_yaml_builds_through_build_model(yaml):
    cfg = _cfg(yaml, **{"MODEL.WEIGHTS": ""})
    model = build_model(cfg).eval()
    assert cfg.MODEL.BACKBONE.NAME in BUILDERS
    backbone = model.backbone
    bottom_up = getattr(backbone, "bottom_up", backbone)
    assert isinstance(bottom_up, rbd2.ResBackbone)
    assert bottom_up.arch == cfg.MODEL.RESBACKBONES.ARCH
    if bottom_up.stride_in_1x1 is not None:
        assert bottom_up.stride_in_1x1 == cfg.MODEL.RESBACKBONES.STRIDE_IN_1X1
    image = torch.rand(1, 3, 64, 96) * 255
    _check_shapes(backbone, image)
    _check_shapes(bottom_up, image)
    # The heads' declared inputs exist in what the backbone produces.
    produced = set(backbone.output_shape())
    if cfg.MODEL.META_ARCHITECTURE == "RetinaNet":
        assert set(cfg.MODEL.RETINANET.IN_FEATURES) == produced == {"p3", "p4", "p5", "p6", "p7"}
    else:
        assert set(cfg.MODEL.RPN.IN_FEATURES) <= produced
    if cfg.MODEL.ROI_HEADS.NAME == "StandardROIHeads":
        assert set(cfg.MODEL.ROI_HEADS.IN_FEATURES) <= produced
    # detectron2's own parameter names: checkpoints of detectron2 ResNets map one to one.
    names = [n for n, _ in model.named_parameters()]
    prefix = "backbone.bottom_up." if backbone is not bottom_up else "backbone."
    first = "stem.conv1.weight" if cfg.MODEL.RESBACKBONES.ARCH.startswith("resnet") else "conv1.conv1_1.weight"
    assert prefix + first in names


# Every family through every builder: (arch, FPN in_features, RPN / RoI in_features for the FPN builders).
FAMILIES = {
    "resnet18": ["res2", "res3", "res4", "res5"],
    "plain18": ["res2", "res3", "res4", "res5"],
    "resnext50_32x4d": ["res2", "res3", "res4", "res5"],
    "vgg16": ["conv3", "conv4", "conv5"],
    "cifar_resnet20": ["res3", "res4"],
}


def _stage_names(arch):
    import resbackbones as rb

    return rb.build_backbone(arch, out_features=None).stage_names


@pytest.mark.parametrize("arch", sorted(FAMILIES))
@pytest.mark.parametrize("builder", BUILDERS)
def test_every_family_through_every_builder(arch, builder):
    in_features = FAMILIES[arch]
    if builder == "build_resbackbones_backbone":
        cfg = _cfg(**{"MODEL.BACKBONE.NAME": builder, "MODEL.RESBACKBONES.ARCH": arch,
                      "MODEL.RESBACKBONES.OUT_FEATURES": [in_features[-1]], "MODEL.BACKBONE.FREEZE_AT": 0})
        backbone = build_backbone(cfg)
        assert list(backbone.output_shape()) == [in_features[-1]]
    else:
        cfg = _cfg(**{"MODEL.BACKBONE.NAME": builder, "MODEL.RESBACKBONES.ARCH": arch,
                      "MODEL.FPN.IN_FEATURES": in_features, "MODEL.FPN.OUT_CHANNELS": 32})
        backbone = build_backbone(cfg)
        strides = [s.stride for s in backbone.output_shape().values()]
        assert all(b == 2 * a for a, b in zip(strides, strides[1:]))
        extra = 1 if builder == "build_resbackbones_fpn_backbone" else 2
        assert len(strides) == len(in_features) + extra
    assert isinstance(getattr(backbone, "bottom_up", backbone), rbd2.ResBackbone)
    size = 64 if not arch.startswith("cifar") else 32
    _check_shapes(backbone, torch.rand(2, 3, size, size + 32))


def test_out_features_default_from_detectron2_keys():
    cfg = _cfg(get_config_file("Base-RCNN-C4.yaml") and "faster_rcnn_vgg16_C4.yaml",
               **{"MODEL.BACKBONE.NAME": "build_resbackbones_backbone", "MODEL.RESBACKBONES.ARCH": "resnet18",
                  "MODEL.RESBACKBONES.OUT_FEATURES": [], "MODEL.RESNETS.OUT_FEATURES": ["res4"]})
    assert list(build_backbone(cfg).output_shape()) == ["res4"]  # C4: MODEL.RESNETS.OUT_FEATURES
    cfg = _cfg(**{"MODEL.BACKBONE.NAME": "build_resbackbones_backbone", "MODEL.RESBACKBONES.ARCH": "vgg11"})
    assert list(build_backbone(cfg).output_shape()) == ["conv5"]  # non-ResNet: the last stage


def test_errors_name_the_key_and_the_choices():
    cfg = _cfg(**{"MODEL.BACKBONE.NAME": "build_resbackbones_backbone", "MODEL.RESBACKBONES.ARCH": "resnet51"})
    with pytest.raises(ValueError, match="unknown backbone 'resnet51'.*resnet50"):
        build_backbone(cfg)
    cfg = _cfg(**{"MODEL.BACKBONE.NAME": "build_resbackbones_backbone", "MODEL.RESBACKBONES.ARCH": "vgg16",
                  "MODEL.RESBACKBONES.SHORTCUT": "A"})
    with pytest.raises(ValueError, match="MODEL.RESBACKBONES.SHORTCUT='A' does not apply to backbone 'vgg16'"):
        build_backbone(cfg)
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_resbackbones_fpn_backbone"
    with pytest.raises(KeyError, match="add_resbackbones_config"):
        build_backbone(cfg)


def test_freeze_at_and_norm_follow_detectron2_meaning():
    cfg = _cfg(**{"MODEL.BACKBONE.NAME": "build_resbackbones_backbone", "MODEL.RESBACKBONES.ARCH": "resnet18",
                  "MODEL.RESBACKBONES.OUT_FEATURES": ["res3"], "MODEL.BACKBONE.FREEZE_AT": 2})
    backbone = build_backbone(cfg)
    frozen = {n.split(".")[0] for n, p in backbone.named_parameters() if not p.requires_grad}
    trainable = {n.split(".")[0] for n, p in backbone.named_parameters() if p.requires_grad}
    assert frozen == {"stem", "res2"} and trainable == {"res3"}
    # NORM "" on a BN-normalised arch means FrozenBN, detectron2's detection default.
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())


def test_lazy_config_instantiates_our_backbone_in_detectron2_mask_rcnn():
    cfg = LazyConfig.load(str(CONFIG_DIR / "mask_rcnn_R_50_FPN_lazy.py"))
    cfg.model.backbone.bottom_up.name = "resnet18"  # keep the test small; the config itself says resnet50
    cfg.model.backbone.bottom_up.stride_in_1x1 = False
    model = instantiate(cfg.model).eval()
    assert isinstance(model.backbone.bottom_up, rbd2.ResBackbone)
    assert model.input_format == "RGB"
    _check_shapes(model.backbone, torch.rand(1, 3, 64, 64) * 255)
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 64, 96) * 255}])
    assert out[0]["instances"].image_size == (64, 96)

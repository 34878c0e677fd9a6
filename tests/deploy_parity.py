"""What issue 22 asks of an exported detector against the eager float32 model, shared by the deploy tests: the same
labels, boxes within 1e-3 of the image size, scores within 1e-3, mask IoU >= 0.99 (masks at 0.5), for real image
crops at several sizes; and a randomly initialised model made to behave like a trained one where it matters."""
from typing import List, Sequence, Tuple

import torch
from torchvision.ops.misc import FrozenBatchNorm2d

from conftest import FIXTURES
from resbackbones.data.folders import read_image

IMAGE = FIXTURES / "coco_sample" / "images" / "000000000089.jpg"
# Few proposals and every detection kept: seconds per image, and a random model still detects something.
SMALL_OVERRIDES = ["model.input.min_size=[160]", "model.input.max_size=200", "model.rpn.pre_nms_top_n_test=100",
                   "model.rpn.post_nms_top_n_test=50", "model.roi_heads.score_thresh=0.0",
                   "model.roi_heads.detections_per_img=10"]
SIZES = [(128, 160), (96, 128), (150, 100)]  # landscape, smaller, portrait: the min- and max-size limits both bind


def real_crops(sizes: Sequence[Tuple[int, int]] = SIZES) -> List[torch.Tensor]:
    """Crops of a real COCO image resized to `sizes` (random noise gives near-uniform scores, where ties decide
    labels)."""
    full = torch.from_numpy(read_image(IMAGE).transpose(2, 0, 1).copy()).float().div_(255)
    out = []
    for h, w in sizes:
        crop = full[:, :2 * h, :2 * w]
        out.append(torch.nn.functional.interpolate(crop[None], size=(h, w), mode="bilinear", align_corners=False)[0])
    return out


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU per detection of masks [K, 1, H, W] (probabilities) thresholded at 0.5; 1 where both are empty."""
    a, b = a[:, 0] > 0.5, b[:, 0] > 0.5
    inter = (a & b).flatten(1).sum(1).double()
    union = (a | b).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


def assert_matches_eager(detector, model: torch.nn.Module, images: List[torch.Tensor], what: str, *,
                         require_mask_area: bool = True) -> None:
    """detector(images) (a deploy.load callable) against model([image]) one image at a time (a batch's padding to
    its largest image changes the border features); every image must give at least one detection, and (Mask
    R-CNN, require_mask_area) at least half of its masks 20 pixels or more."""
    with torch.no_grad():
        expected = [model([image])[0] for image in images]
    got = detector(images)
    for image, e, g in zip(images, expected, got):
        where = (what, tuple(image.shape))
        size = float(max(image.shape[1:]))
        assert set(g) == set(e), where
        assert len(e["boxes"]) > 0 and torch.equal(g["labels"], e["labels"]), where
        assert (g["boxes"] - e["boxes"]).abs().max() <= 1e-3 * size, where
        assert (g["scores"] - e["scores"]).abs().max() <= 1e-3, where
        if "masks" in e:
            assert g["masks"].shape == e["masks"].shape == (len(e["boxes"]), 1, *image.shape[1:]), where
            assert mask_iou(g["masks"], e["masks"]).min() >= 0.99, where
            if require_mask_area:  # the IoU says something only over masks with pixels
                assert int(((e["masks"] > 0.5).flatten(1).sum(1) >= 20).sum()) >= len(e["masks"]) // 2, where


def calibrate_frozen_bn(model: torch.nn.Module, image: torch.Tensor, residual_scale: float = 0.1) -> None:
    """Make a randomly initialised detector behave like a trained one where parity tests need it: every
    FrozenBatchNorm2d gets the mean and variance of its input on `image` (as pretrained statistics would), and the
    last norm of every bottleneck's residual branch (`conv3.norm`) a weight of `residual_scale`.

    Why: with identity FrozenBN statistics a random ResNet-50/101 grows its activations to ~1e5 and the RPN moves
    every anchor off the image (nothing detected, nothing compared); normalised but with full-size residual
    branches, 33 random blocks amplify float rounding (1e-7) into box differences of 1e-2 px and flipped mask
    pixels between two correct computations. Trained residual branches are small next to the identity path
    (zero_init_residual, Goyal et al. 2017, starts them at zero); 0.1 keeps every convolution in the result."""
    def from_input(module, inputs):
        x = inputs[0]
        module.running_mean.copy_(x.mean((0, 2, 3)))
        module.running_var.copy_(x.var((0, 2, 3)))
    frozen = [(name, m) for name, m in model.named_modules() if isinstance(m, FrozenBatchNorm2d)]
    hooks = [m.register_forward_pre_hook(from_input) for _, m in frozen]
    try:
        with torch.no_grad():
            model.eval()([image])
    finally:
        for hook in hooks:
            hook.remove()
    for name, module in frozen:
        if name.endswith("conv3.norm"):
            module.weight.mul_(residual_scale)


def sharpen_masks(model: torch.nn.Module, image: torch.Tensor, factor: float = 20.0) -> None:
    """Centre the mask logits of a random Mask R-CNN on `image` (per class, bias minus their median) and scale them
    by `factor`: its masks are then confident blobs covering about half of each box, as a trained model's masks
    have real area, instead of a few pixels just above 0.5 (a mask IoU over those says little). No-op without a
    mask head."""
    predictor = getattr(model.roi_heads, "mask_predictor", None)
    if predictor is None:
        return
    seen = []
    hook = predictor.mask_fcn_logits.register_forward_hook(lambda module, args, out: seen.append(out))
    try:
        with torch.no_grad():
            model.eval()([image])
    finally:
        hook.remove()
    with torch.no_grad():
        logits = seen[0].transpose(0, 1).flatten(1)  # [classes, R * M * M]
        predictor.mask_fcn_logits.bias.sub_(logits.median(dim=1).values)
        predictor.mask_fcn_logits.weight.mul_(factor)
        predictor.mask_fcn_logits.bias.mul_(factor)


FORMATS = {"torchscript": "det.pt", "export": "det.pt2", "onnx": "det.onnx"}


def export_config(config, overrides: Sequence[str], folder):
    """(eager model, {format: file}) for configs/`config` built with random weights and `overrides`, its FrozenBN
    statistics calibrated (calibrate_frozen_bn), exported to every format into `folder`."""
    from resbackbones.config import load_config
    from resbackbones.config.det import DetTrainConfig
    from resbackbones.deploy.export import export_detector, write_exported
    from resbackbones.detection.builder import build_detector

    cfg = load_config(DetTrainConfig, config, ["model.backbone.weights=", *overrides])
    torch.manual_seed(0)
    model = build_detector(cfg.model).eval()
    calibration_image = real_crops([(150, 170)])[0]
    calibrate_frozen_bn(model, calibration_image)
    sharpen_masks(model, calibration_image)
    files = {fmt: folder / name for fmt, name in FORMATS.items()}
    export_detector(model, files["torchscript"], fmt="torchscript")
    write_exported(model, {"export": files["export"], "onnx": files["onnx"]})
    return model, files

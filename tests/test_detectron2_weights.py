"""Weights across the detectron2 boundary: detectron2's own ResNet -> ours gives identical features; a model-zoo style
caffe2 .pkl loads into our backbone through DetectionCheckpointer; our files round-trip through detectron2 models and
DetectionCheckpointer; mismatched preprocessing conventions are refused (or adopted on request)."""
import pickle

import pytest
import torch

from conftest import require_detectron2


require_detectron2()

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.layers import ShapeSpec as D2ShapeSpec  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.modeling.backbone.resnet import build_resnet_backbone  # noqa: E402

import resbackbones as rb  # noqa: E402
from resbackbones.integrations import detectron2 as rbd2  # noqa: E402
from resbackbones.weights import WeightsError, load_with_metadata  # noqa: E402
from resbackbones.weights.convert_detectron2 import from_detectron2, to_caffe2_names  # noqa: E402
from resbackbones.weights.metadata import WeightsMetadata  # noqa: E402

STAGES = ["res2", "res3", "res4", "res5"]


def _randomise_norms(module: torch.nn.Module) -> None:
    """Give every norm non-trivial statistics, so a wrong mapping of BN buffers changes the features."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, buf in list(module.named_buffers()) + list(module.named_parameters()):
            if ".norm." in f".{name}" or name.startswith("norm."):
                if name.endswith("running_var"):
                    buf.copy_(torch.rand(buf.shape, generator=generator) + 0.5)
                elif name.endswith(("running_mean", "bias")):
                    buf.copy_(torch.randn(buf.shape, generator=generator) * 0.1)
                elif name.endswith("weight"):
                    buf.copy_(torch.rand(buf.shape, generator=generator) + 0.5)


def _d2_resnet(depth: int, *, stride_in_1x1: bool, groups: int = 1, width: int = 64):
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = stride_in_1x1
    cfg.MODEL.RESNETS.NUM_GROUPS = groups
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = width
    cfg.MODEL.RESNETS.OUT_FEATURES = STAGES
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth in (18, 34) else 256
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    backbone = build_resnet_backbone(cfg, D2ShapeSpec(channels=3)).eval()
    _randomise_norms(backbone)
    return backbone


@pytest.mark.parametrize("arch, depth, stride_in_1x1, groups, width", [
    ("resnet50", 50, True, 1, 64),   # MSRA / detectron2 default layout
    ("resnet18", 18, False, 1, 64),
    ("resnext50_32x4d", 50, False, 32, 4),  # torchvision layout, grouped 3x3
])
def test_detectron2_resnet_weights_give_identical_features(arch, depth, stride_in_1x1, groups, width):
    d2 = _d2_resnet(depth, stride_in_1x1=stride_in_1x1, groups=groups, width=width)
    ours = rb.build_backbone(arch, out_features=STAGES, norm="FrozenBN", stride_in_1x1=stride_in_1x1).eval()
    state = {k[len("backbone."):]: v for k, v in from_detectron2(d2.state_dict()).items() if k.startswith("backbone.")}
    rb.weights.load_state_dict(ours, state)  # strict: every key and shape
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected, got = d2(image), ours(image)
        adapter = rbd2.ResBackbone(ours)
        via_adapter = adapter(image)
    for name in STAGES:
        diff = (expected[name] - got[name]).abs().max().item()
        scale = expected[name].abs().max().item()
        assert diff <= 1e-5 * max(scale, 1.0), f"{name}: max abs diff {diff} (max |feature| {scale})"
        assert torch.equal(via_adapter[name], got[name])
    # The adapter has detectron2's own names: detectron2's state dict loads into it strictly as is.
    adapter.load_state_dict(d2.state_dict(), strict=True)


def _cfg(yaml: str, **overrides):
    from conftest import REPO

    cfg = get_cfg()
    rbd2.add_resbackbones_config(cfg)
    cfg.merge_from_file(str(REPO / "configs" / "detectron2" / yaml))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.merge_from_list([x for kv in overrides.items() for x in kv])
    return cfg


def _backbone_features(model, image):
    with torch.no_grad():
        return model.backbone.bottom_up(image)


@pytest.fixture(scope="module")
def small_msra_pkl(tmp_path_factory):
    """A detectron2 model-zoo style ImageNet file (caffe2 blob names, numpy arrays, BN scale/bias only) of a
    randomly initialised detectron2 ResNet-18, written the way MSRA/R-50.pkl is: a pickled dict of arrays."""
    d2 = _d2_resnet(18, stride_in_1x1=True)
    with torch.no_grad():  # caffe2 "affine channel" BN: statistics folded into scale and bias
        for module in d2.modules():
            if type(module).__name__ == "FrozenBatchNorm2d":
                scale = module.weight * (module.running_var + module.eps).rsqrt()
                module.bias.copy_(module.bias - module.running_mean * scale)
                module.weight.copy_(scale)
                module.running_mean.zero_()
                module.running_var.fill_(1.0 - module.eps)
    blobs = {k: v for k, v in to_caffe2_names(from_detectron2(d2.state_dict())).items()
             if not k.endswith(("_bn_rm", "_bn_riv"))}
    path = tmp_path_factory.mktemp("zoo") / "R-18.pkl"
    with open(path, "wb") as handle:
        pickle.dump(blobs, handle, protocol=2)
    return path, d2


def test_model_zoo_pkl_loads_into_our_backbone_through_detection_checkpointer(small_msra_pkl):
    path, d2 = small_msra_pkl
    cfg = _cfg("mask_rcnn_R_50_FPN_1x_msra.yaml", **{"MODEL.RESBACKBONES.ARCH": "resnet18",
                                                     "MODEL.FPN.OUT_CHANNELS": 32})
    ours = build_model(cfg).eval()
    DetectionCheckpointer(ours).load(str(path))  # detectron2's own caffe2 name conversion + matching
    reference = build_model(_cfg("mask_rcnn_R_50_FPN_1x_msra.yaml", **{
        "MODEL.BACKBONE.NAME": "build_resnet_fpn_backbone", "MODEL.RESNETS.DEPTH": 18,
        "MODEL.RESNETS.RES2_OUT_CHANNELS": 64, "MODEL.FPN.OUT_CHANNELS": 32})).eval()
    DetectionCheckpointer(reference).load(str(path))
    image = torch.randn(1, 3, 64, 96)
    expected, got = _backbone_features(reference, image), _backbone_features(ours, image)
    for name in STAGES:
        assert (expected[name] - got[name]).abs().max().item() <= 1e-5 * max(expected[name].abs().max().item(), 1)
    # The same file through our safe (numpy-only) reader into a bare backbone gives the same features too.
    bare = rb.build_backbone("resnet18", out_features=STAGES, norm="FrozenBN").eval()
    rb.weights.load_state_dict(bare, {k[9:]: v for k, v in from_detectron2(path).items() if k.startswith("backbone.")})
    with torch.no_grad():
        bare_features = bare(image)
    for name in STAGES:
        assert torch.allclose(bare_features[name], got[name], rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def our_weights(tmp_path_factory):
    """Our ResNet-18 backbone weights in torchvision conventions (RGB, ImageNet mean/std, stride in 3x3)."""
    backbone = rb.build_backbone("resnet18", out_features=None)
    _randomise_norms(backbone.stages)
    path = tmp_path_factory.mktemp("w") / "resnet18.safetensors"
    rb.weights.save(backbone, path, metadata=WeightsMetadata.torchvision("resnet18", num_classes=None).to_dict())
    return path, backbone.state_dict()


def _assert_backbone_equals(model, expected_state):
    adapter = model.backbone.bottom_up
    got = {"stages." + k: v for k, v in adapter.state_dict().items()}
    assert set(got) == {k for k in expected_state if not k.endswith("num_batches_tracked")}
    for key, value in got.items():
        assert torch.equal(value, expected_state[key]), key


def test_our_weights_round_trip_through_detectron2(our_weights, tmp_path):
    path, expected = our_weights
    overrides = {"MODEL.RESBACKBONES.ARCH": "resnet18", "MODEL.FPN.OUT_CHANNELS": 32}
    # 1. our file -> detectron2 model, at build time (MODEL.RESBACKBONES.WEIGHTS), conventions checked.
    model = build_model(_cfg("mask_rcnn_R_50_FPN_1x.yaml", **overrides, **{"MODEL.RESBACKBONES.WEIGHTS": str(path)}))
    _assert_backbone_equals(model, expected)
    # 2. detectron2's DetectionCheckpointer saves the whole model and loads it into a fresh one.
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model_final")
    fresh = build_model(_cfg("mask_rcnn_R_50_FPN_1x.yaml", **overrides))
    DetectionCheckpointer(fresh).load(str(tmp_path / "model_final.pth"))
    _assert_backbone_equals(fresh, expected)
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name
    # 3. back to our file format, with the model's conventions recorded.
    exported = rbd2.export_backbone_weights(fresh, tmp_path / "back.safetensors")
    state, metadata = load_with_metadata(exported)
    assert set(state) == set(k for k in expected if not k.endswith("num_batches_tracked"))
    assert all(torch.equal(state[k], expected[k]) for k in state)
    meta = WeightsMetadata.from_dict(metadata)
    assert (meta.arch, meta.input_format, meta.stride_in_1x1) == ("resnet18", "RGB", False)
    assert [round(v, 3) for v in meta.pixel_mean] == [123.675, 116.28, 103.53] and meta.pixel_scale == 255.0
    rb.weights.load_state_dict(rb.build_backbone("resnet18", out_features=None), state)
    # 4. our file rewritten as a detectron2 checkpoint: plain DetectionCheckpointer puts it in place (matching
    #    heuristics, as for detectron2's own ImageNet files); our checkpointer also reads the .safetensors itself.
    d2_file = rbd2.save_for_detectron2(path, tmp_path / "resnet18_d2.pth")
    for checkpointer, source in ((DetectionCheckpointer, d2_file), (rbd2.ResBackbonesCheckpointer, str(path))):
        other = build_model(_cfg("mask_rcnn_R_50_FPN_1x.yaml", **overrides))
        checkpointer(other).load(source)
        _assert_backbone_equals(other, expected)


def test_mismatched_conventions_are_refused_with_the_config_lines(tmp_path):
    backbone = rb.build_backbone("resnet50", out_features=None)
    path = rb.weights.save(backbone, tmp_path / "tv.safetensors",
                           metadata=WeightsMetadata.torchvision("resnet50", num_classes=None).to_dict())
    # torchvision-convention weights in a config built for MSRA caffe2 weights (BGR, caffe mean, std 1, 1x1 stride).
    cfg = _cfg("mask_rcnn_R_50_FPN_1x_msra.yaml", **{"MODEL.RESBACKBONES.WEIGHTS": str(path),
                                                     "MODEL.FPN.OUT_CHANNELS": 32})
    with pytest.raises(WeightsError) as error:
        build_model(cfg)
    message = str(error.value)
    for key in ("INPUT.FORMAT", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "MODEL.RESBACKBONES.STRIDE_IN_1X1"):
        assert key in message
    assert "'RGB'" in message and "'BGR'" in message
    # Adopting the weights' conventions instead (what tools/train_d2.py does) makes the same config build.
    changes = rbd2.apply_weights_conventions(cfg)
    assert len(changes) == 4
    assert cfg.INPUT.FORMAT == "RGB" and cfg.MODEL.RESBACKBONES.STRIDE_IN_1X1 is False
    model = build_model(cfg)
    assert model.input_format == "RGB" and model.backbone.bottom_up.stride_in_1x1 is False
    # Our checkpointer refuses the same file for a model built with other conventions.
    msra = build_model(_cfg("mask_rcnn_R_50_FPN_1x_msra.yaml", **{"MODEL.RESBACKBONES.STRIDE_IN_1X1": False,
                                                                  "MODEL.FPN.OUT_CHANNELS": 32}))
    with pytest.raises(WeightsError, match="INPUT.FORMAT"):
        rbd2.ResBackbonesCheckpointer(msra).load(str(path))


def test_stride_in_1x1_defaults_to_the_weights(tmp_path):
    backbone = rb.build_backbone("resnet50", out_features=None, stride_in_1x1=True)
    meta = WeightsMetadata.detectron2_msra("resnet50")
    path = rb.weights.save(backbone, tmp_path / "msra.safetensors", metadata=meta.to_dict())
    cfg = _cfg("mask_rcnn_R_50_FPN_1x_msra.yaml", **{"MODEL.RESBACKBONES.WEIGHTS": str(path)})
    cfg.MODEL.RESBACKBONES.STRIDE_IN_1X1 = None  # unset: taken from the weights
    assert rbd2.backbone_options(cfg, out_features=["res5"], in_channels=3)["stride_in_1x1"] is True
    cfg.MODEL.RESBACKBONES.ARCH = "resnet101"
    with pytest.raises(WeightsError, match="'resnet50' weights but MODEL.RESBACKBONES.ARCH is 'resnet101'"):
        build_model(cfg)


def test_our_checkpointer_reads_and_writes_through_the_library_rules(small_msra_pkl, tmp_path):
    """ResBackbonesCheckpointer (used by tools/train_d2.py for training and --eval-only): checkpoints are written
    atomically and carry record CRCs; a damaged one is refused naming the file, before detectron2 sees it; a .pkl
    naming code is refused without running it; the model-zoo .pkl still loads as through DetectionCheckpointer."""
    overrides = {"MODEL.RESBACKBONES.ARCH": "resnet18", "MODEL.FPN.OUT_CHANNELS": 32}
    model = build_model(_cfg("mask_rcnn_R_50_FPN_1x.yaml", **overrides))
    run = tmp_path / "run"
    run.mkdir()
    rbd2.ResBackbonesCheckpointer(model, save_dir=str(run)).save("model_0000009")
    assert sorted(p.name for p in run.iterdir()) == ["last_checkpoint", "model_0000009.pth"]  # no temp file left
    assert (run / "last_checkpoint").read_text() == "model_0000009.pth"
    fresh = build_model(_cfg("mask_rcnn_R_50_FPN_1x.yaml", **overrides))
    rbd2.ResBackbonesCheckpointer(fresh, save_dir=str(run)).resume_or_load("", resume=True)
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name

    # Zeros inside the tensor data: torch.load (and so DetectionCheckpointer) would load it; ours refuses it.
    damaged = run / "model_0000009.pth"
    data = bytearray(damaged.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(4096)
    damaged.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"model_0000009\.pth is corrupted.*CRC-32"):
        rbd2.ResBackbonesCheckpointer(fresh).load(str(damaged))

    # A pickle naming a function: detectron2's .pkl branch is pickle.load; ours runs nothing.
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_RunsCode(str(marker)), protocol=2))
    with pytest.raises(WeightsError, match=r"refused to load .*evil\.pkl.*nothing was executed"):
        rbd2.ResBackbonesCheckpointer(fresh).load(str(evil))
    assert not marker.exists()

    path, _ = small_msra_pkl
    ours, reference = (build_model(_cfg("mask_rcnn_R_50_FPN_1x_msra.yaml", **overrides)).eval() for _ in range(2))
    rbd2.ResBackbonesCheckpointer(ours).load(str(path))
    DetectionCheckpointer(reference).load(str(path))
    bottom_up = (ours.backbone.bottom_up.state_dict(), reference.backbone.bottom_up.state_dict())
    assert len(bottom_up[0]) > 20
    for (name, a), (_, b) in zip(*(state.items() for state in bottom_up)):
        assert torch.equal(a, b), name


class _RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))

"""Weight I/O and converters: safetensors/torch round trips, refusal of pickled code, detectron2 .pkl, metadata,
strict-matching errors, the convert_weights CLI."""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

import resbackbones as rb
from resbackbones.weights import WeightsError, WeightsMetadata
from resbackbones.weights.convert_detectron2 import to_caffe2_names

REPO = Path(__file__).resolve().parents[1]


def _with_random_bn_stats(model):
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
    return model


def _same_outputs(a, b, size=64):
    images = torch.randn(1, 3, size, size)
    with torch.no_grad():
        return torch.allclose(a.eval()(images), b.eval()(images), atol=1e-6)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_save_load_round_trip(tmp_path, suffix):
    model = _with_random_bn_stats(rb.build_classifier("resnet18", num_classes=10))
    meta = WeightsMetadata.torchvision("resnet18", num_classes=10)
    path = rb.weights.save(model, tmp_path / f"w{suffix}", metadata=meta.to_dict())
    state, raw = rb.weights.load_with_metadata(path)
    assert WeightsMetadata.from_dict(raw) == meta
    other = rb.build_classifier("resnet18", num_classes=10)
    other.load_state_dict(state)
    assert _same_outputs(model, other)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_torch_file_with_pickled_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}, "payload": _Exploit(marker)}, path)
    with pytest.raises(WeightsError, match="refused"):
        rb.weights.load(path)
    with pytest.raises(WeightsError, match="refused"):
        rb.weights.convert("torchvision", path)
    assert not marker.exists()


def _write_pkl(path, obj):
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=2)
    return path


def test_detectron2_caffe2_pkl_round_trip(tmp_path):
    model = _with_random_bn_stats(rb.build_classifier("resnet50", stride_in_1x1=True))
    blobs = to_caffe2_names(model.state_dict())
    assert {"conv1_w", "res_conv1_bn_s", "res2_0_branch2a_w", "res2_0_branch1_bn_b", "fc1000_w"} <= set(blobs)
    blobs["res2_0_branch2a_w_momentum"] = np.zeros(1, np.float32)  # caffe2 optimizer state: ignored
    path = _write_pkl(tmp_path / "R-50.pkl", {"model": blobs, "__author__": "Detectron"})
    state, meta = rb.weights.convert("detectron2", path)
    assert (meta.arch, meta.input_format, meta.pixel_scale, meta.stride_in_1x1) == ("resnet50", "BGR", 255.0, True)
    other = rb.build_classifier("resnet50", stride_in_1x1=True)
    rb.weights.load_state_dict(other, state)
    assert _same_outputs(model, other)


def test_detectron2_names_and_backbone_checkpoints(tmp_path):
    model = _with_random_bn_stats(rb.build_classifier("resnet18"))
    backbone_state = rb.weights.backbone_state_dict(model.state_dict())
    # detectron2 names (stem.conv1.weight, res2.0.conv1.norm.*) as numpy arrays, no head.
    d2_names = {k.replace("stages.", ""): v.numpy() for k, v in backbone_state.items()}
    state = rb.weights.from_detectron2(_write_pkl(tmp_path / "d2.pkl", {"model": d2_names}))
    rb.weights.load_state_dict(rb.build_backbone("resnet18"), rb.weights.backbone_state_dict(state))
    # A detectron2 FPN training checkpoint: backbone.bottom_up.* plus heads that are not ours.
    ckpt = {f"backbone.bottom_up.{k.replace('stages.', '')}": v for k, v in backbone_state.items()}
    ckpt["proposal_generator.rpn_head.conv.weight"] = torch.zeros(1)
    state = rb.weights.from_detectron2({"model": ckpt})
    other = rb.build_backbone("resnet18")
    rb.weights.load_state_dict(other, rb.weights.backbone_state_dict(state))
    assert torch.equal(other.stages.res3[0].shortcut.weight, model.backbone.stages.res3[0].shortcut.weight)


def test_caffe2_affine_bn_without_running_stats_becomes_frozen_bn(tmp_path):
    model = rb.build_classifier("resnet18", norm="FrozenBN")
    blobs = {k: v for k, v in to_caffe2_names(model.state_dict()).items() if not k.endswith(("_rm", "_riv"))}
    state = rb.weights.from_detectron2(_write_pkl(tmp_path / "affine.pkl", blobs))
    assert torch.equal(state["backbone.stages.res2.0.conv1.norm.running_var"], torch.ones(64))
    rb.weights.load_state_dict(rb.build_classifier("resnet18", norm="FrozenBN"), state)


def test_malicious_pkl_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = _write_pkl(tmp_path / "evil.pkl", {"model": {"conv1_w": _Exploit(marker)}})
    with pytest.raises(WeightsError, match="refused.*os|posix|system"):
        rb.weights.from_detectron2(path)
    assert not marker.exists()


def test_metadata_refuses_conflicting_stride_and_input_format(tmp_path):
    tv_state = rb.weights.from_torchvision(torchvision.models.resnet50().state_dict())
    path = rb.weights.save(tv_state, tmp_path / "tv.safetensors",
                           metadata=WeightsMetadata.torchvision("resnet50").to_dict())
    caffe_style = rb.build_classifier("resnet50", stride_in_1x1=True)
    with pytest.raises(WeightsError, match="stride_in_1x1=False"):
        rb.weights.load_into(caffe_style, path)
    with pytest.raises(WeightsError, match="expect RGB input .* feeds BGR"):
        rb.weights.load_into(rb.build_classifier("resnet50"), path, input_format="BGR")
    meta = rb.weights.load_into(rb.build_classifier("resnet50"), path, input_format="RGB")
    assert meta.stride_in_1x1 is False and meta.pixel_mean == (0.485, 0.456, 0.406)


def test_shape_mismatch_names_the_layer_and_both_shapes():
    state = rb.weights.from_torchvision(torchvision.models.resnet18(num_classes=10).state_dict())
    with pytest.raises(WeightsError) as info:
        rb.weights.load_state_dict(rb.build_classifier("resnet18", num_classes=1000), state)
    assert "head.fc.weight: model (1000, 512) vs state dict (10, 512)" in str(info.value)
    with pytest.raises(WeightsError, match=r"(?s)missing keys.*res2\.0\.shortcut\.weight"):
        rb.weights.load_state_dict(rb.build_classifier("resnet18", shortcut="C", num_classes=10), state)


def test_unknown_checkpoint_layout_and_source_are_clear_errors():
    with pytest.raises(WeightsError, match="not a torchvision ResNet or VGG"):
        rb.weights.from_torchvision({"foo.weight": torch.ones(1)})
    with pytest.raises(WeightsError, match="available: torchvision, detectron2, cifar"):
        rb.weights.convert("timm", {})


def _cli(*args):
    return subprocess.run([sys.executable, str(REPO / "tools" / "convert_weights.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


def test_convert_weights_cli_end_to_end(tmp_path):
    tv = torchvision.models.resnet18()
    torch.save(tv.state_dict(), tmp_path / "r18.pth")
    done = _cli("--source", "torchvision", tmp_path / "r18.pth", tmp_path / "r18.safetensors", "--verify")
    assert done.returncode == 0, done.stderr
    state, raw = rb.weights.load_with_metadata(tmp_path / "r18.safetensors")
    assert WeightsMetadata.from_dict(raw).arch == "resnet18"
    ours = rb.build_classifier("resnet18")
    ours.load_state_dict(state)
    with torch.no_grad():
        images = torch.randn(1, 3, 64, 64)
        assert torch.allclose(ours.eval()(images), tv.eval()(images), atol=1e-5)



def test_convert_weights_cli_bad_input_exits_2_with_one_line(tmp_path, capsys):
    from convert_weights import main  # in-process: the subprocess start-up is paid once, above

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    assert main(["--source", "torchvision", str(tmp_path / "nope.pth"), str(tmp_path / "x.safetensors")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["--source", "detectron2", str(tmp_path / "r18.pth"), str(tmp_path / "x.safetensors")]) == 2
    assert "no ResNet backbone keys" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_dispatch_reaches_the_vgg_and_cifar_converters():
    from conftest import require_shared

    vgg = torchvision.models.vgg11(num_classes=10)
    state = rb.weights.from_torchvision(vgg.state_dict())
    rb.weights.load_state_dict(rb.build_classifier("vgg11", num_classes=10), state)
    path = require_shared("weights/cifar10/resnet20-12fca82f.th")
    state, meta = rb.weights.convert("cifar", path)
    assert (meta.arch, meta.source, meta.num_classes) == ("cifar_resnet20", "cifar", 10)
    rb.weights.load_state_dict(rb.build_classifier("cifar_resnet20", num_classes=10), state)


def test_detectron2_files_converted_from_torchvision_keep_torchvision_preprocessing(tmp_path):
    backbone_state = rb.weights.backbone_state_dict(rb.build_classifier("resnet50").state_dict())
    d2_names = {k.replace("stages.", ""): v.numpy() for k, v in backbone_state.items()}
    path = _write_pkl(tmp_path / "R-50-tv.pkl", {"model": d2_names, "__author__": "torchvision",
                                                  "matching_heuristics": True})
    state, meta = rb.weights.convert("detectron2", path)
    assert (meta.arch, meta.input_format, meta.stride_in_1x1, meta.pixel_scale) == ("resnet50", "RGB", False, 255.0)
    assert meta.pixel_mean == pytest.approx((123.675, 116.28, 103.53))
    assert all(isinstance(v, torch.Tensor) for v in state.values()) and not any(k.startswith("__") for k in state)

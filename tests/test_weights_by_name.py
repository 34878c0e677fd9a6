"""Weights by name: rb.build_backbone / build_classifier(weights=...) from "torchvision:<ENUM>" (torchvision's own
enum and download cache, in a temporary TORCH_HOME; nothing is downloaded) and from files of every format."""
from pathlib import Path

import pytest
import torch
import torchvision

import resbackbones as rb
from resbackbones.weights import WeightsError, WeightsMetadata
from resbackbones.weights.convert_detectron2 import to_caffe2_names

REPO = Path(__file__).resolve().parents[1]

import train_det  # noqa: E402


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME: torch.hub.get_dir() is <it>/hub, torchvision's cache <it>/hub/checkpoints. The tests
    place random stand-in weights under torchvision's hashed file names, which the sha256 check of the name would
    refuse (tests/test_weights_reader.py tests that check)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("RESBACKBONES_UNCHECKED_TORCHVISION_CACHE", "1")
    return tmp_path / "torch_home"


def _place_random_resnet50(torch_home: Path):
    torch.manual_seed(3)
    tv = torchvision.models.resnet50()
    for module in tv.modules():  # non-trivial BN statistics, so a missed buffer would show
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    url = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url
    assert url.endswith("/resnet50-11ad3fa6.pth")  # the file name torchvision caches it under
    path = torch_home / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    path.parent.mkdir(parents=True)
    torch.save(tv.state_dict(), path)
    return tv.state_dict()


def test_torchvision_enum_gives_exactly_the_cached_file(torch_home):
    tv_state = _place_random_resnet50(torch_home)
    expected = rb.weights.backbone_state_dict(rb.weights.from_torchvision(tv_state))
    for reference in ("torchvision:IMAGENET1K_V2", "torchvision:DEFAULT"):
        bb = rb.build_backbone("resnet50", weights=reference)
        got = {k: v for k, v in bb.state_dict().items() if not k.endswith("num_batches_tracked")}
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) for k in expected), reference
        meta = bb.weights_metadata
        assert (meta.arch, meta.source, meta.input_format, meta.pixel_scale, meta.stride_in_1x1) == (
            "resnet50", "torchvision", "RGB", 1.0, False)
        assert meta.pixel_mean == (0.485, 0.456, 0.406) and meta.pixel_std == (0.229, 0.224, 0.225)
        assert meta.extra["torchvision_weights"] == "ResNet50_Weights.IMAGENET1K_V2"
    clf = rb.build_classifier("resnet50", num_classes=1000, weights="torchvision:IMAGENET1K_V2").eval()
    tv = torchvision.models.resnet50().eval()
    tv.load_state_dict(tv_state)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(clf(x), tv(x), rtol=0, atol=1e-5)
    ten = rb.build_classifier("resnet50", num_classes=10, weights="torchvision:IMAGENET1K_V2")
    assert torch.equal(ten.backbone.stages.res5[2].conv3.weight, clf.backbone.stages.res5[2].conv3.weight)
    assert ten.head.fc.weight.shape == (10, 2048)  # a 1000-class head does not fit: left for fine-tuning


def test_offline_and_not_cached_is_one_line_naming_file_and_folder(torch_home):
    with pytest.raises(WeightsError) as info:
        rb.build_backbone("resnet50", weights="torchvision:IMAGENET1K_V2")
    message = str(info.value)
    assert "\n" not in message
    assert "resnet50-11ad3fa6.pth" in message and str(torch_home / "hub" / "checkpoints") in message
    assert "RESBACKBONES_OFFLINE" in message


def test_offline_not_cached_through_train_det_is_exit_2(torch_home, tmp_path, capsys):
    code = train_det.main([
        "--config", str(REPO / "configs" / "quickstart.yaml"), "--output", str(tmp_path / "out"), "--device", "cpu",
        "data.train.num_images=2", f"data.train.root={tmp_path / 'train'}", "data.val.num_images=2",
        f"data.val.root={tmp_path / 'val'}", "model.backbone.name=resnet50",
        "model.backbone.weights=torchvision:IMAGENET1K_V2"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "resnet50-11ad3fa6.pth" in err and str(torch_home / "hub" / "checkpoints") in err


def test_enum_and_arch_errors_list_the_valid_choices(torch_home):
    with pytest.raises(WeightsError, match=r"unknown torchvision weights 'IMAGENET1K_V3' for resnet50; valid: "
                                           r"IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT \(= IMAGENET1K_V2\)"):
        rb.build_backbone("resnet50", weights="torchvision:IMAGENET1K_V3")
    with pytest.raises(WeightsError, match="torchvision has no pretrained weights for 'plain50'"):
        rb.build_backbone("plain50", weights="torchvision:DEFAULT")
    with pytest.raises(ValueError, match="unknown backbone 'resnet51'"):
        rb.build_backbone("resnet51", weights="torchvision:DEFAULT")


def test_wrong_arch_for_the_file_names_both(tmp_path):
    path = tmp_path / "tv_r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(WeightsError, match=r"tv_r18\.pth holds resnet18 weights but the model is resnet34 .*: build "
                                           r"resnet18 or give resnet34 weights"):
        rb.build_backbone("resnet34", weights=str(path))
    export = rb.weights.save(rb.build_backbone("resnet18"), tmp_path / "r18.safetensors",
                             metadata=WeightsMetadata.torchvision("resnet18", num_classes=None).to_dict())
    with pytest.raises(WeightsError, match="holds resnet18 weights but the model is resnet50"):
        rb.build_classifier("resnet50", num_classes=10, weights=str(export))
    with pytest.raises(WeightsError, match="weights file not found"):
        rb.build_backbone("resnet18", weights=str(tmp_path / "none.pth"))


def test_detectron2_pkl_brings_its_stride_and_bgr_convention(tmp_path):
    import pickle

    source = rb.build_classifier("resnet50", num_classes=1000, stride_in_1x1=True, norm="FrozenBN")
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"blobs": to_caffe2_names(source.state_dict())}, handle)
    bb = rb.build_backbone("resnet50", weights=str(path), norm="FrozenBN")
    assert bb.stride_in_1x1 is True and bb.stages.res3[0].conv1.stride == (2, 2)  # adopted from the weights
    assert (bb.weights_metadata.input_format, bb.weights_metadata.pixel_scale) == ("BGR", 255.0)
    for key, value in source.backbone.state_dict().items():
        torch.testing.assert_close(bb.state_dict()[key], value, rtol=0, atol=0, msg=key)
    with pytest.raises(WeightsError, match=r"stride in the 1x1 conv .* build the model with stride_in_1x1=True"):
        rb.build_backbone("resnet50", weights=str(path), stride_in_1x1=False)


def test_download_rule_without_network(torch_home, monkeypatch):
    """Allowed downloads go to torchvision's cache file, hash-checked by name; a failed one names the manual step.
    torch.hub's downloader is replaced: nothing leaves the machine."""
    from urllib.error import URLError

    calls = []

    def fake_download(url, dst, hash_prefix, progress=True):
        calls.append((url, dst, hash_prefix))
        torch.save(torchvision.models.resnet18().state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    monkeypatch.delenv("RESBACKBONES_OFFLINE")
    bb = rb.build_backbone("resnet18", weights="torchvision:DEFAULT")
    target = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert calls == [("https://download.pytorch.org/models/resnet18-f37072fd.pth", str(target), "f37072fd")]
    assert bb.weights_metadata.extra["torchvision_weights"] == "ResNet18_Weights.IMAGENET1K_V1"
    rb.build_backbone("resnet18", weights="torchvision:IMAGENET1K_V1")
    assert len(calls) == 1  # cached now: no second download

    def failing_download(url, dst, hash_prefix, progress=True):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", failing_download)
    with pytest.raises(WeightsError, match=r"download failed \(.*name resolution.*\); put resnet34-b627a593\.pth "
                                           r"\(from https://download\.pytorch\.org/models/resnet34-b627a593\.pth\) in "):
        rb.build_backbone("resnet34", weights="torchvision:DEFAULT")
    monkeypatch.setenv("RESBACKBONES_OFFLINE", "1")
    with pytest.raises(WeightsError, match="downloads are off"):
        rb.weights.resolve_weights("torchvision:DEFAULT", arch="resnet34")


def test_every_file_format_resolves_to_the_same_backbone(tmp_path):
    import re

    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.manual_seed(0)
    tv_det = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3)
    torch.save({"model": tv_det.state_dict()}, tmp_path / "tv_det.pth")
    expected = rb.weights.backbone_state_dict(rb.weights.from_torchvision(
        {k[len("backbone.body."):]: v for k, v in tv_det.state_dict().items() if k.startswith("backbone.body.")}))
    ours = rb.build_detector({"num_classes": 3, "backbone": {"name": "resnet50",
                                                             "weights": str(tmp_path / "tv_det.pth")}})
    torch.save({"model": ours.state_dict(), "iteration": 1}, tmp_path / "our_det.pt")  # a train_det checkpoint
    for name in ("tv_det.pth", "our_det.pt"):
        got = rb.weights.resolve_weights(str(tmp_path / name)).backbone_state
        assert all(torch.equal(got[k], v) for k, v in expected.items()), name
    cifar = rb.build_classifier("cifar_resnet20", num_classes=10)
    def akamaster(key):  # our names -> akamaster/pytorch_resnet_cifar10's (the published .th files)
        key = key.replace("backbone.stages.stem.conv1.norm.", "bn1.").replace("backbone.stages.stem.", "")
        key = re.sub(r"backbone\.stages\.res(\d)\.(\d+)\.conv(\d)\.norm\.",
                     lambda m: f"layer{int(m[1]) - 1}.{m[2]}.bn{m[3]}.", key)
        key = re.sub(r"backbone\.stages\.res(\d)\.", lambda m: f"layer{int(m[1]) - 1}.", key)
        return key.replace("head.fc.", "linear.")

    torch.save({"state_dict": {"module." + akamaster(k): v for k, v in cifar.state_dict().items()},
                "best_prec1": 91.0}, tmp_path / "resnet20.th")
    resolved = rb.weights.resolve_weights(str(tmp_path / "resnet20.th"))
    assert (resolved.arch, resolved.metadata.source) == ("cifar_resnet20", "cifar")
    loaded = rb.build_classifier("cifar_resnet20", num_classes=10, weights=str(tmp_path / "resnet20.th"))
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in cifar.state_dict().items())
    torch.save({"optimizer": {}}, tmp_path / "odd.pt")
    with pytest.raises(WeightsError, match=r"odd\.pt: unrecognised weights layout .*accepted: torchvision:<ENUM>"):
        rb.weights.resolve_weights(str(tmp_path / "odd.pt"))

"""build_detector's config (errors name the key) and backbone weight loading (export / classifier / torchvision)."""
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18

import resbackbones as rb
from resbackbones.config import ConfigError, load_config
from resbackbones.detection import DetectorConfig
from resbackbones.weights import WeightsError

REPO = Path(__file__).resolve().parents[1]


def _cfg(**backbone):
    cfg = DetectorConfig(num_classes=3)
    cfg.backbone.name = "resnet18"
    for key, value in backbone.items():
        setattr(cfg.backbone, key, value)
    return cfg


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"roi_heads\.batch_size_per_imag.*did you mean 'roi_heads\.batch_size_per_image'"):
        load_config(DetectorConfig, overrides=["roi_heads.batch_size_per_imag=64"])
    with pytest.raises(ConfigError, match="model.layout 'c4' needs model.box_head.type 'res5'"):
        load_config(DetectorConfig, overrides=["layout=c4"])
    with pytest.raises(ConfigError, match="fpn.top_block"):
        load_config(DetectorConfig, overrides=["fpn.top_block=p6p8"])
    cfg = load_config(DetectorConfig, overrides=["anchors.sizes=[[16], [32], [64], [128], [256]]", "num_classes=5"])
    model = rb.build_detector({**{"num_classes": 5}, "backbone": {"name": "resnet18"},
                               "anchors": {"sizes": [list(s) for s in cfg.anchors.sizes]}})
    assert model.rpn.anchor_generator.sizes == ((16,), (32,), (64,), (128,), (256,))
    assert model.roi_heads.box_predictor.cls_score.out_features == 6  # 5 classes + background


def test_anchor_levels_must_match_feature_maps():
    cfg = _cfg()
    cfg.anchors.sizes = ((32,), (64,))
    with pytest.raises(ValueError, match="2 size levels .* for 5 feature maps"):
        rb.build_detector(cfg)


@pytest.mark.parametrize("form", ["export", "classifier", "torchvision"])
def test_backbone_weights_load_from_every_form(tmp_path, form):
    torch.manual_seed(1)
    clf = rb.build_classifier("resnet18", num_classes=10)
    if form == "export":  # tools/train_cls.py --export: the backbone state dict
        path = rb.weights.save(clf.backbone, tmp_path / "r18.safetensors")
        source = clf.backbone.state_dict()
    elif form == "classifier":
        path = rb.weights.save(clf, tmp_path / "clf.pt")
        source = clf.backbone.state_dict()
    else:
        tv = resnet18(num_classes=10)
        path = tmp_path / "tv.pth"
        torch.save(tv.state_dict(), path)
        clf.load_state_dict(rb.weights.convert_torchvision.from_torchvision(tv.state_dict()))
        source = clf.backbone.state_dict()
    model = rb.build_detector(_cfg(weights=str(path)))
    loaded = model.backbone.body.state_dict()
    for key, value in source.items():
        if key in loaded:
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)
    assert not model.backbone.body.stages.stem.conv1.weight.requires_grad  # freeze_at=2 still applied


def test_wrong_weights_name_the_keys(tmp_path):
    clf = rb.build_classifier("resnet34", num_classes=10)
    path = rb.weights.save(clf.backbone, tmp_path / "r34.safetensors")
    with pytest.raises(WeightsError, match=r"r34\.safetensors holds resnet34 weights but the model is resnet18 "
                                           r"\(0 keys missing, 80 unexpected, 0 of another shape\)"):
        rb.build_detector(_cfg(weights=str(path)))
    gn = rb.weights.save(rb.build_backbone("resnet18", norm="GN"), tmp_path / "gn.safetensors")
    with pytest.raises(WeightsError, match=r"(?s)gn\.safetensors does not match.*missing keys \(40\)"):
        rb.build_detector(_cfg(weights=str(gn)))  # same arch, other norm: every missing key is listed
    with pytest.raises(WeightsError, match="weights file not found"):
        rb.build_detector(_cfg(weights=str(tmp_path / "none.safetensors")))


def _transform(model):
    t = model.transform
    return tuple(round(v, 5) for v in t.image_mean), tuple(round(v, 5) for v in t.image_std), t.input_format


def test_input_conventions_follow_the_weights(tmp_path):
    """model.input's normalisation and channel order come from the backbone weights' metadata unless set."""
    from resbackbones.weights.metadata import WeightsMetadata

    clf = rb.build_classifier("resnet18", num_classes=10)
    caffe = WeightsMetadata.detectron2_msra("resnet18").to_dict()
    bgr = rb.weights.save(clf.backbone, tmp_path / "bgr.safetensors", metadata=caffe)
    msra = (tuple(round(v / 255, 5) for v in (103.530, 116.280, 123.675)), (round(1 / 255, 5),) * 3, "BGR")
    assert _transform(rb.build_detector(_cfg(weights=str(bgr)))) == msra
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "RGB")
    assert _transform(rb.build_detector(_cfg())) == imagenet  # no weights: ImageNet RGB
    assert _transform(rb.build_detector(_cfg(weights=str(rb.weights.save(clf.backbone, tmp_path / "plain.pt"))))) \
        == imagenet  # weights that record nothing: the same default
    cifar = WeightsMetadata.from_train_cls(
        {"model": {"arch": "resnet18"}, "data": {"mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.2435, 0.2616]}},
        num_classes=10).to_dict()
    export = rb.weights.save(clf.backbone, tmp_path / "cifar.safetensors", metadata=cifar)
    assert _transform(rb.build_detector(_cfg(weights=str(export)))) == (
        (0.4914, 0.4822, 0.4465), (0.247, 0.2435, 0.2616), "RGB")


def test_explicit_input_settings_that_conflict_are_refused(tmp_path):
    from resbackbones.weights.metadata import WeightsMetadata

    clf = rb.build_classifier("resnet18", num_classes=10)
    bgr = rb.weights.save(clf.backbone, tmp_path / "bgr.safetensors",
                          metadata=WeightsMetadata.detectron2_msra("resnet18").to_dict())
    cfg = _cfg(weights=str(bgr))
    cfg.input.format = "RGB"
    with pytest.raises(WeightsError, match=r"model.input.format is RGB but the backbone weights .*bgr\.safetensors "
                                           r"\(detectron2 resnet18\) expect BGR"):
        rb.build_detector(cfg)
    cfg = _cfg(weights=str(bgr))
    cfg.input.image_mean = (0.485, 0.456, 0.406)
    with pytest.raises(WeightsError, match=r"model.input.image_mean is \[0.485, 0.456, 0.406\] but .* expect "
                                           r"\[0.406, 0.456, 0.485\] \(BGR input"):
        rb.build_detector(cfg)
    cfg.input.image_mean = tuple(v / 255 for v in (103.530, 116.280, 123.675))  # the same values: accepted
    cfg.input.image_std, cfg.input.format = (1 / 255,) * 3, "BGR"
    rb.build_detector(cfg)
    cfg = _cfg()  # no weights: explicit values are used as given
    cfg.input.image_mean, cfg.input.image_std, cfg.input.format = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "BGR"
    assert _transform(rb.build_detector(cfg)) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "BGR")


def test_random_frozen_bn_backbone_is_refused_before_training(tmp_path, capsys):
    import sys

    from resbackbones.detection import refuse_untrainable_backbone

    with pytest.raises(ConfigError, match=r"set model.backbone.norm to BN or GN, or give model.backbone.weights"):
        refuse_untrainable_backbone(_cfg())
    refuse_untrainable_backbone(_cfg(norm="BN"))
    refuse_untrainable_backbone(_cfg(weights="torchvision:IMAGENET1K_V1"))
    import train_det

    code = train_det.main(["--config", str(REPO / "configs" / "quickstart.yaml"), "--output", str(tmp_path / "o"),
                           "model.backbone.norm=FrozenBN"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "model.backbone.norm is FrozenBN" in err
    assert not (tmp_path / "o").exists()  # refused before anything was read or written

"""build_detector's config (errors name the key) and backbone weight loading (export / classifier / torchvision)."""
import pytest
import torch
from torchvision.models import resnet18

import resbackbones as rb
from resbackbones.config import ConfigError, load_config
from resbackbones.detection import DetectorConfig
from resbackbones.weights import WeightsError


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
    with pytest.raises(WeightsError, match=r"(?s)r34\.safetensors does not match.*unexpected keys \(80\)"):
        rb.build_detector(_cfg(weights=str(path)))
    with pytest.raises(WeightsError, match="weights file not found"):
        rb.build_detector(_cfg(weights=str(tmp_path / "none.safetensors")))


def test_preprocessing_mismatch_is_refused(tmp_path):
    from resbackbones.weights.metadata import WeightsMetadata

    clf = rb.build_classifier("resnet18", num_classes=10)
    caffe = WeightsMetadata.detectron2_msra("resnet18").to_dict()
    path = rb.weights.save(clf.backbone, tmp_path / "bgr.safetensors", metadata=caffe)
    with pytest.raises(WeightsError, match="expect BGR input .* but the pipeline feeds RGB"):
        rb.build_detector(_cfg(weights=str(path)))
    cfg = _cfg(weights=str(path))
    cfg.input.format = "BGR"  # right channel order, but still torchvision's mean/std
    with pytest.raises(WeightsError, match=r"normalised with mean \[0.40600, 0.456, 0.48500\]|model.input.image_mean"):
        rb.build_detector(cfg)
    cfg.input.image_mean = tuple(v / 255 for v in (103.530, 116.280, 123.675))
    cfg.input.image_std = (1 / 255,) * 3
    rb.build_detector(cfg)  # detectron2's convention: accepted
    tv = WeightsMetadata.torchvision("resnet18", num_classes=None).to_dict()
    rb.build_detector(_cfg(weights=str(rb.weights.save(clf.backbone, tmp_path / "tv.safetensors", metadata=tv))))

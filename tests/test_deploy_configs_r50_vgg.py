"""Issue 22 over configs/frcnn_r50.yaml (Faster R-CNN R50-FPN), its C4 twin (RPN on res4, res5 as the box head on
14x14 RoIAlign) and configs/frcnn_vgg16.yaml (one map, RoIPool, whose ONNX translation deploy/export.py supplies):
random weights made trained-like (deploy_parity.calibrate_frozen_bn), exported to TorchScript, .pt2 and ONNX; each
file gives the eager model's detections on real image crops at three sizes."""
import pytest

from conftest import REPO
from deploy_parity import FORMATS, SMALL_OVERRIDES, assert_matches_eager, export_config, real_crops
from resbackbones.deploy import load

C4 = """_base_: {base}
model:
  layout: c4
  backbone: {{out_features: [res4]}}
  box_head: {{type: res5}}
  anchors: {{sizes: [[32, 64, 128, 256, 512]]}}
  roi_heads: {{pooler_resolution: 14}}
"""


@pytest.fixture(scope="module", params=["frcnn_r50", "frcnn_r50_c4", "frcnn_vgg16"])
def exported(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    config = REPO / "configs" / f"{request.param}.yaml"
    if request.param == "frcnn_r50_c4":
        config = folder / "frcnn_r50_c4.yaml"
        config.write_text(C4.format(base=REPO / "configs" / "frcnn_r50.yaml"))
    return (request.param, *export_config(config, SMALL_OVERRIDES, folder))


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_config_export_matches_eager(exported, fmt):
    name, model, files = exported
    assert_matches_eager(load(files[fmt]), model, real_crops(), f"{name} {fmt}")

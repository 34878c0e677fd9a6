"""Issue 22 over the two other layouts: C4 (the quickstart's ResNet-18 with the RPN on res4 and res5 as the box head
on 14x14 RoIAlign, detectron2's Base-RCNN-C4 shape) and configs/frcnn_vgg16.yaml (one map, RoIPool, whose ONNX
translation deploy/export.py supplies; its fc6/fc7 narrowed to 1024 here to keep the files small, the layout is
unchanged): random weights made trained-like (deploy_parity.calibrate_frozen_bn), exported to TorchScript, .pt2
and ONNX; each file gives the eager model's detections on real image crops at three sizes. ResNet-50-FPN is the
real-data benchmark's (benchmarks/deploy_real.py: BCCD Faster R-CNN and DSB2018 Mask R-CNN, trained weights, 20
val images each); ResNet-101-FPN is in test_deploy_configs_r101.py, a separate file so that pytest-xdist runs the
two side by side."""
import pytest

from conftest import REPO
from deploy_parity import FORMATS, SMALL_OVERRIDES, assert_matches_eager, export_config, real_crops
from resbackbones.deploy import load
from test_export_detector import C4  # the quickstart's ResNet-18 in the C4 layout, box head res5


@pytest.fixture(scope="module", params=["frcnn_r18_c4", "frcnn_vgg16"])
def exported(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "frcnn_r18_c4":
        config = folder / "frcnn_r18_c4.yaml"
        config.write_text(C4.format(quickstart=REPO / "configs" / "quickstart.yaml"))
        return (request.param, *export_config(config, [*SMALL_OVERRIDES, "model.roi_heads.pooler_resolution=14"],
                                              folder))
    return (request.param, *export_config(REPO / "configs" / "frcnn_vgg16.yaml",
                                          [*SMALL_OVERRIDES, "model.box_head.fc_dim=1024"], folder))


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_config_export_matches_eager(exported, fmt):
    name, model, files = exported
    assert_matches_eager(load(files[fmt]), model, real_crops(), f"{name} {fmt}")

"""Issue 22 over configs/mrcnn_r101.yaml (Mask R-CNN R101-FPN): random weights made trained-like
(deploy_parity.calibrate_frozen_bn, sharpen_masks), exported to TorchScript, .pt2 and ONNX; each file gives the eager
model's detections on real image crops at three sizes. The other layouts: R18-FPN in test_deploy_formats, R18-C4 and
VGG-16 in test_deploy_configs_c4_vgg (a separate file, so that pytest-xdist runs the two side by side), R50-FPN with
trained weights in benchmarks/deploy_real.py."""
import pytest

from conftest import REPO
from deploy_parity import FORMATS, SMALL_OVERRIDES, assert_matches_eager, export_config, real_crops
from resbackbones.deploy import load

CONFIGS = {"mrcnn_r101": REPO / "configs" / "mrcnn_r101.yaml"}


@pytest.fixture(scope="module", params=list(CONFIGS))
def exported(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    return (request.param, *export_config(CONFIGS[request.param], SMALL_OVERRIDES, folder))


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_config_export_matches_eager(exported, fmt):
    name, model, files = exported
    assert_matches_eager(load(files[fmt]), model, real_crops(), f"{name} {fmt}")

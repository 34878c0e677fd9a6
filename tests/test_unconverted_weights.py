"""An unconverted checkpoint where converted weights or a training checkpoint belong (issue 16): the one-line error
names `python tools/convert_weights.py --from <format> ...` with the right format, in the library (load_into,
load_checkpoint, rb.weights.load of a pickle) and through the tools (train_cls --resume, train_det --eval-only
--weights, predict --checkpoint); rb.build_backbone(weights=...) still reads the same files as they are."""
import pickle

import numpy as np
import pytest
import torch
import torchvision

import resbackbones as rb
from conftest import REPO
from resbackbones.engine.checkpoint import CheckpointError, load_checkpoint
from resbackbones.weights import WeightsError
from resbackbones.weights.convert_detectron2 import to_caffe2_names
import predict  # noqa: E402
import train_cls  # noqa: E402
import train_det  # noqa: E402

QUICKSTART = str(REPO / "configs" / "quickstart.yaml")


def _write(kind, folder):
    """A small real checkpoint of each published layout: (path, --from value)."""
    tv = torchvision.models.resnet18(num_classes=10).state_dict()
    if kind == "torchvision":
        path = folder / "resnet18.pth"
        torch.save(tv, path)
    elif kind == "torchvision_reference":  # torchvision's references/classification/train.py checkpoint
        path = folder / "checkpoint.pth"
        torch.save({"model": tv, "optimizer": {}, "epoch": 3}, path)
    elif kind == "caffe2":
        path = folder / "R-18.pkl"
        blobs = to_caffe2_names(rb.build_classifier("resnet18", num_classes=10).state_dict())
        path.write_bytes(pickle.dumps({"blobs": blobs}, protocol=2))
    elif kind == "detectron2":  # detectron2 names, e.g. a model_final.pkl
        path = folder / "model_final.pkl"
        path.write_bytes(pickle.dumps({"model": {"backbone.bottom_up.stem.conv1.weight": np.zeros((4, 3, 7, 7),
                                                                                                     np.float32)}}))
    else:  # akamaster/pytorch_resnet_cifar10: {"state_dict": {"module.conv1.weight": ...}, "best_prec1": ...}
        path = folder / "resnet20-12fca82f.th"
        state = {"module." + k: v for k, v in {"conv1.weight": torch.zeros(16, 3, 3, 3),
                                               "layer1.0.conv1.weight": torch.zeros(16, 16, 3, 3),
                                               "linear.weight": torch.zeros(10, 64)}.items()}
        torch.save({"state_dict": state, "best_prec1": 91.78}, path)
    fmt = {"torchvision_reference": "torchvision", "caffe2": "detectron2"}.get(kind, kind)
    return path, fmt


KINDS = ["torchvision", "torchvision_reference", "caffe2", "detectron2", "cifar"]


def _names_converter(message: str, path, fmt: str) -> None:
    assert f"python tools/convert_weights.py --from {fmt} {path} " in message, message
    assert "\n" not in message


@pytest.mark.parametrize("kind", KINDS)
def test_library_loaders_name_the_converter(kind, tmp_path):
    path, fmt = _write(kind, tmp_path)
    with pytest.raises(WeightsError) as error:
        rb.weights.load_into(rb.build_backbone("resnet18"), path)
    _names_converter(str(error.value), path, fmt)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    _names_converter(str(error.value), path, fmt)
    assert "training checkpoint" in str(error.value)


def test_pickle_read_as_torch_file_names_the_converter(tmp_path):
    path, _ = _write("caffe2", tmp_path)
    with pytest.raises(WeightsError) as error:
        rb.weights.load(path)
    _names_converter(str(error.value), path, "detectron2")
    assert "could run code" not in str(error.value)  # numpy arrays only: not a security refusal


@pytest.mark.parametrize("kind", ["torchvision", "caffe2"])
def test_build_backbone_still_reads_them_as_they_are(kind, tmp_path):
    path, _ = _write(kind, tmp_path)
    backbone = rb.build_backbone("resnet18", weights=str(path))
    assert rb.weights.weights_metadata(backbone).source == {"torchvision": "torchvision", "caffe2": "detectron2"}[kind]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("kind", ["torchvision_reference", "caffe2", "cifar"])
def test_tools_name_the_converter(kind, tmp_path, capsys):
    path, fmt = _write(kind, tmp_path)
    assert train_cls.main(["--output", str(tmp_path / "cls"), "--resume", str(path), "--device", "cpu",
                           "data.synthetic.train_per_class=2", "data.synthetic.val_per_class=1", "data.num_workers=0",
                           "solver.batch_size=4"]) == 2
    _names_converter(_one_line(capsys), path, fmt)
    assert predict.main(["--checkpoint", str(path), "--config", QUICKSTART, "--images",
                         str(REPO / "tests" / "fixtures" / "coco_sample" / "images"), "--output", str(tmp_path / "p")]) == 2
    _names_converter(_one_line(capsys), path, fmt)
    data = tmp_path / "shapes"
    assert train_det.main(["--config", QUICKSTART, "--output", str(tmp_path / "det"), "--device", "cpu",
                           "--eval-only", "--weights", str(path), "data.val.num_images=1",
                           f"data.val.root={data / 'val'}", "data.train.num_images=1",
                           f"data.train.root={data / 'train'}", "train.progress=false"]) == 2
    _names_converter(_one_line(capsys), path, fmt)

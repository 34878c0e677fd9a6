"""One reader for weights and checkpoints (issue 21, item 2): every file is checked before a tensor is used.

- checksums: a checkpoint with 64 KB of zeros inside its tensor data is refused by predict, export_detector and
  train_det --resume naming the file; our safetensors carry rb.checksum; a file of ours without one loads with one
  note (once), foreign files silently;
- dtypes: int8 / bool tensors where the model holds float are refused (weights=, model.backbone.weights, resume);
- metadata: typed (a boolean written as the string "false" is refused, not read as true), finite mean/std, std > 0;
- torchvision cache files must match the sha256 prefix in their name;
- unreadable files (text, empty, truncated, zeroed header) are one line naming the file and what it is;
- every file read is registered as an input of the command (no output may replace it).
"""
import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest
import torch
import torchvision

import resbackbones as rb
from conftest import REPO, random_detector_run
from resbackbones.engine.checkpoint import load_checkpoint, save_atomic
from resbackbones.io import outputs
from resbackbones.weights import WeightsError, WeightsMetadata
from resbackbones.weights.checkpoint import CheckpointError, read_model_checkpoint
from resbackbones.weights.integrity import CHECKSUM_KEY, verify_zip_records
from resbackbones.weights.torchvision_hub import check_hash_in_name

import export_detector  # tools/ is on sys.path (conftest)
import predict
import train_det

SMALL_DETECTOR = ["model.input.min_size=[96]", "model.input.max_size=128", "model.rpn.pre_nms_top_n_test=50",
                  "model.rpn.post_nms_top_n_test=20"]
IMAGE = REPO / "tests" / "fixtures" / "coco_sample" / "images"


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _zero_inside_largest_record(path: Path, size: int = 64 * 1024) -> str:
    """Write `size` zero bytes into the middle of the largest tensor record of torch zip file `path`; its name."""
    with zipfile.ZipFile(path) as archive:
        record = max(archive.infolist(), key=lambda r: r.file_size)
    assert record.file_size > 2 * size, record.file_size
    with open(path, "r+b") as handle:
        handle.seek(record.header_offset + 26)
        name_len, extra_len = int.from_bytes(handle.read(2), "little"), int.from_bytes(handle.read(2), "little")
        handle.seek(record.header_offset + 30 + name_len + extra_len + record.file_size // 2 - size // 2)
        handle.write(b"\0" * size)
    return record.filename


@pytest.fixture
def zeroed_run(tmp_path):
    """A random detector run whose last.pt has 64 KB of zeros inside its largest tensor."""
    run = random_detector_run(tmp_path / "det", SMALL_DETECTOR)
    _zero_inside_largest_record(run / "last.pt")
    return run


# -- checksums -----------------------------------------------------------------------------------------------------
def test_zeroed_checkpoint_is_refused_by_predict_export_and_resume(zeroed_run, tmp_path, capsys):
    last = zeroed_run / "last.pt"
    assert predict.main(["--checkpoint", str(last), "--images", str(IMAGE), "--output", str(tmp_path / "p"),
                         "--device", "cpu"]) == 2
    err = _one_line(capsys)
    assert str(last) in err and "is corrupted" in err and "CRC-32" in err, err
    assert not (tmp_path / "p").exists() or not any((tmp_path / "p").iterdir())

    assert export_detector.main(["--checkpoint", str(last), "--output", str(tmp_path / "det.pt")]) == 2
    err = _one_line(capsys)
    assert str(last) in err and "is corrupted" in err, err
    assert not (tmp_path / "det.pt").exists()

    out = tmp_path / "resumed"
    args = ["--config", str(REPO / "configs" / "quickstart.yaml"), "--output", str(out), "--device", "cpu",
            "data.train.num_images=2", f"data.train.root={tmp_path / 'train'}", "data.val.num_images=1",
            f"data.val.root={tmp_path / 'val'}", "solver.batch_size=2", "train.progress=false", *SMALL_DETECTOR]
    assert train_det.main([*args, "--resume", str(last)]) == 2
    err = _one_line(capsys)
    assert str(last) in err and "is corrupted" in err, err


def test_intact_checkpoint_is_verified_silently_and_damage_named(tmp_path, capsys):
    state = {"model": {"w": torch.randn(64, 1024)}, "task": "cls", "global_iter": 3}
    path = save_atomic(state, tmp_path / "last.pt")
    assert verify_zip_records(path) is True
    assert load_checkpoint(path)["global_iter"] == 3
    assert capsys.readouterr().err == ""  # verified: no note
    _zero_inside_largest_record(path, size=4096)
    with pytest.raises(CheckpointError, match=r"checkpoint .*last\.pt is corrupted: record .*data/\d+ does not "
                                              r"match the CRC-32 it was written with"):
        read_model_checkpoint(path)


def test_save_atomic_writes_crcs_even_when_turned_off(tmp_path):
    torch.serialization.set_crc32_options(False)
    try:
        path = save_atomic({"model": {"w": torch.ones(1000)}}, tmp_path / "a.pt")
    finally:
        torch.serialization.set_crc32_options(True)
    assert verify_zip_records(path) is True
    torch.serialization.set_crc32_options(False)
    try:
        torch.save({"model": {"w": torch.ones(1000)}, "task": "cls"}, tmp_path / "b.pt")
    finally:
        torch.serialization.set_crc32_options(True)
    assert verify_zip_records(tmp_path / "b.pt") is False  # nothing to check: a note, not a refusal


def test_our_safetensors_carry_a_checksum_and_damage_is_refused(tmp_path, capsys):
    backbone = rb.build_backbone("resnet18")
    meta = WeightsMetadata.torchvision("resnet18", num_classes=None).to_dict()
    path = rb.weights.save(backbone, tmp_path / "r18.safetensors", metadata=meta)
    _, raw = rb.weights.load_with_metadata(path)
    assert raw[CHECKSUM_KEY].startswith("crc32:")
    rb.build_backbone("resnet18", weights=str(path))
    assert capsys.readouterr().err == ""
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    data[header + 100_000: header + 100_000 + 65536] = bytes(65536)
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError) as info:
        rb.build_backbone("resnet18", weights=str(path))
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "is corrupted" in message and CHECKSUM_KEY in message


def test_a_file_of_ours_without_checksum_loads_with_one_note_foreign_silently(tmp_path, capsys):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in rb.build_backbone("resnet18").state_dict().items()}
    meta = WeightsMetadata.torchvision("resnet18", num_classes=None).to_dict()
    save_file({"backbone." + k: v for k, v in state.items()}, str(tmp_path / "old.safetensors"), metadata=meta)
    for _ in range(2):
        rb.build_backbone("resnet18", weights=str(tmp_path / "old.safetensors"))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("note: ") and "old.safetensors" in err[0] and "no checksum" in err[0]
    save_file({"backbone." + k: v for k, v in state.items()}, str(tmp_path / "foreign.safetensors"))
    rb.build_backbone("resnet18", weights=str(tmp_path / "foreign.safetensors"))
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "tv.pth")
    rb.build_backbone("resnet18", weights=str(tmp_path / "tv.pth"))
    assert capsys.readouterr().err == ""


# -- dtypes --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.int8, torch.bool])
def test_non_float_tensor_in_our_file_is_refused_everywhere(dtype, tmp_path, capsys):
    state = rb.build_backbone("resnet18").state_dict()
    key = "stages.res3.0.conv1.weight"
    state[key] = (state[key] * 100).to(dtype)
    path = rb.weights.save(state, tmp_path / "q.safetensors",
                           metadata=WeightsMetadata.torchvision("resnet18", num_classes=None).to_dict())
    expected = f"tensor backbone.stages.res3.0.conv1.weight is {dtype}"
    with pytest.raises(WeightsError, match=rf"q\.safetensors: tensor .*res3\.0\.conv1\.weight is {dtype}"):
        rb.build_backbone("resnet18", weights=str(path))
    with pytest.raises(WeightsError, match="not cast to float"):
        rb.build_detector({"num_classes": 3, "backbone": {"name": "resnet18", "weights": str(path)}})
    with pytest.raises(WeightsError, match=str(dtype)):
        rb.weights.load(path)
    # Through the tool: model.backbone.weights of train_det, one line with exit 2.
    args = ["--config", str(REPO / "configs" / "quickstart.yaml"), "--output", str(tmp_path / "o"), "--device",
            "cpu", "data.train.num_images=2", f"data.train.root={tmp_path / 'train'}", "data.val.num_images=1",
            f"data.val.root={tmp_path / 'val'}", f"model.backbone.weights={path}"]
    assert train_det.main(args) == 2
    err = _one_line(capsys)
    assert "q.safetensors" in err and str(dtype) in err, (err, expected)


def test_model_known_dtype_check_keeps_integer_buffers(tmp_path):
    model = rb.build_classifier("resnet18", num_classes=10)  # BN: num_batches_tracked is int64, stays so
    rb.weights.load_state_dict(model, model.state_dict(), source="itself")
    state = dict(model.state_dict())
    state["head.fc.weight"] = state["head.fc.weight"].to(torch.int8)
    with pytest.raises(WeightsError, match=r"ckpt: tensor head\.fc\.weight is torch\.int8, the model's is "
                                           r"torch\.float32"):
        rb.weights.load_state_dict(model, state, source="ckpt")


# -- metadata ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key,value,words", [
    ("rb.stride_in_1x1", json.dumps("false"), 'is "false", not a JSON boolean'),
    ("rb.pixel_mean", "[NaN, 0.456, 0.406]", "not a list of finite numbers"),
    ("rb.pixel_std", "[0.0, 0.224, 0.225]", "every std must be > 0"),
    ("rb.pixel_std", "[Infinity, 0.224, 0.225]", "not a list of finite numbers"),
    ("rb.num_classes", "true", "not a positive integer"),
])
def test_bad_metadata_value_is_refused_naming_file_and_key(key, value, words, tmp_path):
    meta = WeightsMetadata.torchvision("resnet50", num_classes=None).to_dict()
    meta[key] = value
    path = rb.weights.save(rb.build_backbone("resnet50"), tmp_path / "bad.safetensors", metadata=meta)
    with pytest.raises(WeightsError) as info:
        rb.build_backbone("resnet50", weights=str(path))
    message = str(info.value)
    assert "\n" not in message and f"{key} of {path}" in message and words in message, message


def test_metadata_booleans_as_the_library_wrote_them_still_load(tmp_path):
    for stride in (True, False):
        meta = WeightsMetadata.torchvision("resnet50", num_classes=None)
        meta.stride_in_1x1 = stride
        raw = meta.to_dict()
        assert raw["rb.stride_in_1x1"] == json.dumps(stride)  # "true" / "false": JSON, as always
        path = rb.weights.save(rb.build_backbone("resnet50", stride_in_1x1=stride), tmp_path / f"{stride}.safetensors",
                               metadata=raw)
        assert rb.build_backbone("resnet50", weights=str(path)).stride_in_1x1 is stride
    # A torch file whose metadata dict holds a real boolean (written by hand) means that boolean.
    state = {"backbone." + k: v for k, v in rb.build_backbone("resnet50", stride_in_1x1=True).state_dict().items()}
    torch.save({"state_dict": state, "metadata": {"rb.arch": json.dumps("resnet50"), "rb.stride_in_1x1": True}},
               tmp_path / "hand.pt")
    assert rb.build_backbone("resnet50", weights=str(tmp_path / "hand.pt")).stride_in_1x1 is True


# -- torchvision cache ---------------------------------------------------------------------------------------------
def test_torchvision_cache_file_must_match_the_hash_in_its_name(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.delenv("RESBACKBONES_UNCHECKED_TORCHVISION_CACHE", raising=False)
    folder = tmp_path / "th" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), folder / "resnet18-f37072fd.pth")  # another file
    with pytest.raises(WeightsError) as info:
        rb.build_backbone("resnet18", weights="torchvision:IMAGENET1K_V1")
    message = str(info.value)
    found = hashlib.sha256((folder / "resnet18-f37072fd.pth").read_bytes()).hexdigest()[:8]
    assert "\n" not in message and str(folder / "resnet18-f37072fd.pth") in message
    assert "the name says f37072fd" in message and f"starts with {found}" in message
    # The same check passes a file whose name carries its own prefix (as torch.hub names a true download).
    real = tmp_path / f"resnet18-{found}.pth"
    os.link(folder / "resnet18-f37072fd.pth", real)
    check_hash_in_name(real)
    (folder / "resnet18-f37072fd.pth").write_bytes(bytes(1000))  # zeroed in the cache
    with pytest.raises(WeightsError, match="the name says f37072fd"):
        rb.build_backbone("resnet18", weights="torchvision:IMAGENET1K_V1")


# -- unreadable files ----------------------------------------------------------------------------------------------
def _torch_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save({"w": torch.ones(4096)}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".safetensors", ".pkl"])
@pytest.mark.parametrize("kind,content,words", [
    ("text", b"hello world, these are not weights\n", "it is a text file"),
    ("empty", b"", "it is empty (0 bytes)"),
    ("zeroed header", None, None),
    ("truncated", None, None),
])
def test_unreadable_weights_file_is_one_line_naming_it(suffix, kind, content, words, tmp_path):
    path = tmp_path / f"w{suffix}"
    if kind == "truncated":
        data = _torch_bytes()
        content = data[: len(data) // 2]
    elif kind == "zeroed header":
        data = _torch_bytes()
        content = bytes(512) + data[512:]
    path.write_bytes(content)
    with pytest.raises(WeightsError) as info:
        rb.build_backbone("resnet18", weights=str(path))
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    assert "KeyError" not in message and "Traceback" not in message
    if words:
        assert words in message, message
    else:
        assert any(w in message for w in ("truncated", "corrupted", "not a", "zero")), message


def test_text_file_as_checkpoint_through_predict_is_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello world\n")
    assert predict.main(["--checkpoint", str(tmp_path / "notes.txt"), "--config",
                         str(REPO / "configs" / "quickstart.yaml"), "--images", str(IMAGE), "--output",
                         str(tmp_path / "o"), "--device", "cpu"]) == 2
    err = _one_line(capsys)
    assert "notes.txt" in err and "it is a text file" in err and "KeyError" not in err


# -- inputs are registered -----------------------------------------------------------------------------------------
def test_every_file_read_is_an_input_no_output_may_replace(tmp_path):
    outputs.clear_registries()
    path = rb.weights.save(rb.build_backbone("resnet18"), tmp_path / "in.safetensors")
    rb.build_backbone("resnet18", weights=str(path))
    torch.save({"model": {"w": torch.ones(3)}, "task": "cls"}, tmp_path / "c.pt")
    read_model_checkpoint(tmp_path / "c.pt")
    assert {os.path.realpath(path), os.path.realpath(tmp_path / "c.pt")} <= outputs.registered_inputs()
    with pytest.raises(outputs.OutputError, match="reads it as an input"):
        rb.weights.save(rb.build_backbone("resnet18"), path)
    with pytest.raises(outputs.OutputError, match="reads it as an input"):
        save_atomic({"model": {}}, tmp_path / "c.pt")
    outputs.clear_registries()


def test_checkpoint_write_on_a_full_disk_is_one_output_error(tmp_path):
    """torch.save's C++ writer hides the errno ("unexpected pos"): save_atomic names the file and the cause, and
    leaves nothing behind (RLIMIT_FSIZE stands for a full disk)."""
    import subprocess
    import sys

    code = (f"import resource, signal, torch\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, (100000, 100000))\n"
            f"from resbackbones.engine.checkpoint import save_atomic\n"
            f"try:\n    save_atomic({{'model': {{'w': torch.ones(100000)}}}}, {str(tmp_path / 'last.pt')!r})\n"
            f"except Exception as error:\n    print(type(error).__name__, error)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert "OutputError cannot write" in done.stdout and "last.pt: file too large" in done.stdout, done
    assert list(tmp_path.iterdir()) == []

"""Issue 21, item 4 (inputs): a config YAML that is not UTF-8 is refused naming the file (tools/train_cls.py: exit 2,
one stderr line); importing resbackbones sets NO_ALBUMENTATIONS_UPDATE=1 before albumentations is imported, so
albumentations' online version check never runs (no network attempt, with or without RESBACKBONES_OFFLINE)."""
import os
import subprocess
import sys

import pytest

from conftest import REPO
from resbackbones.config import ConfigError, load_yaml_with_bases

TRAIN_CLS = str(REPO / "tools" / "train_cls.py")


def test_non_utf8_config_names_the_file_and_the_byte(tmp_path):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("solver:\n  base_lr: 0.1  # café\n".encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load_yaml_with_bases(config)
    assert str(config) in str(caught.value) and "is not UTF-8: byte 0xe9 at 29" in str(caught.value)


def test_non_utf8_base_config_names_the_base(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_bytes(b"solver:\n  base_lr: 0.1  # \xff\n")
    child = tmp_path / "child.yaml"
    child.write_text("_base_: base.yaml\n")
    with pytest.raises(ConfigError, match="base.yaml is not UTF-8"):
        load_yaml_with_bases(child)


def test_utf8_config_with_a_byte_order_mark_loads(tmp_path):
    config = tmp_path / "bom.yaml"
    config.write_bytes(b"\xef\xbb\xbfsolver:\n  base_lr: 0.5\n")
    assert load_yaml_with_bases(config) == {"solver": {"base_lr": 0.5}}


def test_train_cls_non_utf8_config_is_one_line(tmp_path):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("solver:\n  base_lr: 0.1  # café\n".encode("latin-1"))
    proc = subprocess.run([sys.executable, TRAIN_CLS, "--config", str(config), "--output", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: config file ") and str(config) in lines[0], proc.stderr
    assert "not UTF-8" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_an_override_holding_a_non_utf8_path_is_that_path():
    from resbackbones.config import parse_overrides

    name = os.fsdecode(b"/data/caf\xe9")
    assert parse_overrides([f"data.root='{name}'", f"data.root={name}", "data.root='it''s'"]) == [
        ("data.root", name), ("data.root", name), ("data.root", "it's")]


def test_train_cls_data_folder_with_a_non_utf8_name_trains(tmp_path):
    """--data of a folder named in Latin-1 was refused as `bad override "data.root='...'"`, an override the user
    never gave; it is read like any other folder now."""
    import cv2
    import numpy as np

    data = tmp_path / os.fsdecode(b"caf\xe9")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("a", "b"):
            (data / split / name).mkdir(parents=True)
            for i in range(2):
                image = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
                (data / split / name / f"{i}.png").write_bytes(cv2.imencode(".png", image)[1].tobytes())
    args = [sys.executable, TRAIN_CLS, "--data", os.fsencode(data), "--output", str(tmp_path / "out"),
            "model.backbone.name=cifar_resnet", "model.backbone.options={depth: 8, widths: [4, 8, 8]}",
            "--batch-size", "2", "--epochs", "1", "--device", "cpu", "--workers", "0", "train.progress=false",
            "train.tensorboard=false"]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 4 images (2 classes)" in proc.stdout, proc.stdout


# Every socket connection and name lookup is recorded (and refused) before anything is imported.
_NO_NETWORK = """
import os, socket, sys
attempts = []
def refuse(*args, **kwargs):
    attempts.append(repr(args[:2])[:80])
    raise OSError("network disabled by the test")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.getaddrinfo = refuse
socket.create_connection = refuse
if sys.argv[1] == "resbackbones":
    import resbackbones  # noqa: F401
import albumentations  # noqa: F401
print("NO_ALBUMENTATIONS_UPDATE=" + repr(os.environ.get("NO_ALBUMENTATIONS_UPDATE")))
print("attempts=" + str(len(attempts)))
"""


def _import_in_a_fresh_process(first: str, **env) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("NO_ALBUMENTATIONS_UPDATE", "RESBACKBONES_OFFLINE")}
    proc = subprocess.run([sys.executable, "-c", _NO_NETWORK, first], capture_output=True, text=True, cwd=REPO,
                          timeout=300, env=dict(clean, **env))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize("offline", ["", "1"])
def test_importing_resbackbones_first_stops_the_albumentations_version_check(offline):
    out = _import_in_a_fresh_process("resbackbones", **({"RESBACKBONES_OFFLINE": offline} if offline else {}))
    assert "NO_ALBUMENTATIONS_UPDATE='1'" in out and "attempts=0" in out, out


def test_a_users_own_setting_is_kept():
    out = _import_in_a_fresh_process("resbackbones", NO_ALBUMENTATIONS_UPDATE="true")
    assert "NO_ALBUMENTATIONS_UPDATE='true'" in out and "attempts=0" in out, out


def test_the_check_is_seen_without_resbackbones():
    """The control: albumentations alone does try the network here, so the tests above would see an attempt."""
    out = _import_in_a_fresh_process("albumentations")
    assert "NO_ALBUMENTATIONS_UPDATE=None" in out and "attempts=0" not in out, out

"""Images above the pixel limit are refused from their header, naming the file, before anything is decoded
(issue 16: a 1.2 MB 20000x20000 PNG grew predict.py to 21 GB and was killed)."""
import struct
import zlib

import cv2
import numpy as np
import pytest

from conftest import REPO
from resbackbones.data.errors import DataError
from resbackbones.data.folders import read_image
import predict  # noqa: E402


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height (8-bit RGB) and holds one empty IDAT: a header-only decompression bomb."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_huge_png_refused_from_its_header(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(20000, 20000))
    with pytest.raises(DataError, match=r"bomb.png is 20000x20000 \(400 MP\), above the limit of 100 MP"):
        read_image(path)
    path.write_bytes(_png_header(200000, 200000))  # far beyond Pillow's own cap: still named with its size
    with pytest.raises(DataError, match="bomb.png is 200000x200000"):
        read_image(path)


def test_limit_is_configurable_and_normal_images_pass(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    cv2.imwrite(str(path), np.zeros((100, 120, 3), np.uint8))
    assert read_image(path).shape == (100, 120, 3)
    monkeypatch.setenv("RESBACKBONES_MAX_PIXELS", "5000")
    with pytest.raises(DataError, match="120x100"):
        read_image(path)
    monkeypatch.setenv("RESBACKBONES_MAX_PIXELS", "-1")
    with pytest.raises(DataError, match="RESBACKBONES_MAX_PIXELS must be a whole number"):
        read_image(path)


def test_predict_refuses_the_bomb_in_one_line(tmp_path, capsys):
    (tmp_path / "bomb.png").write_bytes(_png_header(20000, 20000))
    run = tmp_path / "run"
    from train_det import main as train
    assert train(["--config", str(REPO / "configs" / "quickstart.yaml"), "--output", str(run), "--device", "cpu",
                  "solver.max_iter=1", "data.train.num_images=2", f"data.train.root={tmp_path / 'tr'}",
                  "data.val.num_images=1", f"data.val.root={tmp_path / 'va'}", "train.progress=false"]) == 0
    capsys.readouterr()
    assert predict.main(["--checkpoint", str(run / "checkpoints" / "last.pt"), "--images", str(tmp_path / "bomb.png"),
                         "--output", str(tmp_path / "out"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bomb.png is 20000x20000" in err

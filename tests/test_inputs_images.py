"""Issue 21, item 4 (inputs): the one image-decode path (data/images.py read_image / decode_image) names the file
in every error, whatever the file is (missing, a folder, empty, text, truncated, corrupt) and whatever its name
(not valid UTF-8); what the C decoders print is caught and said in that one line; classification folders with a
symlink loop count each image once; tools/train_cls.py answers a bad image with exit 2 and one stderr line."""
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import REPO
from fuzz_support import one_error_line
from resbackbones.data.errors import DataError, show_path
from resbackbones.data.folders import ImageFolderDataset
from resbackbones.data.images import read_image

TRAIN_CLS = str(REPO / "tools" / "train_cls.py")
TINY_CLS = ["model.backbone.name=cifar_resnet", "model.backbone.options={depth: 8, widths: [4, 8, 8]}",
            "--batch-size", "4", "--epochs", "1", "--device", "cpu", "--workers", "0", "train.progress=false",
            "train.tensorboard=false"]
NOT_UTF8 = os.fsdecode(b"caf\xe9")  # a name made of bytes that are not UTF-8 (Latin-1 "cafe" with an accent)


def _png(seed=0, size=(32, 32)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    return cv2.imencode(".png", pixels)[1].tobytes()


def _jpeg() -> bytes:
    return cv2.imencode(".jpg", np.full((48, 64, 3), 128, np.uint8))[1].tobytes()




def _run(*args, timeout=600):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.mark.parametrize("case", ["missing", "folder", "empty", "text", "png_header_only", "png_half", "jpeg_half",
                                  "bmp_half"])
@pytest.mark.parametrize("name", ["plain", "not_utf8"])
def test_every_failure_names_the_file(tmp_path, case, name):
    path = tmp_path / ((NOT_UTF8 if name == "not_utf8" else "image") + ".png")
    png, bmp = _png(), cv2.imencode(".bmp", np.zeros((32, 32, 3), np.uint8))[1].tobytes()
    content = {"empty": b"", "text": b"not an image\n", "png_header_only": b"\x89PNG\r\n\x1a\n truncated",
               "png_half": png[: len(png) // 2], "jpeg_half": _jpeg()[:300], "bmp_half": bmp[: len(bmp) // 2]}
    if case == "folder":
        path.mkdir()
    elif case != "missing":
        path.write_bytes(content[case])
    with pytest.raises(DataError) as caught:
        read_image(path)
    message = str(caught.value)
    assert show_path(path) in message, message
    message.encode("utf-8")  # printable and writable anywhere: no lone surrogates from the undecodable name
    if name == "not_utf8":
        assert "caf\\xe9.png" in message


def test_a_name_that_is_not_utf8_still_decodes(tmp_path):
    path = tmp_path / (NOT_UTF8 + ".png")
    path.write_bytes(_png())
    assert read_image(path).shape == (32, 32, 3)


def test_decoder_messages_are_said_in_the_one_line_not_printed(tmp_path):
    """libjpeg / libpng / OpenCV's log write to file descriptor 2 directly (capsys cannot see it): a fresh process
    shows that nothing but our message comes out, and that the decoder's own words are in it."""
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code = ("import sys\nfrom resbackbones.data.images import read_image\nfrom resbackbones.data.errors import "
            "DataError\ntry:\n    read_image(sys.argv[1])\nexcept DataError as e:\n    print(e)\n")
    proc = _run("-c", code, bad, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert str(bad) in proc.stdout and "the decoder said: " in proc.stdout and "IHDR" in proc.stdout, proc.stdout


def _class_folder(root, per_folder=4):
    """root/cat with 4 images at its top and 4 in a subfolder: 8 images."""
    (root / "cat" / "sub").mkdir(parents=True)
    for i in range(per_folder):
        (root / "cat" / f"{i}.png").write_bytes(_png(i))
        (root / "cat" / "sub" / f"{i}.png").write_bytes(_png(10 + i))
    return root


def test_symlink_loop_counts_every_image_once(tmp_path):
    root = _class_folder(tmp_path / "data")
    os.symlink("..", root / "cat" / "sub" / "loop")  # cat/sub/loop -> cat: a loop os.walk would go round
    os.symlink(root / "cat" / "sub", root / "cat" / "again")  # the same folder linked a second time
    dataset = ImageFolderDataset(root)
    assert len(dataset) == 8, [p for p, _ in dataset.samples]
    assert len({os.path.realpath(p) for p, _ in dataset.samples}) == 8


def test_symlinked_folders_are_still_followed(tmp_path):
    root = _class_folder(tmp_path / "data")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "x.png").write_bytes(_png(99))
    os.symlink(outside, root / "cat" / "linked")
    assert len(ImageFolderDataset(root)) == 9


def _split_folders(root, classes=("a", "b")):
    for split in ("train", "val"):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(4):
                (folder / f"{i}.png").write_bytes(_png(c * 10 + i))
    return root


def test_train_cls_counts_a_looped_class_folder_once(tmp_path):
    data = _split_folders(tmp_path / "data")
    os.symlink(".", data / "train" / "a" / "loop")  # a/loop -> a
    proc = _run(TRAIN_CLS, "--data", data, "--output", tmp_path / "out", *TINY_CLS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 8 images (2 classes)" in proc.stdout, proc.stdout


def test_train_cls_bad_image_with_an_undecodable_name_is_one_line(tmp_path):
    data = _split_folders(tmp_path / "data")
    bad = data / "train" / "b" / (NOT_UTF8 + ".png")
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # OpenCV also logs two lines of its own for this one
    line = one_error_line(_run(TRAIN_CLS, "--data", data, "--output", tmp_path / "out", *TINY_CLS))
    assert show_path(bad) in line and "caf\\xe9.png" in line, line

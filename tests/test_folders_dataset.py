"""ImageFolderDataset over folders and uncompressed tars: real CIFAR-10 archive, colour types, clear errors."""
import io
import os
import pickle
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import require_shared
from PIL import Image

from resbackbones.data import DataError, ImageFolderDataset, decode_image, find_split

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _jpeg(seed: int, size=(12, 10)) -> bytes:
    rng = np.random.default_rng(seed)
    ok, data = cv2.imencode(".jpg", rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    assert ok
    return data.tobytes()


def _make_folder(root: Path, layout) -> Path:
    """layout: {class: {file name: bytes}} -> root/<class>/<file>."""
    for cls, files in layout.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (root / cls / name).write_bytes(data)
    return root


def _make_tar(path: Path, members, prefix: str = "") -> Path:
    """members: {"<class>/<file>": bytes} -> uncompressed tar (directory entries included, as git archive does)."""
    with tarfile.open(path, "w") as archive:
        for directory in sorted({m.split("/")[0] for m in members if "/" in m}):
            info = tarfile.TarInfo(prefix + directory)
            info.type = tarfile.DIRTYPE
            archive.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


SMALL = {
    "cat": {"0.jpg": _jpeg(0), "1.jpg": _jpeg(1)},
    "dog": {"0.jpg": _jpeg(2)},
    "ant": {"0.png": cv2.imencode(".png", np.full((5, 7, 3), 9, np.uint8))[1].tobytes()},
}


# -- the real archive -------------------------------------------------------------------------------------------
def test_reads_real_cifar10_test_archive():
    path = require_shared("data/cifar10/test.tar")
    dataset = ImageFolderDataset(path)
    assert dataset.classes == CIFAR_CLASSES
    assert len(dataset) == 10000 and np.bincount(dataset.targets).tolist() == [1000] * 10
    assert dataset.samples[0] == ("airplane/0000.jpg", 0) and dataset.samples[-1] == ("truck/0999.jpg", 9)
    image, label = dataset[1234]
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8 and label == 1
    # RGB order: OpenCV's decode of the member matches PIL's (which decodes to RGB) up to IDCT rounding.
    with tarfile.open(path) as archive:
        data = archive.extractfile(dataset.samples[1234][0]).read()
    reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    assert np.abs(image.astype(int) - reference).mean() < 2.0
    assert np.abs(image[..., ::-1].astype(int) - reference).mean() > 2 * np.abs(image.astype(int) - reference).mean()


def test_real_train_archive_index():
    dataset = ImageFolderDataset(require_shared("data/cifar10/train.tar"))
    assert dataset.classes == CIFAR_CLASSES
    assert len(dataset) == 50000 and np.bincount(dataset.targets).tolist() == [5000] * 10


# -- folder and tar give the same samples -----------------------------------------------------------------------
def test_folder_and_tar_agree_and_tar_top_folder_is_looked_through(tmp_path):
    folder = ImageFolderDataset(_make_folder(tmp_path / "train", SMALL))
    members = {f"{c}/{n}": d for c, files in SMALL.items() for n, d in files.items()}
    plain = ImageFolderDataset(_make_tar(tmp_path / "plain.tar", members))
    wrapped = ImageFolderDataset(_make_tar(tmp_path / "wrapped.tar", members, prefix="train/"))
    assert folder.classes == plain.classes == wrapped.classes == ["ant", "cat", "dog"]
    assert folder.targets == plain.targets == wrapped.targets == [0, 1, 1, 2]
    assert [Path(p).relative_to(tmp_path / "train").as_posix() for p, _ in folder.samples] == [
        m for m, _ in plain.samples]
    for i in range(len(folder)):
        assert np.array_equal(folder[i][0], plain[i][0]) and np.array_equal(folder[i][0], wrapped[i][0])
    assert folder[0][0].shape == (5, 7, 3) and folder[0][0][0, 0].tolist() == [9, 9, 9]
    # transform is applied to the image only.
    shaped = ImageFolderDataset(tmp_path / "plain.tar", transform=lambda im: im.shape)
    assert shaped[1] == ((12, 10, 3), 1)


def test_tar_dataset_works_in_forked_and_spawned_workers(tmp_path):
    members = {f"c{i % 2}/{i}.jpg": _jpeg(i, size=(8, 8)) for i in range(8)}
    dataset = ImageFolderDataset(_make_tar(tmp_path / "w.tar", members))
    expected = torch.stack([torch.from_numpy(dataset[i][0]) for i in range(len(dataset))])
    copy = pickle.loads(pickle.dumps(dataset))  # what spawn does; the open handle is not pickled
    assert np.array_equal(copy[3][0], dataset[3][0])
    for context, workers in (("fork", 2), ("spawn", 1)):  # one spawned worker: each one re-imports torch
        loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=workers,
                                             multiprocessing_context=context)
        images = torch.cat([batch[0] for batch in loader])
        assert torch.equal(images, expected), context


# -- colour types and bit depths ----------------------------------------------------------------------------------
def test_grayscale_rgba_palette_and_16bit_pngs_become_rgb_uint8(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    bgra = np.zeros((3, 4, 4), np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2], bgra[..., 3] = 10, 20, 30, 0  # transparent: alpha is dropped
    gray16 = np.array([[0, 257 * 100], [65535, 32896]], np.uint16)
    bgr16 = np.zeros((2, 2, 3), np.uint16)
    bgr16[..., 0], bgr16[..., 2] = 65535, 257 * 7  # blue full, red 7
    palette = Image.new("P", (3, 2))
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putpixel((1, 1), 1)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    files = {
        "gray.png": cv2.imencode(".png", gray)[1].tobytes(),
        "rgba.png": cv2.imencode(".png", bgra)[1].tobytes(),
        "gray16.png": cv2.imencode(".png", gray16)[1].tobytes(),
        "bgr16.png": cv2.imencode(".png", bgr16)[1].tobytes(),
        "palette.png": buffer.getvalue(),
    }
    decoded = {name: decode_image(data, name=name) for name, data in files.items()}
    for name, image in decoded.items():
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8, name
    assert np.array_equal(decoded["gray.png"], np.repeat(gray[..., None], 3, axis=2))
    assert decoded["rgba.png"][0, 0].tolist() == [30, 20, 10]
    assert decoded["gray16.png"][..., 0].tolist() == [[0, 100], [255, 128]]
    assert decoded["bgr16.png"][0, 0].tolist() == [7, 0, 255]
    assert decoded["palette.png"][0, 0].tolist() == [255, 0, 0] and decoded["palette.png"][1, 1].tolist() == [0, 255, 0]
    # The same through the dataset.
    dataset = ImageFolderDataset(_make_folder(tmp_path / "root", {"mixed": files}))
    assert all(dataset[i][0].dtype == np.uint8 and dataset[i][0].shape[2] == 3 for i in range(len(dataset)))


# -- errors name the file, folder or archive ---------------------------------------------------------------------
def test_corrupt_image_in_folder_names_the_file(tmp_path):
    cut = _jpeg(3)[: len(_jpeg(3)) * 9 // 10]  # an interrupted download
    layout = {"cat": {"good.jpg": _jpeg(0), "bad.jpg": b"\xff\xd8 not really a jpeg", "cut.jpg": cut},
              "dog": {"empty.png": b""}}
    root = _make_folder(tmp_path / "root", layout)
    dataset = ImageFolderDataset(root)
    bad = [i for i, (p, _) in enumerate(dataset.samples) if p.endswith("bad.jpg")][0]
    with pytest.raises(DataError, match=rf"cannot decode image {root}/cat/bad\.jpg"):
        dataset[bad]
    with pytest.raises(DataError, match=r"dog/empty\.png.*0 bytes"):
        dataset[len(dataset) - 1]
    with pytest.raises(DataError, match=rf"{root}/cat/cut\.jpg: truncated JPEG"):
        dataset[bad + 1]
    # on_error="skip": the next good image (after bad.jpg and cut.jpg) stands in, and the skip is counted and warned about.
    skipping = ImageFolderDataset(root, on_error="skip")
    with pytest.warns(RuntimeWarning, match=r"(bad|cut)\.jpg"):
        image, label = skipping[bad]
    assert label == 0 and image.shape == (12, 10, 3)
    assert skipping.num_skipped == 2 and [Path(p).name for p in skipping.skipped] == ["bad.jpg", "cut.jpg"]
    with pytest.raises(ValueError, match=r"on_error must be one of raise, skip"):
        ImageFolderDataset(root, on_error="ignore")


def test_corrupt_image_in_tar_names_member_and_archive(tmp_path):
    truncated = _jpeg(5)[:40]
    members = {"cat/0.jpg": _jpeg(0), "cat/1.jpg": b"garbage!", "dog/0.jpg": truncated}
    archive = _make_tar(tmp_path / "data.tar", members)
    dataset = ImageFolderDataset(archive)
    with pytest.raises(DataError, match=rf"cannot decode image 'cat/1\.jpg' in archive {archive}"):
        dataset[1]
    with pytest.raises(DataError, match=r"'dog/0\.jpg' in archive"):
        dataset[2]


def test_unreadable_class_folder_is_named(tmp_path, monkeypatch):
    # Tests run as root, where chmod 000 does not block reading: simulate the OS refusing instead.
    root = _make_folder(tmp_path / "root", SMALL)
    real_scandir = os.scandir

    def refusing_scandir(path="."):
        if Path(path) == root / "dog":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", refusing_scandir)
    with pytest.raises(DataError, match=rf"cannot read class folder {root}/dog: Permission denied"):
        ImageFolderDataset(root)


def test_broken_symlink_class_and_empty_class_are_named(tmp_path):
    root = _make_folder(tmp_path / "root", SMALL)
    (root / "zebra").symlink_to(tmp_path / "missing-folder")
    with pytest.raises(DataError, match=rf"class folder {root}/zebra is a broken symlink"):
        ImageFolderDataset(root)
    (root / "zebra").unlink()
    (root / "zebra").mkdir()
    (root / "zebra" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=rf"class folder {root}/zebra has no images"):
        ImageFolderDataset(root)
    empty_tar = _make_tar(tmp_path / "e.tar", {"cat/0.jpg": _jpeg(0), "cow/readme.txt": b"x"})
    with pytest.raises(DataError, match=r"class folder\(s\) with no images in archive .*e\.tar: cow"):
        ImageFolderDataset(empty_tar)


def test_layout_errors(tmp_path):
    with pytest.raises(DataError, match=r"does not exist"):
        ImageFolderDataset(tmp_path / "nowhere")
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.jpg").write_bytes(_jpeg(0))
    with pytest.raises(DataError, match=r"no class folders in .*flat.*1 image\(s\) at its top level, e\.g\. a\.jpg"):
        ImageFolderDataset(flat)
    loose = _make_tar(tmp_path / "loose.tar", {"cat/0.jpg": _jpeg(0), "x.jpg": _jpeg(1)})
    with pytest.raises(DataError, match=r"image\(s\) outside class folders, e\.g\. x\.jpg"):
        ImageFolderDataset(loose)
    gz = tmp_path / "data.tar.gz"
    with tarfile.open(gz, "w:gz") as archive:
        info = tarfile.TarInfo("cat/0.jpg")
        data = _jpeg(0)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match=r"compressed archives .* decompress to a plain \.tar"):
        ImageFolderDataset(gz)
    no_images = _make_tar(tmp_path / "none.tar", {"cat/readme.txt": b"x"})
    with pytest.raises(DataError, match=r"no images in archive"):
        ImageFolderDataset(no_images)


def test_find_split(tmp_path):
    _make_tar(tmp_path / "train.tar", {"cat/0.jpg": _jpeg(0)})
    _make_folder(tmp_path / "val", {"cat": {"0.jpg": _jpeg(1)}})
    assert find_split(tmp_path, "train") == tmp_path / "train.tar"
    assert find_split(tmp_path, ("val", "test")) == tmp_path / "val"
    (tmp_path / "val" / "cat" / "0.jpg").unlink()
    (tmp_path / "val" / "cat").rmdir()
    (tmp_path / "val").rmdir()
    with pytest.raises(DataError, match=r"no val / test split in .*: looked for .*val, .*val\.tar, .*test, "
                                        r".*test\.tar; it holds: train\.tar"):
        find_split(tmp_path, ("val", "test"))
    with pytest.raises(DataError, match=r"data root .* is not a folder"):
        find_split(tmp_path / "missing", "train")

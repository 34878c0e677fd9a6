"""ImageFolder datasets read from a folder of class subfolders or from an uncompressed .tar of that layout.

    root/<class>/<image>            or            archive.tar with members <class>/<image>

Images are decoded by data/images.py (decode_image / read_image, re-exported here) and returned as RGB uint8
[H, W, 3] arrays, whatever their colour type or bit depth (grayscale, RGBA, palette, 16-bit). A tar is indexed once
(member offsets) and read with positional reads from a file handle opened lazily in each process, so DataLoader
workers (fork or spawn) share nothing.
"""
import os
import tarfile
import warnings
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from torch.utils.data import Dataset

from .errors import DataError, show_path
from .images import decode_image, read_image  # noqa: F401  (the one decode path; re-exported, as before)

PathLike = Union[str, os.PathLike]
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
ON_ERROR_CHOICES = ("raise", "skip")
def _is_image(name: str, extensions: Sequence[str]) -> bool:
    return name.lower().endswith(tuple(extensions))


def _visible(name: str) -> bool:
    # Hidden entries (.DS_Store, .ipynb_checkpoints, ._foo.jpg from macOS) are never classes or samples.
    return not name.startswith(".")


class _TarReader:
    """Positional reads of tar members; the file handle is opened on first use in each process."""

    def __init__(self, path: Path):
        self.path = path
        self._handle = None
        self._pid = -1

    def read(self, offset: int, size: int) -> bytes:
        if self._handle is None or self._pid != os.getpid():
            # A forked worker must not share the parent's file position, so each process opens its own handle.
            self._handle = open(self.path, "rb")
            self._pid = os.getpid()
        if hasattr(os, "pread"):
            data = os.pread(self._handle.fileno(), size, offset)
        else:  # Windows: no pread; a handle per process still keeps seek+read safe.
            self._handle.seek(offset)
            data = self._handle.read(size)
        if len(data) != size:
            raise OSError(f"short read ({len(data)} of {size} bytes): archive truncated?")
        return data

    def __getstate__(self):
        return {"path": self.path, "_handle": None, "_pid": -1}

    def __del__(self):
        if self._handle is not None:
            self._handle.close()


class ImageFolderDataset(Dataset):
    """Classification samples from `source`: a folder of class subfolders, or a .tar archive of that layout.

    Attributes (torchvision ImageFolder's names):
      classes       sorted class names; label i is classes[i]
      class_to_idx  {class name: label}
      samples       [(file path, or member name inside the archive, label)], sorted by class then name
      targets       [label] per sample
    dataset[i] -> (transform(image) if transform else image, label) with image RGB uint8 [H, W, 3].

    on_error: "raise" (default) -> an undecodable image raises DataError naming the file (and the archive);
    "skip" -> it is warned about once, counted in `num_skipped` / `skipped` (per process) and the next sample is
    returned in its place. Layout problems (unreadable or empty class folder, no images) always raise DataError.
    Archives must be uncompressed (.tar): compressed ones cannot be read at random offsets.
    A tar whose members all sit under one top folder (`train/<class>/<image>`) is read through that folder.
    """

    def __init__(
        self,
        source: PathLike,
        transform: Optional[Callable] = None,
        *,
        on_error: str = "raise",
        extensions: Sequence[str] = IMG_EXTENSIONS,
    ):
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(
                f"ImageFolderDataset: on_error must be one of {', '.join(ON_ERROR_CHOICES)}, got {on_error!r}"
            )
        self.source = Path(source)
        self.transform = transform
        self.on_error = on_error
        self.extensions = tuple(e.lower() for e in extensions)
        self.num_skipped = 0
        self.skipped: List[str] = []
        self._tar: Optional[_TarReader] = None
        self._offsets: List[Tuple[int, int]] = []
        if self.source.is_dir():
            classes, samples = self._index_folder(self.source)
        elif self.source.is_file():
            classes, samples = self._index_tar(self.source)
            self._tar = _TarReader(self.source)
        elif self.source.is_symlink():
            raise DataError(f"dataset source {self.source} is a broken symlink")
        else:
            raise DataError(f"dataset source {self.source} does not exist (expected a folder or a .tar archive)")
        self.classes: List[str] = classes
        self.class_to_idx: Dict[str, int] = {name: i for i, name in enumerate(classes)}
        self.samples: List[Tuple[str, int]] = samples
        self.targets: List[int] = [label for _, label in samples]

    # -- indexing -----------------------------------------------------------------------------------------------
    def _index_folder(self, root: Path) -> Tuple[List[str], List[Tuple[str, int]]]:
        try:
            entries = sorted((e for e in os.scandir(root) if _visible(e.name)), key=lambda e: e.name)
        except OSError as error:
            raise DataError(f"cannot list dataset folder {root}: {error.strerror or error}") from None
        class_dirs = []
        loose_images = []
        for entry in entries:
            path = Path(entry.path)
            if entry.is_dir():  # follows symlinks, like torchvision
                class_dirs.append(path)
            elif entry.is_symlink() and not path.exists():
                raise DataError(f"class folder {path} is a broken symlink (target {os.readlink(path)!r} is missing)")
            elif _is_image(entry.name, self.extensions):
                loose_images.append(entry.name)
        if not class_dirs:
            found = ""
            if loose_images:
                found = f"; found {len(loose_images)} image(s) at its top level, e.g. {loose_images[0]}"
            raise DataError(f"no class folders in {root}: expected the layout {root}/<class>/<image>{found}")
        classes = [d.name for d in class_dirs]
        samples: List[Tuple[str, int]] = []
        for label, class_dir in enumerate(class_dirs):
            files = sorted(self._walk_class(class_dir))
            if not files:
                raise DataError(
                    f"class folder {class_dir} has no images (extensions {', '.join(self.extensions)})"
                )
            samples.extend((path, label) for path in files)
        return classes, samples

    def _walk_class(self, class_dir: Path) -> Iterable[str]:
        def fail(error: OSError) -> None:
            raise DataError(
                f"cannot read class folder {show_path(error.filename or class_dir)}: {error.strerror or error}"
            ) from None

        # Symlinked folders are followed (like torchvision), but each real folder once: os.walk(followlinks=True)
        # alone goes round a symlink loop until the path is too long (8 images counted as 168), and a folder
        # linked twice would count its images twice (issue 21).
        seen = {os.path.realpath(class_dir)}
        for folder, subfolders, files in os.walk(class_dir, onerror=fail, followlinks=True):
            kept = []
            for name in sorted(subfolders):  # sorted: which of two links to one folder is kept does not vary
                real = os.path.realpath(os.path.join(folder, name))
                if _visible(name) and real not in seen:
                    seen.add(real)
                    kept.append(name)
            subfolders[:] = kept
            for name in files:
                if _visible(name) and _is_image(name, self.extensions):
                    yield os.path.join(folder, name)

    def _index_tar(self, path: Path) -> Tuple[List[str], List[Tuple[str, int]]]:
        try:
            with tarfile.open(path, mode="r:") as archive:
                members = archive.getmembers()
        except tarfile.ReadError as error:
            raise DataError(
                f"cannot read {path} as an uncompressed tar archive ({error}); compressed archives (.tar.gz, ...) "
                f"cannot be read at random offsets: decompress to a plain .tar or extract to a folder"
            ) from None
        except OSError as error:
            raise DataError(f"cannot open archive {path}: {error.strerror or error}") from None
        files = []
        dirs = set()
        for member in members:
            parts = [p for p in member.name.split("/") if p not in ("", ".")]
            if not parts or not all(_visible(p) for p in parts):
                continue
            if member.isdir():
                dirs.add(tuple(parts))
            elif member.isfile() and _is_image(parts[-1], self.extensions):
                files.append((parts, member.offset_data, member.size))
        if not files:
            raise DataError(f"no images in archive {path} (extensions {', '.join(self.extensions)})")
        # `tar cf train.tar train/` puts everything under one folder: look through it.
        prefix: Tuple[str, ...] = ()
        tops = {parts[0] for parts, _, _ in files}
        if len(tops) == 1 and all(len(parts) >= 3 for parts, _, _ in files):
            prefix = (tops.pop(),)
        depth = len(prefix)
        loose = [parts for parts, _, _ in files if len(parts) == depth + 1]
        if loose:
            raise DataError(
                f"archive {path} has image(s) outside class folders, e.g. {'/'.join(loose[0])}; expected members "
                f"{'/'.join(prefix + ('<class>', '<image>'))}"
            )
        by_class: Dict[str, List[Tuple[str, int, int]]] = {}
        for d in dirs:
            if len(d) == depth + 1 and d[:depth] == prefix:
                by_class.setdefault(d[depth], [])
        for parts, offset, size in files:
            by_class.setdefault(parts[depth], []).append(("/".join(parts), offset, size))
        empty = sorted(c for c, items in by_class.items() if not items)
        if empty:
            raise DataError(f"class folder(s) with no images in archive {path}: {', '.join(empty)}")
        classes = sorted(by_class)
        samples: List[Tuple[str, int]] = []
        for label, name in enumerate(classes):
            for member, offset, size in sorted(by_class[name]):
                samples.append((member, label))
                self._offsets.append((offset, size))
        return classes, samples

    # -- access -------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int) -> np.ndarray:
        """RGB uint8 [H, W, 3] of sample `index` (no transform). Raises DataError naming the file and archive."""
        name = self.samples[index][0]
        if self._tar is None:
            return read_image(name)
        offset, size = self._offsets[index]
        where = f"{name!r} in archive {self.source}"
        try:
            data = self._tar.read(offset, size)
        except OSError as error:
            raise DataError(f"cannot read {where}: {error}") from None
        return decode_image(data, name=where)

    def __getitem__(self, index: int):
        if index < 0:
            index += len(self)
        for attempt in range(len(self)):
            current = (index + attempt) % len(self)
            try:
                image = self.load_image(current)
            except DataError as error:
                if self.on_error == "raise":
                    raise
                self._record_skip(self.samples[current][0], error)
                continue
            label = self.samples[current][1]
            return (self.transform(image) if self.transform is not None else image), label
        raise DataError(f"every image in {self.source} failed to decode ({self.num_skipped} skipped)")

    def _record_skip(self, name: str, error: DataError) -> None:
        self.num_skipped += 1
        if name not in self.skipped:
            self.skipped.append(name)
            warnings.warn(f"skipping undecodable image: {error}", RuntimeWarning, stacklevel=3)

    def __repr__(self) -> str:
        kind = "archive" if self._tar is not None else "folder"
        return f"ImageFolderDataset({kind}={str(self.source)!r}, classes={len(self.classes)}, samples={len(self)})"


def find_split(root: PathLike, split_names: Union[str, Sequence[str]]) -> Path:
    """First of root/<name> (folder) or root/<name>.tar (archive) for name in split_names, e.g. ("val", "test").

    Raises DataError listing every path looked for and what root holds.
    """
    root = Path(root)
    names = [split_names] if isinstance(split_names, str) else list(split_names)
    if not root.is_dir():
        raise DataError(f"data root {root} is not a folder (expected {root}/<split> or {root}/<split>.tar)")
    looked = []
    for name in names:
        for candidate in (root / name, root / f"{name}.tar"):
            looked.append(str(candidate))
            if candidate.is_dir() or candidate.is_file():
                return candidate
    try:
        present = ", ".join(sorted(os.listdir(root))) or "nothing"
    except OSError:
        present = "unreadable"
    raise DataError(f"no {' / '.join(names)} split in {root}: looked for {', '.join(looked)}; it holds: {present}")

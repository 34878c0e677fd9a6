"""Output paths checked before any work, by the tools and trainers (the one output rule's rules 3-5 applied to the
paths of a command line, io/outputs.py the writes themselves):

    refuse_inputs({"--out": out}, {"--gt": gt, "--dt": dt})     # registers the inputs; an output onto one: refused
    targets = unique_targets(images, out_dir, suffix=".png")    # predict: one output per input, never onto one
    check_output_path(out, "--out")                             # a folder, a path under a file, a read-only place
"""
import os
import tempfile
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional

from .outputs import OutputError, PathLike, check_output_name, check_writable_target, register_input


def same_path(a: PathLike, b: PathLike) -> bool:
    """Whether a and b name one file (hard and symbolic links included), existing or not."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_output_path(path: PathLike, flag: str, *, folder: bool = False) -> None:
    """OutputError when `path` cannot be written: a file output that is an existing folder, a folder output that is
    a file, or a path under a file (`afile/out.json`; open / mkdir raised NotADirectoryError or FileExistsError)."""
    path = Path(path)
    check_output_name(path, flag)
    if folder and path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path} is a file; give a folder (new or empty)")
    if not folder and path.is_dir():
        raise OutputError(f"{flag} {path} is a folder; give a file name")
    for parent in ([path] if folder else []) + list(path.parents):
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise OutputError(f"{flag} {path} cannot be written: {parent} is a file, not a folder; give a path "
                                  f"in a folder")
            try:  # the first existing folder must take new files (a read-only mount, /proc, no permission)
                with tempfile.TemporaryFile(dir=parent):
                    pass
            except OSError as error:
                raise OutputError(f"{flag} {path} cannot be written: no file can be made in {parent} "
                                  f"({error.strerror or error}); give a path in a writable folder") from None
            break


def refuse_inputs(outputs: Mapping[str, Optional[PathLike]], inputs: Mapping[str, Optional[PathLike]], *,
                  folders: bool = False, register: bool = True) -> None:
    """OutputError when an output path is one of the inputs, or two outputs are one path (names: the flags), or an
    output cannot be written (check_output_path; folders: the outputs are folders, else files). register: the
    inputs are registered (register_input: rule 3 for every later write of the command, whatever --overwrite says);
    False for files that are not read, only protected from these outputs."""
    given_in = [(flag, p) for flag, p in inputs.items() if p]
    given_out = [(flag, p) for flag, p in outputs.items() if p]
    for _, source in given_in if register else ():
        register_input(source)
    for flag, out in given_out:
        check_output_path(out, flag, folder=folders)
    for flag, out in given_out:
        for in_flag, source in given_in:
            if same_path(out, source):
                raise OutputError(f"{flag} {out} is the {in_flag} input: writing it would destroy the input; "
                                  f"choose another {flag}")
    for i, (flag, out) in enumerate(given_out):
        for other_flag, other in given_out[i + 1:]:
            if same_path(out, other):
                raise OutputError(f"{flag} and {other_flag} are both {out}; give them different paths")
    for _, out in given_out if not folders else ():
        check_writable_target(out)  # inputs registered earlier in the command, another run's files


def files_in(folder: Optional[PathLike], flag: str) -> Dict[str, Path]:
    """{"FLAG NAME": path} for each file directly in `folder` (none when it is None or no folder): the images a
    command reads, for refuse_inputs, which registers them."""
    if not folder or not os.path.isdir(folder):
        return {}
    with os.scandir(folder) as entries:
        return {f"{flag} {entry.name}": Path(entry.path) for entry in entries if entry.is_file()}


def unique_targets(sources: Iterable[PathLike], folder: PathLike, *, suffix: str) -> Dict[Path, Path]:
    """{source: folder/<source stem><suffix>}, refusing a target that is one of the sources or that two sources share."""
    sources = [Path(s) for s in sources]
    for source in sources:
        register_input(source)
    targets: Dict[Path, Path] = {}
    owner: Dict[Path, Path] = {}
    for source in sources:
        target = Path(folder) / f"{source.stem}{suffix}"
        key = target.resolve()
        if key in owner:
            raise OutputError(f"{owner[key]} and {source} would both be written to {target}; give them separately "
                              f"with different --output folders (or rename one)")
        owner[key] = source
        targets[source] = target
    for target in targets.values():
        clash = next((s for s in sources if same_path(target, s)), None)
        if clash is not None:
            raise OutputError(f"writing {target} would replace the input image {clash}; give another --output")
    return targets

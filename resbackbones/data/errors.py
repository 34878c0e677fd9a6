"""Errors raised while reading datasets, and the one way their messages show a path."""
import os
from typing import Union


class DataError(ValueError):
    """A dataset that cannot be read as asked; the message names the file, folder or archive at fault."""


def show_path(path: Union[str, os.PathLike, bytes]) -> str:
    """`path` as printable text: bytes that are not valid UTF-8 (Python keeps them as lone surrogates, "\\udcff")
    become "\\xff" escapes, so a message naming such a file can be printed, logged or written as JSON anywhere."""
    raw = os.fsencode(path)
    return raw.decode("utf-8", "backslashreplace")

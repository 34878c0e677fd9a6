"""Errors raised while reading datasets, and the one way their messages show a path."""
from ..io.outputs import show_path  # noqa: F401  (the one way messages show a path; imported from here too)


class DataError(ValueError):
    """A dataset that cannot be read as asked; the message names the file, folder or archive at fault."""

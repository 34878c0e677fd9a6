"""Errors raised while reading datasets, and the one way their messages show a path."""
from ..io.outputs import show_path  # noqa: F401  (the one way messages show a path; imported from here too)
from ..utils.errors import DataError  # noqa: F401  (defined with every user error in utils/errors.py)

"""Errors raised while reading datasets."""


class DataError(ValueError):
    """A dataset that cannot be read as asked; the message names the file, folder or archive at fault."""

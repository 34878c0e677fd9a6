"""Errors raised while reading or matching weights."""


class WeightsError(ValueError):
    """A weights file or state dict that cannot be used as asked; the message names the file/keys/layers."""

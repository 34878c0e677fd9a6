"""Errors raised while reading or matching weights."""


class WeightsError(ValueError):
    """A weights file or state dict that cannot be used as asked; the message names the file/keys/layers."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not match the model; the message names the file."""

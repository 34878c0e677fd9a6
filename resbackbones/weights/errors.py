"""Errors raised while reading or matching weights."""
# Defined with every user error in utils/errors.py; imported from here by weights/ and its users.
from ..utils.errors import CheckpointError, WeightsError  # noqa: F401

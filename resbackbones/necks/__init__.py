"""Necks: turn a backbone's named features into the maps the detection heads read (FPN)."""
from .fpn import FPN, TOP_BLOCKS, BackboneWithFPN

__all__ = ["FPN", "TOP_BLOCKS", "BackboneWithFPN"]

"""Small measurement helpers (MACs / FLOPs)."""
from .flops import count_macs, count_parameters

__all__ = ["count_macs", "count_parameters"]

"""Bridges to other frameworks. Each submodule imports its framework; this package imports none of them.

    import resbackbones.integrations.detectron2   # registers our backbones in detectron2's BACKBONE_REGISTRY
"""

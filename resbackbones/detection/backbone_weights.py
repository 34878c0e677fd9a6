"""What detection training asks of its backbone config: weights, or a norm that can train without them.

Kept here until the training config has its own package (docs/dev/engine_refactor_plan.md, step 6): it reads the
DetectorConfig and raises ConfigError. The weights' input conventions are rb.weights.conventions.input_conventions.
"""
from ..config import ConfigError


def refuse_untrainable_backbone(cfg) -> None:
    """Refuse to train a randomly initialised backbone with FrozenBN (cfg: the DetectorConfig).

    FrozenBN of a fresh backbone is the identity (mean 0, var 1, weight 1, bias 0), so nothing normalises the
    residual sums: ResNet-101's res4 reaches mean |x| ~ 2e4 before the first step and training diverges at once.
    """
    bcfg = cfg.backbone
    if bcfg.norm == "FrozenBN" and not bcfg.weights:
        raise ConfigError(
            "model.backbone.norm is FrozenBN but model.backbone.weights is empty: frozen statistics of a random "
            "backbone normalise nothing and training diverges at iteration 1; set model.backbone.norm to BN or GN, "
            "or give model.backbone.weights (e.g. torchvision:IMAGENET1K_V1, or a tools/train_cls.py --export file)"
        )

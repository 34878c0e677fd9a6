"""Classification model = backbone + the family's pooled head; its `backbone.*` weights load into detection as is."""
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from ..weights.pretrained import adopt_conventions, load_classifier
from ..weights.resolve import resolve_weights
from .base import Backbone
from .registry import WeightsReference, build_backbone, check_options

LOGITS = "logits"


class Classifier(nn.Module):
    """backbone (last stage) -> head -> logits.

    forward: images [N, 3, H, W] -> logits [N, num_classes].
    Parameter names are `backbone.<stage>...` and `head...`; `backbone.state_dict()` is what detection loads.
    """

    def __init__(self, backbone: Backbone, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self._last_stage = backbone.stage_names[-1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images)[self._last_stage])


class FeatureClassifier(Classifier):
    """A Classifier that returns {stage: features, ..., "logits": [N, num_classes]} for the requested names."""

    def __init__(self, backbone: Backbone, head: nn.Module, out_features: Sequence[str]):
        super().__init__(backbone, head)
        self._return_logits = LOGITS in out_features
        self._returned = [f for f in backbone.out_features if f in out_features]

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:  # type: ignore[override]
        features = self.backbone(images)
        outputs: Dict[str, torch.Tensor] = {}
        for name in self._returned:
            outputs[name] = features[name]
        if self._return_logits:
            outputs[LOGITS] = self.head(features[self._last_stage])
        return outputs


def build_classifier(
    name: str, num_classes: int = 1000, *, out_features: Optional[Sequence[str]] = None,
    weights: Optional[WeightsReference] = None, **options
) -> Classifier:
    """Build `name` with its classification head.

    out_features None -> forward returns logits [N, num_classes]; a sequence of stage names and/or "logits" ->
    forward returns a dict with those entries. Other options go to the backbone builder (norm, freeze_at, ...).
    weights: as for build_backbone; the backbone loads strictly, the head's tensors load where their shapes fit
    (ImageNet weights into a 10-class model: the last layer stays initialised, for fine-tuning).
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"build_classifier({name!r}): num_classes must be a positive int, got {num_classes!r}")
    resolved = None
    if weights:
        resolved = resolve_weights(weights, arch=name)
        options = adopt_conventions(name, resolved, options, check_options(name, options))
    backbone = build_backbone(name, out_features=None, **options)
    stages = backbone.stage_names
    wanted = list(out_features) if out_features is not None else [LOGITS]
    unknown = [f for f in wanted if f != LOGITS and f not in stages]
    if unknown:
        raise ValueError(f"classifier {name!r}: unknown out_features {unknown}; available: {', '.join(stages + [LOGITS])}")
    # The head needs the last stage, so the backbone always returns it alongside any requested stages.
    backbone_features = [s for s in stages if s in wanted] + [stages[-1]]
    backbone.select_out_features(backbone_features)
    head = backbone.build_classifier_head(num_classes)
    model = Classifier(backbone, head) if out_features is None else FeatureClassifier(backbone, head, wanted)
    if resolved is not None:
        load_classifier(model, resolved, name=name)
    return model

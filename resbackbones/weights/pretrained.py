"""weights= of rb.build_backbone / rb.build_classifier: resolve, adopt the weights' conventions, load strictly.

    options = adopt_conventions("resnet50", resolved, options, valid_options)   # stride_in_1x1 from the weights
    load_backbone(backbone, resolved, name="resnet50")                            # strict; sets weights_metadata
    load_classifier(classifier, resolved, name="resnet50")                        # + the head when it fits

After loading, `backbone.weights_metadata` is the weights' WeightsMetadata (None when the file records none and its
format implies none): detection reads its input normalisation and channel order from there.
"""
from typing import Any, Dict, Iterable, Optional

from torch import nn

from .errors import WeightsError
from .matching import OPTIONAL_BUFFERS, check_state_dict, diff_state_dict, load_state_dict
from .metadata import WeightsMetadata, check_compatible
from .resolve import ResolvedWeights

WEIGHTS_METADATA_ATTR = "weights_metadata"


def adopt_conventions(name: str, resolved: ResolvedWeights, options: Dict[str, Any],
                      valid_options: Iterable[str]) -> Dict[str, Any]:
    """Builder options with the weights' stride placement filled in when the caller left it out.

    MSRA caffe2 weights (detectron2 .pkl) put the stride in the 1x1 conv, torchvision's in the 3x3: the weights
    decide, as torchvision's Weights decide their preprocessing. An explicit, conflicting stride_in_1x1 is kept and
    refused by load_backbone naming both.
    """
    meta = resolved.metadata
    options = dict(options)
    if meta is not None and meta.stride_in_1x1 is not None and "stride_in_1x1" in set(valid_options):
        options.setdefault("stride_in_1x1", meta.stride_in_1x1)
    return options


def _arch_error(resolved: ResolvedWeights, name: str, model: nn.Module, state: Dict[str, Any]) -> WeightsError:
    # load_backbone already dropped the optional buffers the model lacks: "unexpected" counts the same either way.
    diff = diff_state_dict(model, state, optional=OPTIONAL_BUFFERS)
    return WeightsError(f"{resolved.source} holds {resolved.arch} weights but the model is {name} "
                        f"({len(diff.missing)} keys missing, {len(diff.unexpected)} unexpected, "
                        f"{len(diff.reshaped)} of another shape): build {resolved.arch} or give {name} weights")


def load_backbone(backbone: nn.Module, resolved: ResolvedWeights, *, name: str) -> None:
    """Load resolved.backbone_state strictly into `backbone` (its own names, `stages.*`).

    Stages the backbone does not build (a classifier file's res5 under out_features up to res4) are dropped;
    anything else missing, unexpected or of another shape is a WeightsError listing the keys and both shapes, and
    led by both architecture names when the weights are for another one. Conflicting stride placement is refused.
    """
    check_compatible(resolved.metadata, backbone, source=resolved.source)
    built = set(getattr(backbone, "stage_names", []))
    expected = backbone.state_dict()
    state = {k: v for k, v in resolved.backbone_state.items()
             if (not built or k.split(".")[1] in built) and not (k.endswith("num_batches_tracked") and k not in expected)}
    if not state:
        raise WeightsError(f"{resolved.source} holds no backbone weights (keys: {', '.join(list(resolved.state)[:5])})")
    arch = resolved.arch
    if arch is not None and arch != name:
        try:  # generic builders (cifar_resnet with depth=20) may match a named arch (cifar_resnet20) exactly
            check_state_dict(backbone, state, source=resolved.source)
        except WeightsError:
            raise _arch_error(resolved, name, backbone, state) from None
    load_state_dict(backbone, state, strict=True, source=resolved.source)
    setattr(backbone, WEIGHTS_METADATA_ATTR, resolved.metadata)


def load_classifier(classifier: nn.Module, resolved: ResolvedWeights, *, name: str) -> None:
    """load_backbone into classifier.backbone, then the head: every head tensor of the same shape is loaded, so a
    head for other classes (1000 ImageNet classes into a 10-class model) leaves the final layer as initialised for
    fine-tuning, as timm does."""
    load_backbone(classifier.backbone, resolved, name=name)
    head = resolved.head_state
    expected = classifier.head.state_dict()
    fitting = {k: v for k, v in head.items() if k in expected and tuple(v.shape) == tuple(expected[k].shape)}
    if fitting:
        classifier.head.load_state_dict(fitting, strict=False)
    setattr(classifier, WEIGHTS_METADATA_ATTR, resolved.metadata)


def weights_metadata(module: nn.Module) -> Optional[WeightsMetadata]:
    """The metadata of the weights a backbone/classifier was built with (None: random init or none recorded)."""
    return getattr(module, WEIGHTS_METADATA_ATTR, None)

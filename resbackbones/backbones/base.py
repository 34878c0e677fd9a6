"""Backbone: a stack of named stages that returns a dict of feature maps and describes them with ShapeSpec."""
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..layers import ShapeSpec, convert_frozen_batchnorm


class Backbone(nn.Module):
    """Base class of every feature producer.

    A subclass builds its stages in order (e.g. stem, res2, ..., res5) and hands them to `_init_stages` with the
    ShapeSpec of each stage's output. Forward runs the stages in order and returns
    {name: Tensor[N, C, H / stride, W / stride]} for the names in `out_features`.
    Stages after the last requested output are not built, as in detectron2.
    """

    # Types for TorchScript (empty lists cannot be inferred); no `stages: nn.ModuleDict` here, it cannot read that.
    _out_features: List[str]
    _checkpoint_stages: List[str]
    # Python-side metadata that forward never reads: TorchScript need not compile it (subclasses' overrides too).
    __jit_unused_properties__ = ["size_divisibility", "stage_names", "out_features"]

    def __init__(self) -> None:
        super().__init__()
        self._out_features: List[str] = []
        self._stage_shapes: Dict[str, ShapeSpec] = {}
        self._checkpoint_stages: List[str] = []
        self._norm_eval = False
        self._freeze_at = 0

    # -- construction -------------------------------------------------------------------------------------------
    def _init_stages(
        self,
        stages: "OrderedDict[str, nn.Module]",
        shapes: Mapping[str, ShapeSpec],
        *,
        out_features: Optional[Sequence[str]],
        freeze_at: int = 0,
        norm_eval: bool = False,
        checkpoint_stages: Sequence[str] = (),
    ) -> None:
        """Keep the stages up to the last one named in out_features (None: all), then apply freezing.

        Raises ValueError naming any unknown out_feature or checkpoint stage and listing the valid ones.
        """
        names = list(stages)
        if out_features is None:
            out_features = [names[-1]]
        out_features = list(out_features)
        unknown = [f for f in out_features if f not in names]
        if unknown or not out_features:
            raise ValueError(
                f"{type(self).__name__}: unknown out_features {unknown or out_features}; available: {', '.join(names)}"
            )
        bad_ckpt = [s for s in checkpoint_stages if s not in names]
        if bad_ckpt:
            raise ValueError(
                f"{type(self).__name__}: unknown checkpoint stage(s) {bad_ckpt}; available: {', '.join(names)}"
            )
        if not 0 <= freeze_at <= len(names):
            raise ValueError(
                f"{type(self).__name__}: freeze_at={freeze_at} out of range 0..{len(names)} "
                f"(0 = nothing, 1 = {names[0]}, k = {names[0]}..{names[len(names) - 1]})"
            )
        last = max(names.index(f) for f in out_features)
        kept = names[: last + 1]
        # Sorted in stage order so dict outputs come out stem -> res5 whatever order the user gave.
        self._out_features = [n for n in kept if n in out_features]
        self.stages = nn.ModuleDict([(n, stages[n]) for n in kept])
        self._stage_shapes = {n: shapes[n] for n in kept}
        self._checkpoint_stages = [s for s in checkpoint_stages if s in kept]
        self._norm_eval = norm_eval
        self.freeze(freeze_at)

    def select_out_features(self, out_features: Sequence[str]) -> "Backbone":
        """Change which built stages forward returns (stages are not rebuilt). Raises ValueError on unknown names."""
        unknown = [f for f in out_features if f not in self.stages]
        if unknown or not out_features:
            raise ValueError(
                f"{type(self).__name__}: unknown out_features {unknown or list(out_features)}; "
                f"available: {', '.join(self.stages.keys())}"
            )
        self._out_features = [n for n in self.stages.keys() if n in out_features]
        return self

    def pop_stage(self, name: str) -> nn.Module:
        """Remove the last built stage `name` and return it (e.g. res5 handed to a C4 box head).

        Its ShapeSpec goes with it, so output_shape() / stage_shapes() describe what is left; out_features keep the
        remaining names, or become the new last stage when `name` was the only one returned. Raises ValueError naming
        `name` and the stages present when it is not the last stage or is the only one.
        """
        names = self.stage_names
        if not names or name != names[-1] or len(names) == 1:
            reason = "only the last stage can be removed" if len(names) != 1 else "it is the only stage"
            raise ValueError(f"{type(self).__name__}: cannot pop stage {name!r} ({reason}); "
                             f"stages: {', '.join(names)}")
        stage = self.stages[name]
        del self.stages[name]
        del self._stage_shapes[name]
        self._checkpoint_stages = [s for s in self._checkpoint_stages if s != name]
        self.select_out_features([f for f in self._out_features if f != name] or [names[-2]])
        return stage

    def build_classifier_head(self, num_classes: int) -> nn.Module:
        """The family's classification head: last stage [N, C, H, W] -> logits [N, num_classes]."""
        raise NotImplementedError(f"{type(self).__name__} has no classification head")

    # -- description --------------------------------------------------------------------------------------------
    @property
    def out_features(self) -> List[str]:
        return list(self._out_features)

    @property
    def stage_names(self) -> List[str]:
        return list(self.stages.keys())

    def output_shape(self) -> Dict[str, ShapeSpec]:
        """{name: ShapeSpec(channels, stride)} for each returned feature."""
        return {name: self._stage_shapes[name] for name in self._out_features}

    def stage_shapes(self) -> Dict[str, ShapeSpec]:
        """ShapeSpec of every built stage, returned or not."""
        return dict(self._stage_shapes)

    @property
    def size_divisibility(self) -> int:
        """Input H and W must be multiples of this for stride-aligned outputs (0: no constraint)."""
        return 0

    # -- training behaviour -------------------------------------------------------------------------------------
    def freeze(self, freeze_at: int) -> "Backbone":
        """Freeze the first `freeze_at` stages (1 = stem, 2 = stem + res2, ...): no gradients, BN -> FrozenBN."""
        self._freeze_at = freeze_at
        for index, (name, stage) in enumerate(self.stages.items(), start=1):
            if index > freeze_at:
                break
            for param in stage.parameters():
                param.requires_grad_(False)
            self.stages[name] = convert_frozen_batchnorm(stage)
        return self

    def train(self, mode: bool = True) -> "Backbone":
        super().train(mode)
        if mode and self._norm_eval:
            # mmdetection's norm_eval: BN uses its running statistics even while the rest trains.
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    # -- forward ------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """x: [N, C_in, H, W] -> {name: [N, C, H / stride, W / stride]} for name in out_features."""
        outputs: Dict[str, torch.Tensor] = {}
        for name, stage in self.stages.items():
            if self.training and name in self._checkpoint_stages and not torch.jit.is_scripting():
                x = checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs

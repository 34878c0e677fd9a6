"""Exponential moving average of a model's weights (Polyak averaging), as used for evaluation."""
import copy
import math
from typing import Dict

import torch
from torch import nn


class ModelEMA:
    """ema = decay * ema + (1 - decay) * weights after every optimizer step; buffers (BN statistics) are copied.

    warmup_steps > 0 ramps the decay as decay * (1 - exp(-step / warmup_steps)) so early averages are not
    dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, *, decay: float = 0.9999, warmup_steps: int = 2000):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.warmup_steps = warmup_steps
        self.updates = 0

    def current_decay(self) -> float:
        if self.warmup_steps <= 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-self.updates / self.warmup_steps))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = self.current_decay()
        source = model.state_dict()
        for name, value in self.module.state_dict().items():
            new = source[name].detach()
            if value.dtype.is_floating_point:
                value.mul_(decay).add_(new.to(value.dtype), alpha=1.0 - decay)
            else:
                value.copy_(new)

    def state_dict(self) -> Dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: Dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])

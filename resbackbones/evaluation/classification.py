"""Top-1 / top-5 classification accuracy (percent) and mean cross-entropy over a DataLoader, optionally 10-crop."""
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import functional as TF

from .inference import DatasetEvaluator, inference_on_dataset

LOGITS = "logits"


def correct_counts(logits: torch.Tensor, targets: torch.Tensor, topk: Sequence[int] = (1, 5)) -> List[torch.Tensor]:
    """Number of samples whose target is among the k highest logits, for each k (k > classes counts all).

    logits [N, num_classes], targets [N] (int64) -> [tensor(count_k) for k in topk] (int64, on logits' device).
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"accuracy: expected logits [N, C] and targets [N], got {tuple(logits.shape)} and "
                         f"{tuple(targets.shape)}")
    maxk = min(max(topk), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices  # [N, maxk], best first
    hits = top.eq(targets.view(-1, 1))
    return [hits[:, : min(k, maxk)].any(dim=1).sum() for k in topk]


def accuracy(logits: torch.Tensor, targets: torch.Tensor, topk: Sequence[int] = (1,)) -> List[float]:
    """Top-k accuracy in percent for each k: logits [N, num_classes], targets [N] -> [acc_k, ...]."""
    if logits.shape[0] == 0:
        raise ValueError("accuracy: empty batch")
    return [100.0 * c.item() / logits.shape[0] for c in correct_counts(logits, targets, topk)]


def ten_crop(images: torch.Tensor, size: Union[int, Tuple[int, int]]) -> torch.Tensor:
    """The paper's 10-crop (4 corners + centre, and their flips): [N, C, H, W] -> [N, 10, C, size, size]."""
    return torch.stack(TF.ten_crop(images, size), dim=1)


def _logits(out) -> torch.Tensor:
    if isinstance(out, dict):  # FeatureClassifier
        if LOGITS not in out:
            raise ValueError(f"model returns a dict without {LOGITS!r} (keys: {', '.join(out)}); build it with "
                             f"out_features including {LOGITS!r}")
        out = out[LOGITS]
    return out


class ClassificationEvaluator(DatasetEvaluator):
    """Top-1 / top-5 (percent), mean cross-entropy and count over (images, targets) batches, summed over ranks.

    images [N, 3, H, W], or [N, n_crops, 3, h, w]: the crops' logits are averaged (the paper's 10-crop testing);
    ten_crop_size=224 cuts the 10 crops here from [N, 3, H, W] batches. evaluate() -> {"top1", "top5", "loss",
    "count"} on every rank; ValueError when no sample was seen.
    """

    def __init__(self, *, ten_crop_size: Optional[Union[int, Tuple[int, int]]] = None):
        self.ten_crop_size = ten_crop_size
        self.totals: Optional[torch.Tensor] = None

    def reset(self) -> None:
        self.totals = None

    def inputs(self, batch, device: torch.device) -> torch.Tensor:
        images = batch[0].to(device, non_blocking=True)
        if self.ten_crop_size is not None:
            images = ten_crop(images, self.ten_crop_size)
        return images.flatten(0, 1) if images.dim() == 5 else images

    def process(self, batch, outputs) -> None:
        logits = _logits(outputs)
        targets = torch.as_tensor(batch[1]).to(logits.device, non_blocking=True)
        crops = logits.shape[0] // max(1, targets.shape[0])
        if crops > 1:
            logits = logits.view(-1, crops, logits.shape[-1]).mean(dim=1)
        top1, top5 = correct_counts(logits, targets, (1, 5))
        sums = torch.stack([top1.double(), top5.double(), F.cross_entropy(logits, targets, reduction="sum").double(),
                            torch.tensor(float(targets.shape[0]), dtype=torch.float64, device=logits.device)])
        self.totals = sums if self.totals is None else self.totals + sums  # correct1, correct5, loss_sum, count

    def evaluate(self) -> Dict[str, float]:
        totals = self.totals if self.totals is not None else torch.zeros(4, dtype=torch.float64)
        if dist.is_available() and dist.is_initialized():
            if dist.get_backend() == "nccl":  # a rank with an empty shard still takes part, on the right device
                totals = totals.cuda()
            dist.all_reduce(totals)
        correct1, correct5, loss_sum, count = totals.tolist()
        if count == 0:
            raise ValueError("evaluate_classifier: the loader yielded no samples")
        return {"top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count, "loss": loss_sum / count,
                "count": int(count)}


def evaluate_classifier(
    model: nn.Module,
    loader: Iterable,
    device: Union[str, torch.device, None] = None,
    *,
    ten_crop_size: Optional[Union[int, Tuple[int, int]]] = None,
    autocast_dtype: Optional[torch.dtype] = None,
    channels_last: bool = False,
) -> Dict[str, float]:
    """Evaluate `model` over `loader` of (images, targets) batches: inference_on_dataset with a
    ClassificationEvaluator (see there for shapes and ten-crop).

    Returns {"top1": %, "top5": %, "loss": mean cross-entropy, "count": images}. Under torch.distributed the
    counts are summed over ranks, so every rank gets the global numbers.
    device None: the model's device. The model's train/eval mode is restored afterwards.
    """
    amp = {None: "none", torch.bfloat16: "bf16", torch.float16: "fp16"}[autocast_dtype]
    return inference_on_dataset(model, loader, ClassificationEvaluator(ten_crop_size=ten_crop_size), device=device,
                                amp=amp, channels_last=channels_last)

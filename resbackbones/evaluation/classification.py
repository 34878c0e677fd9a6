"""Top-1 / top-5 classification accuracy (percent) and mean cross-entropy over a DataLoader, optionally 10-crop."""
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import functional as TF

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


def _logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    out = model(images)
    if isinstance(out, dict):  # FeatureClassifier
        if LOGITS not in out:
            raise ValueError(f"model returns a dict without {LOGITS!r} (keys: {', '.join(out)}); build it with "
                             f"out_features including {LOGITS!r}")
        out = out[LOGITS]
    return out


def evaluate_classifier(
    model: nn.Module,
    loader: Iterable,
    device: Union[str, torch.device, None] = None,
    *,
    ten_crop_size: Optional[Union[int, Tuple[int, int]]] = None,
    autocast_dtype: Optional[torch.dtype] = None,
    channels_last: bool = False,
) -> Dict[str, float]:
    """Evaluate `model` over `loader` of (images, targets) batches.

    images [N, 3, H, W] (or [N, n_crops, 3, h, w]: the crops' logits are averaged, as the paper's 10-crop
    testing); ten_crop_size=224 cuts the 10 crops here from [N, 3, H, W] batches (e.g. resized to 256).
    Returns {"top1": %, "top5": %, "loss": mean cross-entropy, "count": images}. Under torch.distributed the
    counts are summed over ranks, so every rank gets the global numbers.
    device None: the model's device. The model's train/eval mode is restored afterwards.
    """
    if device is None:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # correct1, correct5, loss_sum, count
    try:
        with torch.inference_mode():
            for batch in loader:
                images, targets = batch[0], batch[1]
                images = images.to(device, non_blocking=True)
                targets = torch.as_tensor(targets).to(device, non_blocking=True)
                if ten_crop_size is not None:
                    images = ten_crop(images, ten_crop_size)
                crops = 1
                if images.dim() == 5:
                    crops = images.shape[1]
                    images = images.flatten(0, 1)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    logits = _logits(model, images)
                logits = logits.float()
                if crops > 1:
                    logits = logits.view(-1, crops, logits.shape[-1]).mean(dim=1)
                top1, top5 = correct_counts(logits, targets, (1, 5))
                totals += torch.stack([
                    top1.double(), top5.double(),
                    F.cross_entropy(logits, targets, reduction="sum").double(),
                    torch.tensor(float(targets.shape[0]), dtype=torch.float64, device=device),
                ])
    finally:
        model.train(was_training)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    correct1, correct5, loss_sum, count = totals.tolist()
    if count == 0:
        raise ValueError("evaluate_classifier: the loader yielded no samples")
    return {"top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count, "loss": loss_sum / count,
            "count": int(count)}

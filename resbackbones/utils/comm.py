"""DDP from torchrun's environment (RANK/WORLD_SIZE/LOCAL_RANK): NCCL on CUDA, gloo on CPU; rank-0-only helpers."""
import datetime
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device, *, timeout_s: int = 1800) -> DistInfo:
    """Join the process group torchrun describes in the environment; single process when WORLD_SIZE is unset/1."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if world_size <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_sums(values: Dict[str, float], device: torch.device) -> Dict[str, float]:
    """Sum scalar statistics (counts, summed losses, correct predictions) over all ranks; float64 keeps counts exact."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return dict(values)
    keys = sorted(values)
    reduce_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=reduce_device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return {k: float(v) for k, v in zip(keys, tensor.tolist())}


def first_rank_with(flag: bool, device: torch.device) -> Optional[int]:
    """The lowest rank whose `flag` is true (every rank gets the same answer), None when no rank's is; one all-reduce
    under DDP. Lets every rank stop together when one of them sees a problem (the others would wait in the next
    collective, e.g. backward's gradient all-reduce, until the process group times out)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return 0 if flag else None
    world = dist.get_world_size()
    reduce_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
    rank = torch.tensor([dist.get_rank() if flag else world], dtype=torch.int64, device=reduce_device)
    dist.all_reduce(rank, op=dist.ReduceOp.MIN)
    return int(rank.item()) if int(rank.item()) < world else None


def all_gather_objects(obj) -> List[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects); [obj] in a single process."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    gathered: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj, src: int = 0):
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def convert_sync_bn(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm -> SyncBatchNorm for DDP; PyTorch's SyncBatchNorm runs on GPUs only, so CPU keeps per-rank BN."""
    if device.type != "cuda":
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP and/or torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model

"""The data of a classification run: the ImageFolder splits (or the embedded synthetic set, written once to the
cache), their transforms seeded per sample, the val loader sharded over ranks."""
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch

from ..config.cls import ClsConfig
from ..data.cls_transforms import TransformedDataset, build_cls_transform
from ..data.errors import DataError
from ..data.folders import ImageFolderDataset, find_split
from ..data.synthetic_cls import default_cache_dir, write_image_folder
from ..utils import comm
from .data_loading import make_loader


def data_root(cfg: ClsConfig, *, is_main: bool) -> Path:
    """data.root, or the synthetic set of data.synthetic (rank 0 writes it once; the others wait)."""
    data = cfg.data
    if data.root is not None:
        return Path(data.root)
    syn = data.synthetic
    spec = dict(train_per_class=syn.train_per_class, val_per_class=syn.val_per_class, image_size=syn.image_size,
                seed=syn.seed)
    root = default_cache_dir(**spec)
    if is_main:
        write_image_folder(root, **spec)
    comm.barrier()
    return root


def build_split(cfg: ClsConfig, root: Path, split: str, *, limit: Optional[int], seed: int,
                train: bool) -> Tuple[ImageFolderDataset, TransformedDataset]:
    """(the images of root/split, those images transformed): `limit` images drawn with `seed` (None: all)."""
    data = cfg.data
    base = ImageFolderDataset(find_split(root, split), on_error=data.on_error)
    chosen = (None if limit is None or limit >= len(base)
              else sorted(np.random.default_rng(seed).permutation(len(base))[:limit].tolist()))
    transform = build_cls_transform(data.recipe, train=train, ten_crop=data.ten_crop and not train,
                                    crop_size=data.crop_size, resize_size=data.resize_size, scale=data.scale,
                                    pad=data.pad, flip_prob=data.flip_prob, mean=data.mean, std=data.std)
    return base, TransformedDataset(base, transform, seed=cfg.train.seed, indices=chosen)


def val_loader(cfg: ClsConfig, val_set, *, rank: int, world: int, device: torch.device):
    """This rank's strided shard of the val set (sums are all-reduced, so no sample is counted twice)."""
    shard = list(range(rank, len(val_set), world))
    batch = max(1, cfg.solver.batch_size // world) * (1 if cfg.data.ten_crop else 2)
    return make_loader(torch.utils.data.Subset(val_set, shard), batch_size=batch, workers=cfg.data.num_workers,
                       pin_memory=device.type == "cuda")


def check_same_classes(train_base: ImageFolderDataset, val_base: ImageFolderDataset) -> None:
    if train_base.classes != val_base.classes:
        raise DataError(f"train classes {train_base.source} ({len(train_base.classes)}) differ from val classes "
                        f"{val_base.source} ({len(val_base.classes)}): "
                        f"{sorted(set(train_base.classes) ^ set(val_base.classes))[:5]}")

"""Detection batches: one test loader for evaluation, eval_coco --checkpoint and predict, and aspect-ratio grouped
training batches over the endless resumable sample stream.

    loader = build_det_test_loader(val_set, batch_size=4, num_workers=2, rank=0, world=1, transform=model.transform)
    for batch in loader:              # [(image float [3, H, W] RGB 0-1, target dict), ...] of one padded shape
        outputs = model([image for image, _ in batch])

Why batches of one padded shape: torchvision's GeneralizedRCNNTransform pads a batch to its largest image, which
moves a smaller image's anchors and proposals, so on a set of mixed image sizes the detections (and the AP) would
depend on the batch size. Images that take the same padded shape see exactly the input they see alone; what is
left is the float rounding of batched kernels (about 1e-5 px on CPU convolutions), not a different input.

Decoding runs in `num_workers` processes; a DataError there (a corrupt or missing image) comes back to the main
process as the same one-line DataError, not as a worker traceback. The loader draws no number from the global torch
RNG (its iterator's worker seed comes from its own generator), so a training run that evaluates stays resumable
bit for bit.
"""
import math
from collections import OrderedDict
from pathlib import Path
from typing import (Any, Callable, Dict, Hashable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union)

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from .errors import DataError, show_path
from .images import image_to_tensor, read_image

Size = Tuple[int, int]  # (height, width) in pixels


class InferenceSampler(Sampler):
    """Indices 0..size-1 cut into `world` contiguous shards, rank `rank` walking its own in order (detectron2's
    InferenceSampler, data/samplers/distributed_sampler.py): every index on exactly one rank, no padding, so
    gathered results hold each image once; shard sizes differ by at most one."""

    def __init__(self, size: int, *, rank: int = 0, world: int = 1):
        if size < 0 or world < 1 or not 0 <= rank < world:
            raise ValueError(f"InferenceSampler: size {size}, rank {rank} of world {world}")
        self.size = size
        shard, left = divmod(size, world)
        sizes = [shard + int(r < left) for r in range(world)]
        self.begin = sum(sizes[:rank])
        self.end = self.begin + sizes[rank]

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.begin, self.end))

    def __len__(self) -> int:
        return self.end - self.begin


def padded_shape(transform, height: int, width: int) -> Size:
    """The (height, width) an image of height x width takes in the detector's batch: resized by `transform` itself
    (a GeneralizedRCNNTransform; on a "meta" tensor: shapes only, no pixels) at its test size, then padded to its
    size_divisible."""
    was_training = transform.training
    transform.eval()  # training draws a random min_size, from the global RNG a resume restores
    try:
        resized, _ = transform.resize(torch.empty(3, height, width, device="meta"))
    finally:
        transform.train(was_training)
    step = transform.size_divisible
    return tuple(int(math.ceil(s / step) * step) for s in resized.shape[-2:])


class ShapeBucketBatchSampler(Sampler):
    """Batches of up to `batch_size` indices of `sampler` sharing one key (the padded shape): each index waits in its
    key's bucket, a full bucket is yielded, the partial ones at the end in the order their keys first came.
    keys: index -> hashable, or a sequence indexed by the dataset index; a key None (size unknown) is a batch of its
    own. Deterministic: the batches depend only on the sampler's order and the keys."""

    def __init__(self, sampler: Sampler, keys: Union[Sequence[Optional[Hashable]], Callable[[int], Any]],
                 batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler, self.batch_size = sampler, int(batch_size)
        self.key = keys if callable(keys) else keys.__getitem__

    def __iter__(self) -> Iterator[List[int]]:
        buckets: "OrderedDict[Hashable, List[int]]" = OrderedDict()
        for index in self.sampler:
            key = self.key(index)
            if key is None:
                yield [index]
                continue
            bucket = buckets.setdefault(key, [])
            bucket.append(index)
            if len(bucket) == self.batch_size:
                yield buckets.pop(key)
        yield from buckets.values()

    def __len__(self) -> int:
        counts: Dict[Hashable, int] = {}
        batches = 0
        for index in self.sampler:
            key = self.key(index)
            if key is None:
                batches += 1
            else:
                counts[key] = counts.get(key, 0) + 1
        return batches + sum(math.ceil(n / self.batch_size) for n in counts.values())


class ImageRecords(Dataset):
    """Images named by records, decoded on demand (in the loader's workers) through data/images.read_image.

    records: mappings with "path" (an image file) and optionally "height", "width" (the file's size, for grouping
    without decoding) and any other keys (e.g. "image_id"), which the target carries. Item i:
    (image float32 [3, H, W] RGB in [0, 1], dict(record)); with keep_pixels, target["pixels"] is the decoded
    RGB uint8 [H, W, 3] too (predict draws on it). check_sizes: a decoded image whose size is not its record's is a
    DataError naming both (the batches were formed from the records' sizes), as data/coco.CocoDetection refuses it."""

    def __init__(self, records: Sequence[Mapping[str, Any]], *, keep_pixels: bool = False, check_sizes: bool = True):
        self.records = [dict(r) for r in records]
        missing = [i for i, r in enumerate(self.records) if "path" not in r]
        if missing:
            raise ValueError(f"image record {missing[0]} has no 'path': {self.records[missing[0]]}")
        self.keep_pixels, self.check_sizes = keep_pixels, check_sizes

    def __len__(self) -> int:
        return len(self.records)

    def image_size(self, index: int) -> Optional[Size]:
        record = self.records[index]
        height, width = record.get("height"), record.get("width")
        return (int(height), int(width)) if isinstance(height, int) and isinstance(width, int) else None

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, Dict[str, Any]]:
        target = dict(self.records[index])
        pixels = read_image(target["path"])
        expected = self.image_size(index)
        if self.check_sizes and expected is not None and tuple(pixels.shape[:2]) != expected:
            raise DataError(f"image {show_path(target['path'])} is {pixels.shape[1]}x{pixels.shape[0]} but its record "
                            f"says {expected[1]}x{expected[0]}" + (f" (image id {target['image_id']})"
                                                                   if "image_id" in target else ""))
        if self.keep_pixels:
            target["pixels"] = pixels
        return image_to_tensor(pixels), target


def image_sizes(dataset: Dataset, *, as_returned: bool = True) -> List[Optional[Size]]:
    """(height, width) of every item of `dataset`, without decoding, None where not known: dataset.image_size(i)
    where it has one (ImageRecords), a COCO dataset's json sizes (data/coco.CocoDetection: its load_image refuses a
    file of another size), through Subset too. as_returned: the size of the image the item holds, so a COCO dataset
    whose transforms may resize gives None; False: the stored image's size (what an aspect ratio is taken from)."""
    if isinstance(dataset, Subset):
        inner = image_sizes(dataset.dataset, as_returned=as_returned)
        return [inner[i] for i in dataset.indices]
    if hasattr(dataset, "image_size"):
        return [dataset.image_size(i) for i in range(len(dataset))]
    coco, ids = getattr(dataset, "coco", None), getattr(dataset, "ids", None)
    transforms = getattr(dataset, "transforms", None)
    if coco is None or ids is None or (as_returned and transforms is not None
                                       and not getattr(transforms, "identity", False)):
        return [None] * len(dataset)
    sizes = []
    for image_id in ids:
        info = coco.imgs[image_id]
        sizes.append((int(info["height"]), int(info["width"])) if "height" in info and "width" in info else None)
    return sizes


class _Failed:
    """A DataError raised in a worker, carried back as data (a worker's exception would come back as a multi-line
    "Caught DataError in DataLoader worker process 0" message)."""

    def __init__(self, error: DataError):
        self.error = error


class _CarryErrors(Dataset):
    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        try:
            return self.base[index]
        except DataError as error:
            return _Failed(error)


def _collate_list(items: List[Any]) -> List[Any]:
    return list(items)  # detectors take lists of images of different sizes


class DetTestLoader(DataLoader):
    """The DataLoader of build_det_test_loader: batches are lists of dataset items; a DataError raised while
    decoding in a worker is raised here, in the main process, as it was."""

    def __iter__(self):
        for batch in super().__iter__():
            for item in batch:
                if isinstance(item, _Failed):
                    raise item.error
            yield batch


def build_det_test_loader(dataset_or_records: Union[Dataset, Sequence[Mapping[str, Any]]], *, batch_size: int,
                          num_workers: int = 0, rank: int = 0, world: int = 1, transform=None) -> DetTestLoader:
    """This rank's batches of a detection test set, every item once over all ranks, each batch of one padded shape.

    dataset_or_records: a Dataset whose items are (image float [3, H, W], target dict) (data/coco.CocoDetection
      with build_det_transforms(train=False), a Subset of it, ImageRecords), or records for ImageRecords (dicts
      with "path", optionally "height" / "width" and keys such as "image_id" the targets carry).
    batch_size: at most this many images per batch (test.batch_size).
    num_workers: decoding processes (0: in the main process).
    rank, world: this process's share, contiguous and in order (InferenceSampler).
    transform: the detector's transform (model.transform): images share a batch when it gives them the same padded
      shape (padded_shape). None: only images of the same size share a batch (never a different input either).
      Images of unknown size run alone.
    Yields lists of up to batch_size items [(image [3, H, W], target), ...], in this rank's order within each
    shape; the batches are the same for every num_workers.
    """
    dataset = dataset_or_records if isinstance(dataset_or_records, Dataset) else ImageRecords(dataset_or_records)
    sampler = InferenceSampler(len(dataset), rank=rank, world=world)
    sizes = image_sizes(dataset)
    shapes: Dict[Size, Size] = {}  # one meta resize per distinct image size

    def key(index: int) -> Optional[Size]:
        size = sizes[index]
        if size is None or transform is None:
            return size
        if size not in shapes:
            shapes[size] = padded_shape(transform, *size)
        return shapes[size]

    keys = [key(i) if sampler.begin <= i < sampler.end else None for i in range(len(dataset))]
    return DetTestLoader(_CarryErrors(dataset), batch_sampler=ShapeBucketBatchSampler(sampler, keys, batch_size),
                         num_workers=num_workers, collate_fn=_collate_list,
                         # the iterator's worker base seed is drawn from this, not from the global RNG
                         generator=torch.Generator().manual_seed(0),
                         prefetch_factor=2 if num_workers > 0 else None, persistent_workers=False)


# -- training ----------------------------------------------------------------------------------------------------
def aspect_ratio_groups(dataset: Dataset) -> List[int]:
    """Group id per item: 0 landscape or square (width >= height), 1 portrait; 0 where the size is not known
    (detectron2's AspectRatioGroupedDataset rule). From the stored images' sizes (image_sizes, no decoding): a flip
    or a ratio-keeping resize of the training transforms leaves the group as it is."""
    return [int(size is not None and size[1] < size[0]) for size in image_sizes(dataset, as_returned=False)]


class GroupedBatchSampler(Sampler):
    """Batches of `batch_size` over a sample stream, each of one group where the stream allows, whose n-th batch
    depends only on the stream (and so on (seed, epoch, index)), never on where iteration started.

    stream: an endless engine.data_loading.ResumableSampler (items (epoch, index)) or any sampler with set_start;
    groups: group id per dataset index (aspect_ratio_groups). The stream is cut into windows of
    `window` batches (window * batch_size samples, counted from the stream's sample 0): inside a window, samples wait
    in their group's bucket and a full bucket is a batch; the samples left in partial buckets fill the window's last
    batches, in stream order. So every window gives exactly `window` batches of exactly its samples, and batch n is
    batch n % window of window n // window: a run resumed at batch n (start_batch=n) sees exactly the batches of an
    uninterrupted one (torchvision's GroupedBatchSampler buffers across the whole stream, which a resume cannot
    rebuild)."""

    def __init__(self, stream: Sampler, groups: Sequence[int], batch_size: int, *, window: int = 16,
                 start_batch: int = 0):
        if batch_size < 1 or window < 1 or start_batch < 0:
            raise ValueError(f"GroupedBatchSampler: batch_size {batch_size}, window {window}, start_batch "
                             f"{start_batch} (each >= 1, start >= 0)")
        self.stream, self.groups = stream, list(groups)
        self.batch_size, self.window, self.start_batch = int(batch_size), int(window), int(start_batch)

    def set_start(self, start_batch: int) -> None:
        self.start_batch = int(start_batch)

    def _group(self, item) -> int:
        return self.groups[item[1] if isinstance(item, tuple) else item]

    def _window_batches(self, items: List) -> List[List]:
        buckets: "OrderedDict[int, List[int]]" = OrderedDict()  # group -> positions in the window
        batches = []
        for position, item in enumerate(items):
            group = self._group(item)
            bucket = buckets.setdefault(group, [])
            bucket.append(position)
            if len(bucket) == self.batch_size:
                batches.append([items[p] for p in buckets.pop(group)])
        # the leftovers in stream order: a mixed batch here keeps the window's batch count fixed
        spare = sorted(p for bucket in buckets.values() for p in bucket)
        batches += [[items[p] for p in spare[i:i + self.batch_size]] for i in range(0, len(spare), self.batch_size)]
        return batches

    def __iter__(self) -> Iterator[List]:
        per_window = self.window * self.batch_size
        first, skip = divmod(self.start_batch, self.window)
        self.stream.set_start(first * per_window)
        items: List = []
        for item in self.stream:
            items.append(item)
            if len(items) == per_window:
                batches = self._window_batches(items)[skip:]
                items, skip = [], 0
                yield from batches
        if items:  # a finite stream's last, partial window
            yield from self._window_batches(items)[skip:]

"""The one detection test loader (issue 23 step 5, data/loaders.py): rank shards that hold every image once, in
order; batches of one padded shape, so COCO stats on a set of mixed image sizes do not depend on test.batch_size
and eval_coco --checkpoint and predict report the same detections; decoding in workers with errors in one line and
the global RNG untouched; and the grouped training batch sampler whose batches a resume rebuilds exactly."""
import json

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import Subset

from conftest import FIXTURES, random_detector_run, require_shared
from resbackbones.data.coco import CocoDetection
from resbackbones.data.det_transforms import build_det_transforms
from resbackbones.data.errors import DataError
from resbackbones.data.images import image_to_tensor, read_image
from resbackbones.data.loaders import (GroupedBatchSampler, InferenceSampler, ShapeBucketBatchSampler,
                                       aspect_ratio_groups, build_det_test_loader, padded_shape)
from resbackbones.deploy import load_detector
from resbackbones.deploy.predict import predict_images
from resbackbones.engine.data_loading import ResumableSampler
from resbackbones.evaluation.checkpoint_detections import run_checkpoint_on_coco
from resbackbones.evaluation.coco import evaluate_coco
from resbackbones.evaluation.coco_results import to_coco_results

IMAGES = FIXTURES / "coco_sample" / "images"
# 128-160 px inputs: the 6 fixture images (4 raw sizes) take 3 padded shapes, 128x160 three times
SMALL = ["model.input.min_size=[128]", "model.input.max_size=160", "model.rpn.pre_nms_top_n_test=100",
         "model.rpn.post_nms_top_n_test=50", "model.roi_heads.score_thresh=0.0", "model.roi_heads.detections_per_img=8"]
CATEGORIES = [{"id": i, "name": n} for i, n in ((1, "a"), (2, "b"), (3, "c"))]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return random_detector_run(tmp_path_factory.mktemp("run"), SMALL)


@pytest.fixture(scope="module")
def model(run):
    return load_detector(run / "last.pt").model.eval()


def _records(paths):
    records = []
    for image_id, path in enumerate(paths, start=1):
        height, width = read_image(path).shape[:2]
        records.append({"path": path, "image_id": image_id, "height": height, "width": width})
    return records


@pytest.fixture(scope="module")
def mixed_set(tmp_path_factory, model):
    """A COCO set of the 6 fixture images (mixed sizes) whose ground truth is the model's own top 4 detections of
    each image alone: its AP is high and moves with any change of boxes or scores (a random model's AP against
    real labels would be 0 whatever the batching)."""
    root = tmp_path_factory.mktemp("mixed")
    paths = sorted(IMAGES.iterdir())
    images, annotations = [], []
    for record in _records(paths):
        with torch.no_grad():
            output = model([image_to_tensor(read_image(record["path"]))])[0]
        images.append({"id": record["image_id"], "file_name": record["path"].name, "height": record["height"],
                       "width": record["width"]})
        for box, label in zip(output["boxes"][:4].tolist(), output["labels"][:4].tolist()):
            x1, y1, x2, y2 = box
            annotations.append({"id": len(annotations) + 1, "image_id": record["image_id"], "category_id": label,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    gt = root / "gt.json"
    gt.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return gt


def test_inference_sampler_shards_every_index_once_in_order():
    for size, world in ((10, 3), (2, 4), (0, 1), (7, 1), (9, 2)):
        shards = [list(InferenceSampler(size, rank=r, world=world)) for r in range(world)]
        assert [i for shard in shards for i in shard] == list(range(size))  # contiguous, in order, no padding
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
        assert [len(InferenceSampler(size, rank=r, world=world)) for r in range(world)] == list(map(len, shards))
    with pytest.raises(ValueError):
        InferenceSampler(3, rank=2, world=2)


def test_shape_buckets_hold_one_key_and_every_index_once():
    keys = ["a", "b", "a", None, "a", "b", "a", "c", "a"]
    batches = list(ShapeBucketBatchSampler(range(len(keys)), keys, 2))
    assert batches == [[0, 2], [3], [1, 5], [4, 6], [7], [8]]  # full buckets as they fill, then the partial ones
    assert len(ShapeBucketBatchSampler(range(len(keys)), keys, 2)) == len(batches)
    assert list(ShapeBucketBatchSampler(range(4), [1, 2, 1, 2], 1)) == [[0], [1], [2], [3]]


def test_loader_shards_by_rank_one_padded_shape_per_batch(model):
    paths = sorted(IMAGES.iterdir()) * 2
    records = _records(paths)
    for world in (1, 2, 3):
        ids = []
        for rank in range(world):
            for batch in build_det_test_loader(records, batch_size=4, num_workers=0, rank=rank, world=world,
                                               transform=model.transform):
                shapes = {padded_shape(model.transform, *image.shape[-2:]) for image, _ in batch}
                assert len(shapes) == 1 and 1 <= len(batch) <= 4
                ids += [target["image_id"] for _, target in batch]
        assert sorted(ids) == list(range(1, len(paths) + 1))  # every image once over the ranks
    # without a transform only equal image sizes share a batch
    for batch in build_det_test_loader(records, batch_size=4, num_workers=0, rank=0, world=1):
        assert len({tuple(image.shape) for image, _ in batch}) == 1


def test_workers_give_the_same_batches_errors_in_one_line_and_leave_the_rng(model, tmp_path):
    records = _records(sorted(IMAGES.iterdir()))

    def batches(workers):
        return [[(t["image_id"], image) for image, t in batch] for batch in
                build_det_test_loader(records, batch_size=2, num_workers=workers, rank=0, world=1,
                                      transform=model.transform)]

    state = torch.get_rng_state()
    serial, parallel = batches(0), batches(2)
    assert torch.equal(torch.get_rng_state(), state)  # a training run's evaluation must not move the RNG a resume restores
    assert [[i for i, _ in b] for b in serial] == [[i for i, _ in b] for b in parallel]
    assert all(torch.equal(a, b) for sb, pb in zip(serial, parallel) for (_, a), (_, b) in zip(sb, pb))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    wrong = tmp_path / "wrong.png"
    cv2.imwrite(str(wrong), np.zeros((30, 40, 3), np.uint8))
    for bad, expected in ((dict(records[0], path=broken), "cannot decode image"),
                          (dict(records[0], path=wrong), "is 40x30 but its record says 640x480")):
        with pytest.raises(DataError) as error:
            list(build_det_test_loader([bad], batch_size=1, num_workers=1, rank=0, world=1))
        assert expected in str(error.value) and len(str(error.value).splitlines()) == 1, str(error.value)


def test_a_coco_dataset_batches_as_its_records(model, mixed_set):
    """What DetTrainer's evaluation hands the loader: its val CocoDetection (eval transforms), cut to
    test.max_images by a Subset; its json sizes group the batches as the records' sizes do."""
    val = CocoDetection(mixed_set, IMAGES, with_masks=False, transforms=build_det_transforms(train=False))
    head = Subset(val, range(5))
    ids = [[t["image_id"] for _, t in b] for b in build_det_test_loader(head, batch_size=4, num_workers=0, rank=0,
                                                                        world=1, transform=model.transform)]
    records = [dict(path=IMAGES / val.coco.imgs[i]["file_name"], image_id=i, height=val.coco.imgs[i]["height"],
                    width=val.coco.imgs[i]["width"]) for i in val.ids[:5]]
    expected = [[t["image_id"] for _, t in b] for b in build_det_test_loader(records, batch_size=4, num_workers=0,
                                                                             rank=0, world=1,
                                                                             transform=model.transform)]
    assert ids == expected and sorted(i for b in ids for i in b) == sorted(val.ids[:5]) and max(map(len, ids)) > 1


def _stats(gt, detections):
    return evaluate_coco(gt, detections, iou_types=("bbox",))["bbox"].stats


# Same padded shape means the same input, not the same float rounding: a batched convolution accumulates in another
# order (boxes and scores move by ~1e-5 on CPU), which moved a real DSB checkpoint's AP by 5e-9. Shapes mixed in a
# batch move boxes by pixels and AP by far more than this.
SAME = 1e-6


def test_ap_is_identical_for_batch_1_2_4_and_equals_predict(run, model, mixed_set):
    found = {size: run_checkpoint_on_coco(run / "last.pt", mixed_set, IMAGES, device="cpu", amp="none",
                                          overrides=[f"test.batch_size={size}"]).detections for size in (1, 2, 4)}
    stats = {size: _stats(mixed_set, dets) for size, dets in found.items()}
    assert stats[1]["AP"] > 0.5  # a ground truth that checks something
    assert stats[2] == pytest.approx(stats[1], abs=SAME) and stats[4] == pytest.approx(stats[1], abs=SAME)
    ids = {im["file_name"]: im["id"] for im in json.loads(mixed_set.read_text())["images"]}
    outputs = list(predict_images(model, sorted(IMAGES.iterdir()), batch_size=4, device=torch.device("cpu")))
    predicted = to_coco_results([o for _, _, o in outputs], [ids[p.name] for p, _, _ in outputs], {1: 1, 2: 2, 3: 3})
    assert _stats(mixed_set, predicted) == pytest.approx(stats[4], abs=SAME)
    # the test has teeth: the same images batched without regard to their shapes give other detections
    tensors = [image_to_tensor(read_image(p)) for p in sorted(IMAGES.iterdir())[:4]]
    with torch.no_grad():
        mixed, alone = model(tensors), [model([t])[0] for t in tensors]
    assert max((m["boxes"][:4] - a["boxes"][:4]).abs().max().item() for m, a in zip(mixed, alone)) > 1.0


def _own_top_detections(detections, gt, k):
    """gt with its annotations replaced by the top k of `detections` per image (COCO results)."""
    annotations, per_image = [], {}
    for det in sorted(detections, key=lambda d: -d["score"]):
        if per_image.setdefault(det["image_id"], 0) < k:
            per_image[det["image_id"]] += 1
            x, y, w, h = det["bbox"]
            annotations.append({"id": len(annotations) + 1, "image_id": det["image_id"], "category_id":
                                det["category_id"], "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    return dict(gt, annotations=annotations)


def test_dsb_mixed_sizes_give_the_same_stats_at_batch_1_and_4(tmp_path):
    """Real microscopy of several sizes (DSB2018 val, 256x256 .. 1388x1040: 3 padded shapes at input 256 / 352),
    scored against its real nuclei and against the model's own top detections (a random model's AP on the real
    ones is near 0 whatever the batching)."""
    root = require_shared("data/dsb2018_nuclei")
    val = json.loads((root / "val.json").read_text())
    by_size = {}
    for image in val["images"]:
        by_size.setdefault((image["height"], image["width"]), []).append(image)
    picked = [group[0] for group in by_size.values()]  # one image of each of the 8 sizes
    ids = {im["id"] for im in picked}
    real = tmp_path / "val_mixed.json"
    real.write_text(json.dumps(dict(val, images=picked,
                                    annotations=[a for a in val["annotations"] if a["image_id"] in ids])))
    folder = random_detector_run(tmp_path, ["model.num_classes=1", "model.mask_head.enabled=false",
                                            "model.input.min_size=[256]",
                                            "model.input.max_size=352", "model.roi_heads.score_thresh=0.0",
                                            "model.roi_heads.detections_per_img=100"])
    state = torch.load(folder / "last.pt", weights_only=True)
    state.update(label_to_category={1: 1}, categories=[{"id": 1, "name": "nucleus"}])
    torch.save(state, folder / "last.pt")
    transform = load_detector(folder / "last.pt").model.transform
    assert len({padded_shape(transform, *(im["height"], im["width"])) for im in picked}) >= 3

    def detections(size):
        return run_checkpoint_on_coco(folder / "last.pt", real, root / "images", device="cpu", amp="none",
                                      overrides=[f"test.batch_size={size}"]).detections

    found = {size: detections(size) for size in (1, 4)}
    own = tmp_path / "own.json"
    own.write_text(json.dumps(_own_top_detections(found[1], json.loads(real.read_text()), 10)))
    for gt in (real, own):
        stats = [_stats(gt, found[size]) for size in (1, 4)]
        assert stats[1] == pytest.approx(stats[0], abs=SAME), gt.name
    assert stats[0]["AP"] > 0.5


# -- grouped training batches ------------------------------------------------------------------------------------
def _grouped(groups, start_batch, count, *, batch_size=2, window=3, seed=5):
    stream = ResumableSampler(list(range(len(groups))), seed=seed, endless=True)
    sampler = GroupedBatchSampler(stream, groups, batch_size, window=window, start_batch=start_batch)
    out = []
    for batch in sampler:
        out.append(batch)
        if len(out) == count:
            return out


def test_grouped_batches_are_one_group_and_a_resume_rebuilds_them():
    groups = [0, 1, 1, 0, 0, 1, 0, 0, 1, 0, 1]  # 11 samples: windows of 6 cross the epoch boundaries
    full = _grouped(groups, 0, 40)
    assert _grouped(groups, 0, 40) == full  # a function of (seed, epoch, index) only
    for start in (1, 3, 7, 20):
        assert _grouped(groups, start, 40 - start) == full[start:], start
    single = sum(len({groups[i] for _, i in batch}) == 1 for batch in full)
    assert single >= 30 and all(len(batch) == 2 for batch in full)
    # each window is exactly its samples of the ungrouped stream, reordered
    stream = ResumableSampler(list(range(len(groups))), seed=5, endless=True)
    items = [item for item, _ in zip(stream, range(6 * 5))]
    for w in range(5):
        assert sorted(x for b in full[3 * w:3 * w + 3] for x in b) == sorted(items[6 * w:6 * w + 6])


def test_aspect_ratio_groups_from_json_sizes(mixed_set):
    train = CocoDetection(mixed_set, IMAGES, with_masks=False, transforms=build_det_transforms(train=True))
    sizes = [(train.coco.imgs[i]["height"], train.coco.imgs[i]["width"]) for i in train.ids]
    groups = aspect_ratio_groups(train)  # training flips: the sizes as stored decide
    assert groups == [int(w < h) for h, w in sizes] and 0 < sum(groups) < 6
    assert aspect_ratio_groups(Subset(train, [1, 0])) == groups[1::-1]

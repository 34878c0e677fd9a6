"""Albumentations detection transforms keep boxes, labels and masks of every instance together and consistent."""
import numpy as np
import pytest
import torch

from conftest import FIXTURES
from resbackbones.data.coco import CocoDetection
from resbackbones.data.det_transforms import ResizeShortestEdge, build_det_transforms, collate_detection


def _mask_box(mask):
    ys, xs = np.nonzero(np.asarray(mask))
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def _scene():
    image = np.random.default_rng(0).integers(0, 255, (60, 100, 3), dtype=np.uint8)
    masks = np.zeros((2, 60, 100), np.uint8)
    masks[0, 10:30, 5:25] = 1
    masks[1, 40:58, 60:97] = 1
    boxes = np.stack([_mask_box(m) for m in masks])
    return image, {"boxes": boxes, "labels": np.array([3, 1]), "masks": masks, "image_id": 7}


def test_flip_moves_boxes_with_masks():
    image, target = _scene()
    out_image, out = build_det_transforms(train=True, flip_prob=1.0)(image, target)
    assert out_image.shape == (3, 60, 100) and out_image.dtype == torch.float32
    np.testing.assert_allclose(out_image.numpy().transpose(1, 2, 0), image[:, ::-1] / 255.0, atol=1e-6)
    np.testing.assert_allclose(out["boxes"][0].numpy(), [75, 10, 95, 30])
    for box, mask in zip(out["boxes"], out["masks"]):
        np.testing.assert_allclose(box.numpy(), _mask_box(mask), atol=1e-4)
    assert out["labels"].tolist() == [3, 1] and out["image_id"] == 7
    # eval transforms change nothing but the layout
    same_image, same = build_det_transforms(train=False)(image, target)
    np.testing.assert_allclose(same["boxes"].numpy(), target["boxes"])
    assert torch.equal(same["masks"], torch.from_numpy(target["masks"]))


@pytest.mark.parametrize("sizes,max_size,expected", [([120], 1000, (120, 200)), ([120], 150, (90, 150)),
                                                     ([30], 1000, (30, 50))])
def test_resize_shortest_edge_rule(sizes, max_size, expected):
    image, target = _scene()
    out_image, out = build_det_transforms(train=False, resize=(sizes, max_size))(image, target)
    assert tuple(out_image.shape[1:]) == expected and tuple(out["masks"].shape[1:]) == expected
    scale = expected[0] / 60
    np.testing.assert_allclose(out["boxes"].numpy(), target["boxes"] * scale, atol=1e-3)
    for box, mask in zip(out["boxes"], out["masks"]):
        np.testing.assert_allclose(box.numpy(), _mask_box(mask), atol=1.0)


def test_multiscale_draws_several_sizes():
    image, target = _scene()
    tf = build_det_transforms(train=True, flip_prob=0.5, resize=([40, 50, 60], 1000))
    heights = {tf(image, target)[0].shape[1] for _ in range(30)}
    assert heights == {40, 50, 60}
    with pytest.raises(ValueError, match="positive"):
        ResizeShortestEdge([0], 10)


def test_real_masks_stay_in_their_boxes_after_resize_and_flip():
    ds = CocoDetection(FIXTURES / "coco_sample" / "annotations.json", FIXTURES / "coco_sample" / "images",
                       transforms=build_det_transforms(train=True, flip_prob=1.0, resize=([200], 333)))
    raw = CocoDetection(FIXTURES / "coco_sample" / "annotations.json", FIXTURES / "coco_sample" / "images")
    index = ds.ids.index(128372)
    image, target = ds[index]
    _, before = raw[index]
    h, w = image.shape[1:]
    assert min(h, w) == 200 or max(h, w) == 333
    assert len(target["boxes"]) == len(before["boxes"]) == target["masks"].shape[0]
    scale = np.array([w / 640, h / 427] * 2)  # per axis: sides are rounded to whole pixels
    flipped = before["boxes"][:, [2, 1, 0, 3]] * np.array([-1, 1, -1, 1]) + np.array([640, 0, 640, 0])
    np.testing.assert_allclose(target["boxes"].numpy(), flipped * scale, atol=0.05)
    for box, mask in zip(target["boxes"].numpy(), target["masks"].numpy()):
        if mask.sum() > 4:
            mb = _mask_box(mask)
            assert np.all(mb[:2] >= box[:2] - 2) and np.all(mb[2:] <= box[2:] + 2)
    images, targets = collate_detection([ds[index], ds[0]])
    assert len(images) == len(targets) == 2

"""Model outputs -> COCO results: xyxy -> xywh, contiguous labels -> category ids, masks -> RLE. Ground-truth
targets passed through the conversion score AP 1.0 (bbox and segm) on the real COCO sample."""
from pathlib import Path

import numpy as np
import torch

from resbackbones.data.coco import CocoDetection
from resbackbones.evaluation import category_mapping, evaluate_coco, to_coco_results

SAMPLE = Path(__file__).resolve().parent / "fixtures" / "coco_sample"


def test_targets_as_outputs_score_one():
    ds = CocoDetection(SAMPLE / "annotations.json", SAMPLE / "images", with_masks=True)
    mapping = category_mapping(ds.coco.dataset["categories"])
    assert mapping[1] == 1 and mapping[80] == 90 and len(mapping) == 80
    assert mapping == {int(k): int(v) for k, v in ds.label_to_category.items()}  # same convention as the dataset
    outputs, ids = [], []
    for image_id in ds.ids:
        target = ds.raw_target(image_id)
        k = len(target["boxes"])
        outputs.append({"boxes": torch.as_tensor(target["boxes"], dtype=torch.float32),
                        "labels": torch.as_tensor(target["labels"]), "scores": torch.linspace(1.0, 0.5, k),
                        "masks": torch.as_tensor(target["masks"], dtype=torch.float32)[:, None]})
        ids.append(image_id)
    results = to_coco_results(outputs, ids, mapping)
    assert len(results) == sum(len(o["boxes"]) for o in outputs) == 35  # 36 annotations, the crowd one excluded
    first = results[0]
    box = next(o for o in outputs if len(o["boxes"]))["boxes"][0].tolist()
    assert first["bbox"] == [round(box[0], 2), round(box[1], 2), round(box[2] - box[0], 2), round(box[3] - box[1], 2)]
    assert isinstance(first["segmentation"]["counts"], str)
    stats = evaluate_coco(SAMPLE / "annotations.json", results, iou_types=("bbox", "segm"))
    assert stats["segm"].stats["AP"] == 1.0
    assert stats["bbox"].stats["AP"] == 1.0


def test_rescale_maps_outputs_back_to_the_original_size():
    masks = torch.zeros(1, 1, 50, 60)
    masks[0, 0, 10:30, 20:40] = 1.0
    out = {"boxes": torch.tensor([[20.0, 10, 40, 30]]), "labels": torch.tensor([1]), "scores": torch.tensor([0.9]),
           "masks": masks}
    (result,) = to_coco_results([out], [7], {1: 3}, rescale=[((50, 60), (100, 120))])
    assert result["bbox"] == [40.0, 20.0, 40.0, 40.0] and result["category_id"] == 3 and result["image_id"] == 7
    from pycocotools import mask as mask_util

    decoded = mask_util.decode(result["segmentation"])
    assert decoded.shape == (100, 120) and abs(int(decoded.sum()) - 1600) <= 160
    assert np.all(decoded[25:55, 45:75] == 1)

#!/usr/bin/env python
"""COCO evaluation time, bbox and segm, on a large synthetic set: ours (backend "fast") and faster-coco-eval vs
pycocotools' COCOeval, with a check that all 12 stats are identical to pycocotools'.

benchmarks/detection.py times bbox on 1,000 images; this script adds segm (RLE masks) and the 5,000-image size of
COCO val2017. The ground truth and detections come from benchmarks/coco_synthetic.py (jittered true boxes, misses,
false positives, crowd regions, all three area ranges); segm detections are the jittered boxes as quadrilateral
polygons encoded to RLE, as a model's mask output would be.

    python benchmarks/coco_eval.py [--images 5000] [--bbox-dets 35] [--segm-dets 15] [--repeats 1] [--json F]
"""
import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from coco_synthetic import synthetic_coco  # noqa: E402
from machine import describe  # noqa: E402
from resbackbones.evaluation.coco import STAT_NAMES, _run  # noqa: E402

BACKENDS = ("pycocotools", "fast", "faster_coco_eval")


def segm_results(gt, dets):
    """Detections with an RLE `segmentation` (a slightly sheared quadrilateral inside each box) and no bbox."""
    from pycocotools import mask as mask_utils

    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    out = []
    for det in dets:
        x, y, w, h = det["bbox"]
        poly = [x + 0.1 * w, y, x + w, y + 0.1 * h, x + 0.9 * w, y + h, x, y + 0.9 * h]
        height, width = sizes[det["image_id"]]
        rle = mask_utils.merge(mask_utils.frPyObjects([poly], height, width))
        rle["counts"] = rle["counts"].decode("ascii")
        out.append({"image_id": det["image_id"], "category_id": det["category_id"], "score": det["score"],
                    "segmentation": rle})
    return out


def bench(gt, dets, iou_type, repeats):
    """{backend: (median seconds, 12 stats)}; each run gets fresh copies (loadRes writes into the results)."""
    out = {}
    for backend in BACKENDS:
        runs, stats = [], None
        for _ in range(repeats):
            start = time.perf_counter()
            evaluator = _run(gt, copy.deepcopy(dets), iou_type, backend)
            runs.append(time.perf_counter() - start)
            stats = [float(v) for v in evaluator.stats[: len(STAT_NAMES)]]
        out[backend] = (statistics.median(runs), stats)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--bbox-dets", type=int, default=35, help="detections per image for bbox")
    parser.add_argument("--segm-dets", type=int, default=15, help="detections per image for segm")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", help="write the rows as json here")
    args = parser.parse_args(argv)
    rows = []
    for iou_type, per_image in (("bbox", args.bbox_dets), ("segm", args.segm_dets)):
        gt, dets = synthetic_coco(num_images=args.images, dets_per_image=per_image)
        if iou_type == "segm":
            dets = segm_results(gt, dets)
        result = bench(gt, dets, iou_type, args.repeats)
        ref_time, ref_stats = result["pycocotools"]
        for backend in ("fast", "faster_coco_eval"):
            seconds, stats = result[backend]
            differing = [n for n, a, b in zip(STAT_NAMES, stats, ref_stats) if a != b]
            rows.append({"benchmark": f"COCO {iou_type} eval, {args.images} images / {len(dets)} dets: "
                                      f"{'ours (fast)' if backend == 'fast' else 'faster-coco-eval'} vs pycocotools",
                         "ours": seconds, "reference": ref_time, "unit": "s", "speedup": ref_time / seconds,
                         "identical_12_stats": not differing, "differing": differing, "AP": stats[0]})
    print(f"machine: {describe()}")
    print(f"| {'benchmark':<84} | {'pycocotools s':>13} | {'backend s':>9} | {'speed-up':>8} | 12 stats identical |")
    print(f"|{'-' * 86}|{'-' * 15}|{'-' * 11}|{'-' * 10}|{'-' * 20}|")
    for r in rows:
        same = "yes" if r["identical_12_stats"] else "NO: " + ",".join(r["differing"])
        print(f"| {r['benchmark']:<84} | {r['reference']:>13.2f} | {r['ours']:>9.2f} | {r['speedup']:>7.2f}x | "
              f"{same:<18} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0 if all(r["identical_12_stats"] for r in rows if "ours" in r["benchmark"]) else 1


if __name__ == "__main__":
    sys.exit(main())

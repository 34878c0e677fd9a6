#!/usr/bin/env python
"""COCO evaluation (bbox / segm): the 12 COCOeval stats and a per-category AP table.

Detections file (the scripted form, fixed):
    python tools/eval_coco.py --gt GT.json --dt DETECTIONS.json --iou-type bbox segm --out stats.json
    -> stats.json = {"bbox": {"AP": .., "AP50": .., ..., "ARl": ..}, "segm": {...}} (COCOeval.stats, -1 = undefined),
       "per_category": {"bbox": {NAME: {"id", "AP", "AP50"}}, ...} (detectron2's per-category AP; AP50 beside it),
       "ap_unit": "fraction (0-1)"}
Checkpoint (runs the model first, writes its COCO results json next to --out, or to --results):
    python tools/eval_coco.py --checkpoint out/last.pt --gt GT.json --images DIR     # out/config.yaml, or --config
    (--amp none forces fp32; the default, auto, runs bf16 autocast where the hardware has it natively)

AP and AR are fractions (0-1), COCOeval's unit, on the console and in the stats json. Outputs never replace an
input (--gt, --dt, --checkpoint), an existing --results file, or an --out file that is not a stats json of this tool
(--overwrite allows the last two). Without --results the detections go to OUT_STEM.detections.json beside --out
(stats.detections.json without --out), which a rerun with the same --out replaces.

Numbers are pycocotools' COCOeval (backend "fast" computes them bit-identically, faster; --backend pycocotools
runs the reference itself). Ground truth and detections are type-checked before anything runs
(resbackbones/evaluation/coco_checks.py): ids, bbox numbers, iscrowd, polygons, area, categories, scores, RLEs.
Bad inputs print one line `error: ...` naming the file and the record, and exit with status 2.
"""
import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resbackbones.engine.outputs import OutputError, refuse_inputs, write_json_atomic  # noqa: E402
from resbackbones.evaluation.coco import BACKENDS, IOU_TYPES, CocoEvalError, evaluate_coco, format_stats, load_json  # noqa: E402
from resbackbones.evaluation.coco_checks import check_ground_truth  # noqa: E402

EXTRA_KEYS = ("per_category", "ap_unit")  # beside the iou types in the stats json


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gt", required=True, help="COCO instances json (ground truth)")
    parser.add_argument("--dt", help="COCO results json (detections) to evaluate")
    parser.add_argument("--iou-type", nargs="+", default=["bbox"], choices=IOU_TYPES, help="bbox and/or segm")
    parser.add_argument("--out", help="write the stats json here")
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    parser.add_argument("--checkpoint", help="training checkpoint (tools/train_det.py) to run instead of --dt")
    parser.add_argument("--config", help="the training config of --checkpoint; default: config.yaml beside it")
    parser.add_argument("--images", help="image folder of --gt (checkpoint form)")
    parser.add_argument("--results", help="checkpoint form: where to write the detections json")
    parser.add_argument("--device", default="auto", help="checkpoint form: cpu | cuda | auto")
    parser.add_argument("--amp", default="auto", choices=("auto", "none", "bf16", "fp16"),
                        help="checkpoint form: autocast precision; auto = bf16 where native (CPU amx_bf16 / "
                             "avx512_bf16, CUDA compute capability >= 8.0), fp16 on older GPUs, else fp32; none = fp32")
    parser.add_argument("--opts", nargs="*", default=[], help="checkpoint form: config overrides key=value")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing detections json (--results) or a non-stats --out file")
    return parser.parse_args(argv)


def results_path(args) -> Optional[Path]:
    """Checkpoint form: where the detections json goes (--results, else OUT_STEM.detections.json beside --out)."""
    if not args.checkpoint:
        return None
    out = Path(args.out or "stats.json")
    return Path(args.results) if args.results else out.with_name(f"{out.stem}.detections.json")


def check_outputs(args) -> None:
    """Before any work: no output over an input, over another detections file, or over a file that is not ours."""
    results = results_path(args)
    refuse_inputs({"--out": args.out, "--results": results},
                  {"--gt": args.gt, "--dt": args.dt, "--checkpoint": args.checkpoint})
    if args.overwrite:
        return
    if args.results and results.exists():  # the default name belongs to --out: a rerun replaces both
        raise OutputError(f"--results {results} exists (another evaluation's detections?); give another --results, "
                          f"or --overwrite to replace it")
    if args.out and Path(args.out).exists() and not _is_stats_file(Path(args.out)):
        raise OutputError(f"--out {args.out} exists and is not a stats json of tools/eval_coco.py; give another --out, "
                          f"or --overwrite to replace it")


def _is_stats_file(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict) or not set(data) & set(IOU_TYPES) or not set(data) <= {*IOU_TYPES, *EXTRA_KEYS}:
        return False
    return all(isinstance(v, dict) for k, v in data.items() if k in IOU_TYPES)


def run_checkpoint(args) -> str:
    """Load --checkpoint (load_detector: --config, else the config beside it), detect on every --gt image; returns
    the results json path."""
    import torch

    from resbackbones.config import ConfigError
    from resbackbones.data.errors import DataError
    from resbackbones.data.folders import read_image
    from resbackbones.data.images import image_to_tensor
    from resbackbones.data.resizable import check_coco_images_resizable
    from resbackbones.engine.device import autocast, resolve_amp, resolve_device
    from resbackbones.evaluation.coco_results import to_coco_results
    from resbackbones.evaluation.inference import load_detector
    from resbackbones.weights.errors import CheckpointError

    if not args.images:
        raise CocoEvalError("--checkpoint needs --images (the --gt image folder)")
    if not Path(args.checkpoint).is_file():
        raise CocoEvalError(f"checkpoint file not found: {args.checkpoint}")
    if not Path(args.images).is_dir():
        raise CocoEvalError(f"image folder not found: {args.images}")
    gt = load_json(args.gt, "ground-truth")
    check_ground_truth(gt, source=args.gt, iou_types=args.iou_type)  # before the model runs on every image
    try:
        device = resolve_device(args.device)
        amp, reason = resolve_amp(args.amp, device)
    except ValueError as error:  # unknown device, CUDA asked for on a machine without it, fp16 on CPU
        raise CocoEvalError(str(error)) from None
    try:
        loaded = load_detector(args.checkpoint, args.config, overrides=args.opts, device=device)
    except (ConfigError, CheckpointError) as error:
        raise CocoEvalError(str(error).splitlines()[0]) from None
    model, icfg = loaded.model, loaded.cfg.model.input
    try:  # a 10000x50 strip would shrink under a pixel across and fail inside interpolate, mid-run
        check_coco_images_resizable(gt.get("images", []), source=args.gt, min_size=icfg.min_size[-1],
                                    max_size=icfg.max_size)
    except DataError as error:
        raise CocoEvalError(str(error)) from None
    print(f"amp: {amp} ({reason if args.amp == 'auto' else 'set by --amp'})", flush=True)
    try:  # each label scored as the category it was trained on (by name when the ids differ)
        mapping, note = loaded.label_mapping(gt["categories"])
    except ValueError as error:
        raise CocoEvalError(str(error)) from None
    if note:
        print(f"note: {note}", flush=True)
    missing = [im for im in gt["images"] if not (Path(args.images) / str(im.get("file_name"))).is_file()]
    if missing:  # was a DataError traceback at that image, mid-run
        raise CocoEvalError(f"{len(missing)} image(s) of {args.gt} are not in --images {args.images} (first: "
                            f"{missing[0].get('file_name')}, id {missing[0].get('id')}); give the image folder of --gt")
    results = []
    started = time.perf_counter()
    with torch.no_grad(), autocast(device, amp):  # detections come out float32 either way (fp32_outputs.py)
        for image in gt["images"]:
            try:
                pixels = read_image(Path(args.images) / image["file_name"])  # RGB uint8 [H, W, 3]
            except DataError as error:  # corrupt or not an image: named, one line
                raise CocoEvalError(str(error)) from None
            output = model([image_to_tensor(pixels).to(device)])[0]
            results += to_coco_results([output], [image["id"]], mapping)
    print(f"detected {len(results)} objects on {len(gt['images'])} images in {time.perf_counter() - started:.1f} s")
    return str(write_json_atomic(results_path(args), results, indent=None))


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if bool(args.dt) == bool(args.checkpoint):
            raise CocoEvalError("give exactly one of --dt (a detections json) or --checkpoint")
        check_outputs(args)
        dt = args.dt or run_checkpoint(args)
        started = time.perf_counter()
        results = evaluate_coco(args.gt, dt, iou_types=args.iou_type, backend=args.backend)
        seconds = time.perf_counter() - started
    except (CocoEvalError, OutputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; no stats written", file=sys.stderr)
        return 130
    out = {}
    for iou_type, result in results.items():
        print(f"\n== {iou_type} ({result.backend}, {seconds:.2f} s; AP and AR as fractions 0-1) ==")
        print(format_stats(result.stats))
        print(result.table())
        out[iou_type] = result.stats
    out["per_category"] = {t: r.per_category_report() for t, r in results.items()}
    out["ap_unit"] = "fraction (0-1)"
    if args.out:
        print(f"\nwrote {write_json_atomic(args.out, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

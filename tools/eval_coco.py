#!/usr/bin/env python
"""COCO evaluation (bbox / segm): the 12 COCOeval stats and a per-category AP table.

Detections file (the scripted form, fixed):
    python tools/eval_coco.py --gt GT.json --dt DETECTIONS.json --iou-type bbox segm --out stats.json
    -> stats.json = {"bbox": {"AP": .., "AP50": .., ..., "ARl": ..}, "segm": {...}} (COCOeval.stats, -1 = undefined),
       "per_category": {"bbox": {NAME: {"id", "AP", "AP50"}}, ...} (detectron2's per-category AP; AP50 beside it),
       "ap_unit": "fraction (0-1)"}
Checkpoint (runs the model first, writes its COCO results json next to --out, or to --results):
    python tools/eval_coco.py --checkpoint out/checkpoints/last.pt --gt GT.json --images DIR
    python tools/eval_coco.py --checkpoint C --gt GT.json --images DIR model.roi_heads.score_thresh=0.01  # key=value
    python tools/eval_coco.py --checkpoint det.onnx --gt GT.json --images DIR   # an exported file (.pt, .pt2, .onnx)
    (the model, batching, mask threshold, max_dets and amp of train_det's evaluation: the checkpoint's config; --amp
    overrides its test.amp / train.amp, none forces fp32, auto runs bf16 autocast where the hardware has it natively;
    an exported file runs as exported, fp32, its own labels: overrides, --config, --amp bf16/fp16 are refused)

AP and AR are fractions (0-1), COCOeval's unit, on the console and in the stats json. Outputs never replace an
input (--gt, --dt, --checkpoint, its config, the images), an existing detections json, or an --out file that is not
a stats json of this tool (--overwrite allows the last two). Without --results the detections go to
OUT_STEM.detections.json beside --out (stats.detections.json without --out); the path is printed.

Numbers are pycocotools' COCOeval (backend "fast" computes them bit-identically, faster; --backend pycocotools
runs the reference itself). Ground truth and detections are type-checked before anything runs
(resbackbones/data/coco_format.py): ids, bbox numbers, iscrowd, polygons, area, categories, scores, RLEs.
Bad inputs print one line `error: ...` naming the file and the record, and exit with status 2.
"""
import argparse
import sys
import time

from _cli import add_amp_argument, default_argument_parser, run

from resbackbones.engine.outputs import check_eval_outputs, eval_detections_path, write_json_atomic
from resbackbones.io.output_paths import files_in
from resbackbones.evaluation.coco import (BACKENDS, DEFAULT_MAX_DETS, IOU_TYPES, CocoEvalError, evaluate_coco,
                                          format_stats)


def parse_args(argv=None):
    parser = default_argument_parser(__doc__)  # positional key=value: checkpoint form's config overrides
    parser.add_argument("--gt", required=True, help="COCO instances json (ground truth)")
    parser.add_argument("--dt", help="COCO results json (detections) to evaluate")
    parser.add_argument("--iou-type", nargs="+", default=["bbox"], choices=IOU_TYPES, help="bbox and/or segm")
    parser.add_argument("--out", help="write the stats json here")
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    parser.add_argument("--checkpoint", help="train_det checkpoint or exported file to run instead of --dt")
    parser.add_argument("--config", help="data and test settings for --checkpoint; default: the config it records")
    parser.add_argument("--images", help="image folder of --gt (checkpoint form)")
    parser.add_argument("--results", help="checkpoint form: where to write the detections json")
    parser.add_argument("--device", default="auto", help="checkpoint form: cpu | cuda | auto")
    add_amp_argument(parser, prefix="checkpoint form (default: the config's test.amp, else train.amp): ")
    parser.set_defaults(amp=None)
    parser.add_argument("--opts", nargs="*", help=argparse.SUPPRESS)  # refused in _run, naming the new syntax
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing detections json (--results) or a non-stats --out file")
    return parser.parse_intermixed_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    return run(lambda: _run(args), interrupt_hint="interrupted; no stats written")


def _run(args) -> int:
    if args.opts is not None:
        raise CocoEvalError(f"--opts is gone: give config overrides as key=value after the flags, like the other "
                            f"tools (e.g. {' '.join(args.opts) or 'model.roi_heads.score_thresh=0.01'})")
    if bool(args.dt) == bool(args.checkpoint):
        raise CocoEvalError("give exactly one of --dt (a detections json) or --checkpoint")
    detections = eval_detections_path(args.out, args.results) if args.checkpoint else None
    inputs = {"--gt": args.gt, "--dt": args.dt, **files_in(args.images, "--images")}
    if args.checkpoint:  # a training checkpoint or an exported file (.pt TorchScript, .pt2, .onnx)
        from resbackbones.deploy.run_exported import detector_files, run_on_coco

        inputs.update(detector_files(args.checkpoint, args.config))
    check_eval_outputs(args.out, inputs, detections=detections, results=args.results, overwrite=args.overwrite)
    dt, max_dets = args.dt, DEFAULT_MAX_DETS
    if args.checkpoint:
        found = run_on_coco(args.checkpoint, args.gt, args.images, config=args.config, device=args.device,
                            overrides=args.overrides, amp=args.amp, iou_types=args.iou_type)
        dt, max_dets = str(write_json_atomic(detections, found.detections, indent=None)), found.max_dets
        print(f"wrote the detections to {dt}", flush=True)
    started = time.perf_counter()
    results = evaluate_coco(args.gt, dt, iou_types=args.iou_type, backend=args.backend, max_dets=max_dets)
    seconds = time.perf_counter() - started
    out = {}
    for iou_type, result in results.items():
        print(f"\n== {iou_type} ({result.backend}, {seconds:.2f} s; AP and AR as fractions 0-1) ==")
        print(format_stats(result.stats, max_dets))
        print(result.table())
        out[iou_type] = result.stats
    out["per_category"] = {t: r.per_category_report() for t, r in results.items()}
    out["ap_unit"], out["max_dets"] = "fraction (0-1)", list(max_dets)
    if args.out:
        print(f"\nwrote {write_json_atomic(args.out, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

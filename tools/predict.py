#!/usr/bin/env python
"""Run a trained detector on images and write PNGs with boxes, masks and labels drawn.

    python tools/predict.py --checkpoint output/quickstart/checkpoints/last.pt --images IMAGE_OR_DIR --output preds/
    python tools/predict.py --checkpoint C --config configs/quickstart.yaml --images img.jpg --score-thresh 0.5
    python tools/predict.py --checkpoint C --images DIR --amp none        # force fp32 (default: bf16 where native)
    python tools/predict.py --checkpoint C --images DIR --gt DIR.json     # ground truth drawn beside predictions
    python tools/predict.py --checkpoint det.onnx --images DIR            # an exported file (.pt, .pt2, .onnx)

The model is rebuilt from the config the checkpoint records (tools/train_det.py writes it), else from --config or the
config.yaml beside it (load_detector); an exported file runs as exported (fp32; overrides / --config refused).
Each image X.ext becomes OUTPUT/X.png; an output that would replace an input image, or that two inputs would share
(a.jpg and a.png, or two folders with the same names), or an existing PNG without --overwrite, is refused before
anything runs; a failed write (full disk) stops with one line naming the PNG. --gt COCO_JSON: images of that json
(matched by file name) are drawn as [predictions | ground truth] under a legend. Images run in batches of
--batch-size (only images of the same resized shape share one: the detections equal one-by-one inference).
An image the model would resize to under 8 px across (e.g. a 10000x50 strip) is refused, naming it and its size.
Exit codes: 0 ok, 2 user error (one line on stderr), 130 interrupted.
"""
import sys
from pathlib import Path

from _cli import add_amp_argument, default_argument_parser, run

from resbackbones.deploy.predict import list_images
from resbackbones.io.output_paths import refuse_inputs, unique_targets
from resbackbones.io.outputs import OutputError, check_new_output, write_image


def parse_args(argv=None):
    parser = default_argument_parser(__doc__)
    parser.add_argument("--checkpoint", required=True, help="last.pt of train_det, or a file of export_detector")
    parser.add_argument("--config", help="training config; default: config.yaml next to the checkpoint")
    parser.add_argument("--images", "--input", dest="input", nargs="+", required=True,
                        help="image files and/or folders of images (--input: the same flag's older name)")
    parser.add_argument("--output", default="predictions", help="folder for the drawn PNGs")
    parser.add_argument("--overwrite", action="store_true", help="replace PNGs that exist in --output")
    parser.add_argument("--gt", metavar="COCO_JSON", help="draw this json's ground truth beside the predictions")
    parser.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default 4)")
    parser.add_argument("--score-thresh", type=float, default=0.5, help="draw detections scoring at least this")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    add_amp_argument(parser)
    return parser.parse_intermixed_args(argv)  # key=value overrides may come before or after flags


def main(argv=None) -> int:
    args = parse_args(argv)
    return run(lambda: _run(args), interrupt_hint="interrupted; the PNGs written so far are complete")


def _run(args) -> int:
    if not 0.0 <= args.score_thresh <= 1.0:
        raise ValueError(f"--score-thresh must be in [0, 1], got {args.score_thresh}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--output {out_dir} is a file; give a folder for the drawn PNGs")
    refuse_inputs({"--output": out_dir}, {"--gt": args.gt, "--checkpoint": args.checkpoint, "--config": args.config},
                  folders=True)
    from resbackbones.deploy import load_detector
    from resbackbones.deploy.predict import check_headers_resizable, predict_images
    from resbackbones.deploy.run_exported import is_exported, predict_exported
    from resbackbones.utils.amp import resolve_amp, resolve_device
    from resbackbones.visualize import GroundTruth, draw_detections, draw_with_ground_truth

    targets = unique_targets(list_images(args.input), out_dir, suffix=".png")
    for target in targets.values():
        check_new_output(target, "--output", overwrite=args.overwrite)
    truth = GroundTruth(args.gt) if args.gt else None
    if is_exported(args.checkpoint):  # runs as exported: overrides, --config, --amp bf16/fp16 refused in one line
        names, found = predict_exported(args.checkpoint, list(targets), config=args.config, amp=args.amp,
                                        overrides=args.overrides, device=args.device, batch_size=args.batch_size)
    else:
        device = resolve_device(args.device)
        amp, reason = resolve_amp(args.amp, device)
        print(f"amp: {amp} ({reason if args.amp == 'auto' else 'set by --amp'})", flush=True)
        loaded = load_detector(args.checkpoint, args.config, overrides=args.overrides, device=device)
        if loaded.note:
            print(loaded.note, flush=True)
        names, icfg = loaded.names, loaded.cfg.model.input
        check_headers_resizable(targets, min_size=icfg.min_size[-1], max_size=icfg.max_size)  # before decoding
        found = predict_images(loaded.model, list(targets), batch_size=args.batch_size, device=device, amp=amp)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path, image, output in found:
        drawn = truth.for_image(path, *image.shape[:2]) if truth is not None else None
        if drawn is None:
            canvas = draw_detections(image, output, names, score_thresh=args.score_thresh)
        else:
            canvas = draw_with_ground_truth(image, output, names, drawn, score_thresh=args.score_thresh)
        write_image(targets[path], canvas)  # checked: a full disk is one line naming the PNG, not a silent miss
        gt_note = "" if truth is None else f", {len(drawn[0])} ground truth" if drawn else ", not in --gt"
        print(f"{path} -> {targets[path]}: {int((output['scores'] >= args.score_thresh).sum())} detections{gt_note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

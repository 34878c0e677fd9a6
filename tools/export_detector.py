#!/usr/bin/env python
"""Export a trained detector whole (resize, backbone, FPN, RPN, heads, NMS, mask pasting) for deployment.

    python tools/export_detector.py --checkpoint output/quickstart/last.pt --format torchscript --output det.pt
    python tools/export_detector.py --checkpoint CK --format export --output det.pt2     # torch.export
    python tools/export_detector.py --checkpoint CK --format onnx --output det.onnx      # dynamo exporter, opset 18
    python tools/export_detector.py --config C --checkpoint CK --format onnx --output det.onnx --check img.jpg
    python tools/export_detector.py --checkpoint CK --quantize int8 --calib val.json --output det_int8.onnx

Each file runs without resbackbones, and with the eager model's interface through resbackbones.deploy.load:
    detector = resbackbones.deploy.load("det.onnx")    # .pt, .pt2 or .onnx (onnxruntime)
    detections = detector([image])     # image float [3, H, W] RGB in [0, 1]; boxes/labels/scores(/masks) per image
    detector.label_names[label]        # class name of a label
.pt2 and .onnx take any image height and width from 32 to 4096 pixels (one file, dynamic shapes), one image per
call. The suffix of --output must match the format (.pt, .pt2, .onnx): load() picks the reader by it.
--check IMAGE runs the eager model and the exported file on IMAGE (float32, CPU) and prints the largest differences;
exit 1 if they differ by more than 1e-3 (boxes: relative to the image size; int8: printed only, judged by AP).
--quantize int8 (ONNX only; --format defaults to onnx then): backbone + FPN convolutions in int8 (onnxruntime static
quantization, calibrated on the first --calib-images N images of --calib, a folder or a COCO json), heads fp32.
Exit codes: 0 ok, 1 check failed, 2 user error (one line on stderr), 130 interrupted.
"""
import sys
from pathlib import Path

from _cli import default_argument_parser, run

from resbackbones.deploy import FORMATS

TOLERANCE = 1e-3
SUFFIX = {"torchscript": ".pt", "export": ".pt2", "onnx": ".onnx"}


def main(argv=None) -> int:
    parser = default_argument_parser(__doc__)  # positional key=value: config overrides (e.g. model.input.*)
    parser.add_argument("--checkpoint", required=True, help="last.pt written by tools/train_det.py")
    parser.add_argument("--config", help="its training config; default: config.yaml next to the checkpoint")
    parser.add_argument("--format", choices=FORMATS, help="file format (default torchscript; onnx with --quantize)")
    parser.add_argument("--output", required=True, help="file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--check", metavar="IMAGE", help="compare the exported file with the eager model on IMAGE")
    parser.add_argument("--quantize", choices=["int8"], help="int8 backbone + FPN (ONNX, needs --calib)")
    parser.add_argument("--calib", metavar="DIR_OR_JSON", help="calibration images: a folder or a COCO json")
    parser.add_argument("--calib-images", type=int, default=32, metavar="N", help="how many (default 32)")
    args = parser.parse_intermixed_args(argv)
    return run(lambda: _run(args), interrupt_hint="interrupted; the output is written atomically (old file or none)")


def _run(args) -> int:
    from resbackbones.data.folders import read_image
    from resbackbones.data.images import image_to_tensor
    from resbackbones.deploy import load_detector
    from resbackbones.deploy.export import check_export, export_detector, export_facts
    from resbackbones.deploy.quantize import calibration_images, describe_quantized, export_int8, read_calibration_image
    from resbackbones.evaluation.inference import detector_inputs
    from resbackbones.io.output_paths import refuse_inputs
    from resbackbones.io.outputs import check_new_output

    output, args.format = Path(args.output), args.format or ("onnx" if args.quantize else "torchscript")
    if args.quantize and args.format != "onnx":
        raise ValueError(f"--quantize int8 writes ONNX only: use --format onnx, not --format {args.format}")
    if (args.calib or args.calib_images != 32) and not args.quantize:
        raise ValueError("--calib and --calib-images go with --quantize int8")
    if args.quantize and not args.calib:
        raise ValueError("--quantize int8 needs --calib DIR_OR_JSON (calibration images)")
    # never over what it reads (--overwrite or not), nor an existing file without it
    refuse_inputs({"--output": output}, {"--checkpoint": args.checkpoint, "--config": args.config,
                                         "--check": args.check, "--calib": args.calib})
    check_new_output(output, "--output", overwrite=args.overwrite)
    refuse_inputs({"--output": output}, detector_inputs(args.checkpoint, args.config))  # config.yaml beside it too
    if output.suffix.lower() != SUFFIX[args.format]:  # load() and the deployment pick the reader by the suffix
        raise ValueError(f"--output of --format {args.format} must end in {SUFFIX[args.format]}: {output}")
    calib = [read_calibration_image(p) for p in calibration_images(args.calib, args.calib_images)] \
        if args.quantize else None  # refused before the minute-long export
    image = None
    if args.check:
        image = image_to_tensor(read_image(args.check))
    loaded = load_detector(args.checkpoint, args.config, overrides=args.overrides)
    facts = export_facts(loaded)
    if calib is not None:
        export_int8(loaded.model, output, calib, label_names=loaded.names_list(), example=image, metadata=facts)
    else:
        export_detector(loaded.model, output, fmt=args.format, label_names=loaded.names_list(), example=image,
                        metadata=facts)
    kind = describe_quantized(output) if calib is not None else args.format
    print(f"wrote {output} ({kind}, {loaded.cfg.model.num_classes} classes, from {args.checkpoint})")
    if image is None:
        return 0
    diffs = check_export(loaded.model, output, args.format, image)
    scale = {"boxes": float(max(image.shape[1:]))}
    print(f"check on {args.check}: max |exported - eager| " + ", ".join(f"{k} {v:.3g}" for k, v in diffs.items()))
    bad = [k for k, v in diffs.items() if not v <= TOLERANCE * scale.get(k, 1.0)]
    if bad and calib is None:
        print(f"error: the exported model differs from the eager one in {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Export a trained detector whole (resize, backbone, FPN, RPN, heads, NMS, mask pasting) for deployment.

    python tools/export_detector.py --checkpoint output/quickstart/last.pt --format torchscript --output det.pt
    python tools/export_detector.py --checkpoint CK --format export --output det.pt2     # torch.export
    python tools/export_detector.py --checkpoint CK --format onnx --output det.onnx      # dynamo exporter, opset 18
    python tools/export_detector.py --config C --checkpoint CK --format onnx --output det.onnx --check img.jpg

Each file runs without resbackbones, and with the eager model's interface through resbackbones.deploy.load:
    detector = resbackbones.deploy.load("det.onnx")    # .pt, .pt2 or .onnx (onnxruntime)
    detections = detector([image])     # image float [3, H, W] RGB in [0, 1]; boxes/labels/scores(/masks) per image
    detector.label_names[label]        # class name of a label
.pt2 and .onnx take any image height and width from 32 to 4096 pixels (one file, dynamic shapes), one image per
call. The suffix of --output must match the format (.pt, .pt2, .onnx): load() picks the reader by it.
--check IMAGE runs the eager model and the exported file on IMAGE (float32, CPU) and prints the largest differences;
exit 1 if they differ by more than 1e-3 (boxes: relative to the image size). Exit codes: 0 ok, 1 check failed,
2 user error (one line on stderr), 130 interrupted.
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
    parser.add_argument("--format", default="torchscript", choices=FORMATS, help="file format (default torchscript)")
    parser.add_argument("--output", required=True, help="file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--check", metavar="IMAGE", help="compare the exported file with the eager model on IMAGE")
    args = parser.parse_intermixed_args(argv)
    return run(lambda: _run(args), interrupt_hint="interrupted; the output is written atomically (old file or none)")


def _run(args) -> int:
    from resbackbones.data.folders import read_image
    from resbackbones.data.images import image_to_tensor
    from resbackbones.deploy import load_detector
    from resbackbones.deploy.export import check_export, export_detector
    from resbackbones.evaluation.inference import detector_inputs
    from resbackbones.io.output_paths import refuse_inputs
    from resbackbones.io.outputs import check_new_output

    output = Path(args.output)
    # never over what it reads (--overwrite or not), nor an existing file without it
    refuse_inputs({"--output": output}, {"--checkpoint": args.checkpoint, "--config": args.config,
                                         "--check": args.check})
    check_new_output(output, "--output", overwrite=args.overwrite)
    refuse_inputs({"--output": output}, detector_inputs(args.checkpoint, args.config))  # config.yaml beside it too
    if output.suffix.lower() != SUFFIX[args.format]:  # load() and the deployment pick the reader by the suffix
        raise ValueError(f"--output of --format {args.format} must end in {SUFFIX[args.format]}: {output}")
    image = None
    if args.check:
        image = image_to_tensor(read_image(args.check))
    loaded = load_detector(args.checkpoint, args.config, overrides=args.overrides)
    facts = {"label_to_category": {str(k): v for k, v in loaded.label_to_category.items()},
             "categories": loaded.categories}
    export_detector(loaded.model, output, fmt=args.format, label_names=loaded.names_list(), example=image,
                    metadata=facts)
    print(f"wrote {output} ({args.format}, {loaded.cfg.model.num_classes} classes, from {args.checkpoint})")
    if image is None:
        return 0
    diffs = check_export(loaded.model, output, args.format, image)
    scale = {"boxes": float(max(image.shape[1:]))}
    print(f"check on {args.check}: max |exported - eager| " + ", ".join(f"{k} {v:.3g}" for k, v in diffs.items()))
    bad = [k for k, v in diffs.items() if not v <= TOLERANCE * scale.get(k, 1.0)]
    if bad:
        print(f"error: the exported model differs from the eager one in {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

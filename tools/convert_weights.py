#!/usr/bin/env python3
"""Convert a torchvision / detectron2 / CIFAR checkpoint to resbackbones weights (safetensors + metadata).

    python tools/convert_weights.py --from torchvision resnet50.pth resnet50.safetensors
    python tools/convert_weights.py --from detectron2 R-50.pkl r50_msra.safetensors --verify
    python tools/convert_weights.py --from cifar resnet20-12fca82f.th cifar_resnet20.safetensors

(--source is the older name of --from and still works.)
--verify builds the architecture (from --arch or the metadata) and loads the result strictly.
The output never replaces the input, nor an existing file unless --overwrite. Exit status 2 with a one-line reason on bad input (missing file, wrong format,
pickled code, mismatch), 130 interrupted.
"""
import sys

from _cli import default_argument_parser, run
from safetensors import SafetensorError

import resbackbones as rb
from resbackbones.io.output_paths import refuse_inputs
from resbackbones.io.outputs import check_new_output
from resbackbones.weights import CONVERTERS, WeightsError, convert


def main(argv=None) -> int:
    parser = default_argument_parser(__doc__, overrides=False)  # no config: nothing to override
    parser.add_argument("input", help="checkpoint to convert (.pth/.pt/.th torch file, or detectron2 .pkl)")
    parser.add_argument("output", help="where to write (.safetensors; any other suffix: torch file)")
    parser.add_argument("--from", "--source", dest="source", required=True, choices=sorted(CONVERTERS),
                        help="who wrote the checkpoint (--source: the same flag's older name)")
    parser.add_argument("--arch", default=None, help="registered backbone name to record (default: inferred)")
    parser.add_argument("--verify", action="store_true", help="build the arch and load the result strictly")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    return run(lambda: _convert(args), interrupt_hint="interrupted; the output is written atomically, so it is the "
                                                       "old file or none")


def _convert(args) -> int:
    refuse_inputs({"output": args.output}, {"input": args.input})  # never over the file being converted
    check_new_output(args.output, "output", overwrite=args.overwrite)  # before the conversion's work
    state, meta = convert(args.source, args.input, arch=args.arch)
    if args.verify:
        _verify(state, meta)
    try:
        rb.weights.save(state, args.output, metadata=meta.to_dict())
    except (OSError, SafetensorError) as error:  # a folder it may not write in (read-only, /proc): was a traceback
        raise WeightsError(f"cannot write {args.output}: {' '.join(str(error).split())}") from None
    print(f"wrote {args.output}: {len(state)} tensors, arch={meta.arch}, source={meta.source}, "
          f"input={meta.input_format} 0-{int(meta.pixel_scale)}, stride_in_1x1={meta.stride_in_1x1}")
    return 0


def _verify(state, meta) -> None:
    if meta.arch == "unknown":
        raise WeightsError("--verify needs the architecture: pass --arch (it could not be inferred)")
    options = {"stride_in_1x1": meta.stride_in_1x1} if meta.stride_in_1x1 is not None else {}
    model = rb.build_classifier(meta.arch, num_classes=meta.num_classes or 1000, **options)
    if meta.num_classes is None:  # backbone-only file
        model = model.backbone
        state = rb.weights.backbone_state_dict(state)
    rb.weights.load_state_dict(model, state, source="converted weights")


if __name__ == "__main__":
    sys.exit(main())

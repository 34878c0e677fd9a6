#!/usr/bin/env python
"""Run a trained detector on images and write PNGs with boxes, masks and labels drawn.

    python tools/predict.py --checkpoint output/quickstart/last.pt --images IMAGE_OR_DIR [...] --output preds/
    python tools/predict.py --checkpoint C --config configs/quickstart.yaml --images img.jpg --score-thresh 0.5
    python tools/predict.py --checkpoint C --images DIR --amp none        # force fp32 (default: bf16 where native)

The model is rebuilt from --config, or from config.yaml next to the checkpoint (written by tools/train_det.py).
Each image X.ext becomes OUTPUT/X.png; an output that would replace an input image, or that two inputs would share
(a.jpg and a.png, or two folders with the same names), is refused before anything runs.
Exit codes: 0 ok, 2 user error (one line on stderr).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from resbackbones.config import ConfigError, load_config  # noqa: E402
from resbackbones.data.errors import DataError  # noqa: E402
from resbackbones.data.folders import IMG_EXTENSIONS, read_image  # noqa: E402
from resbackbones.detection.train_config import DetTrainConfig  # noqa: E402
from resbackbones.engine.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from resbackbones.engine.device import AMP_MODES, autocast, resolve_amp  # noqa: E402
from resbackbones.engine.outputs import OutputError, unique_targets  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="last.pt written by tools/train_det.py")
    parser.add_argument("--config", help="training config; default: config.yaml next to the checkpoint")
    parser.add_argument("--images", "--input", dest="input", nargs="+", required=True,
                        help="image files and/or folders of images (--input: the same flag's older name)")
    parser.add_argument("--output", default="predictions", help="folder for the drawn PNGs")
    parser.add_argument("--score-thresh", type=float, default=0.5, help="draw detections scoring at least this")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--amp", default="auto", choices=AMP_MODES,
                        help="autocast precision: auto = bf16 where native (CPU amx_bf16 / avx512_bf16, CUDA compute "
                             "capability >= 8.0), fp16 on older GPUs, else fp32; none = fp32")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser.parse_intermixed_args(argv)  # key=value overrides may come before or after flags


def palette(index: int):
    rng = np.random.default_rng(index * 7919 + 1)
    return tuple(int(v) for v in rng.integers(60, 255, 3))


def draw(image: np.ndarray, output, names, *, score_thresh: float) -> np.ndarray:
    """image uint8 [H, W, 3] RGB + one detector output -> BGR uint8 image with masks (blended), boxes, labels."""
    canvas = cv2.cvtColor(image, cv2.COLOR_RGB2BGR).astype(np.float32)
    keep = output["scores"] >= score_thresh
    boxes, labels, scores = output["boxes"][keep], output["labels"][keep], output["scores"][keep]
    masks = output["masks"][keep][:, 0] > 0.5 if "masks" in output else None
    for k in range(len(boxes)):
        colour = np.array(palette(int(labels[k])), np.float32)
        if masks is not None:
            m = masks[k].numpy()
            canvas[m] = 0.5 * canvas[m] + 0.5 * colour
    canvas = canvas.astype(np.uint8)
    for k in range(len(boxes)):
        colour = palette(int(labels[k]))
        x1, y1, x2, y2 = (int(round(v)) for v in boxes[k].tolist())
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, 2)
        text = f"{names.get(int(labels[k]), int(labels[k]))} {float(scores[k]):.2f}"
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
        cv2.rectangle(canvas, (x1, max(0, y1 - th - 4)), (x1 + tw + 2, max(th + 4, y1)), colour, -1)
        cv2.putText(canvas, text, (x1 + 1, max(th + 1, y1 - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return canvas


def list_images(inputs):
    files = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMG_EXTENSIONS)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"input not found: {path}")
    if not files:
        raise DataError(f"no images found in {', '.join(inputs)}")
    return files


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if not 0.0 <= args.score_thresh <= 1.0:
            raise ValueError(f"--score-thresh must be in [0, 1], got {args.score_thresh}")
        checkpoint = Path(args.checkpoint)
        config = args.config or checkpoint.parent / "config.yaml"
        cfg = load_config(DetTrainConfig, config, args.overrides)
        cfg.model.backbone.weights = ""  # the checkpoint holds every weight
        out_dir = Path(args.output)
        if out_dir.exists() and not out_dir.is_dir():
            raise OutputError(f"--output {out_dir} is a file; give a folder for the drawn PNGs")
        targets = unique_targets(list_images(args.input), out_dir, suffix=".png")
        from resbackbones.detection.builder import build_detector
        from resbackbones.engine.device import resolve_device

        device = resolve_device(args.device)
        amp, reason = resolve_amp(args.amp, device)
        print(f"amp: {amp} ({reason if args.amp == 'auto' else 'set by --amp'})", flush=True)
        state = load_checkpoint(checkpoint, map_location="cpu")
        model = build_detector(cfg.model)
        missing, unexpected = model.load_state_dict(state["model"], strict=False)
        if missing or unexpected:
            raise CheckpointError(f"checkpoint {checkpoint} does not match the model of {config}: missing "
                                  f"{missing[:3]}, unexpected {unexpected[:3]}")
        model.to(device).eval()
        by_id = {int(c["id"]): c["name"] for c in state.get("categories", [])}
        names = {int(label): by_id.get(int(cat), str(cat)) for label, cat in state.get("label_to_category", {}).items()}
        out_dir.mkdir(parents=True, exist_ok=True)
        for path, target in targets.items():
            image = read_image(path)
            tensor = torch.from_numpy(image.transpose(2, 0, 1).copy()).float().div_(255).to(device)
            with torch.no_grad(), autocast(device, amp):  # boxes / scores / masks come out float32 either way
                output = {k: v.cpu() for k, v in model([tensor])[0].items()}
            cv2.imwrite(str(target), draw(image, output, names, score_thresh=args.score_thresh))
            print(f"{path} -> {target}: {int((output['scores'] >= args.score_thresh).sum())} detections")
    except (ConfigError, DataError, CheckpointError, ValueError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the PNGs written so far are complete", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Deployed-detector latency on the CPU (issue 22, item 4 in part): ms per image at one fixed size for the eager
float32 model and each exported format of the same weights (TorchScript .pt, torch.export .pt2, onnxruntime .onnx),
all through resbackbones.deploy.load's interface; median of repeats after a warm-up, formats interleaved so background
load hits them alike. The parity of each file against eager is printed beside it (largest box / score difference).

    python benchmarks/deploy.py [--checkpoint last.pt] [--size 480 640] [--repeats 5] [--threads 2] [--calib DIR]

--calib DIR_OR_JSON adds the int8 row: the .onnx with its backbone + FPN quantized (deploy/quantize.py, calibrated
on the first 32 images of DIR_OR_JSON). onnxruntime runs with --threads intra-op threads too (its default is one per
core, which a busy core makes spin-wait).

Without --checkpoint: the quickstart Mask R-CNN with random weights (latency only; detections are not meaningful).
The real-data table (AP of each format on BCCD / DSB2018 val, parity on 20 val images, the torchvision and amp=auto
rows, results/deploy.md): benchmarks/deploy_real.py.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe  # noqa: E402
from resbackbones.deploy import load, load_detector  # noqa: E402
from resbackbones.deploy.export import export_detector, write_exported  # noqa: E402


def _model(checkpoint):
    """(eager model, label names) from a checkpoint, or the quickstart detector with random weights."""
    if checkpoint:
        loaded = load_detector(checkpoint)
        return loaded.model.eval(), loaded.names_list()
    from resbackbones.config import load_config
    from resbackbones.config.det import DetTrainConfig
    from resbackbones.detection.builder import build_detector

    cfg = load_config(DetTrainConfig, Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml", [])
    torch.manual_seed(0)
    return build_detector(cfg.model).eval(), None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="last.pt of tools/train_det.py (default: random quickstart weights)")
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--calib", metavar="DIR_OR_JSON", help="calibration images: adds the int8 ONNX row")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, names = _model(args.checkpoint)
    image = torch.rand(3, *args.size, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as folder:
        files = {"torchscript": Path(folder) / "det.pt", "export": Path(folder) / "det.pt2",
                 "onnx": Path(folder) / "det.onnx"}
        start = time.perf_counter()
        export_detector(model, files["torchscript"], fmt="torchscript", label_names=names)
        write_exported(model, {"export": files["export"], "onnx": files["onnx"]}, label_names=names)
        print(f"exported in {time.perf_counter() - start:.0f} s", flush=True)
        if args.calib:
            from resbackbones.deploy.quantize import calibration_images, quantize_onnx

            files["onnx int8"] = quantize_onnx(files["onnx"], Path(folder) / "det_int8.onnx",
                                               calibration_images(args.calib, 32))
        runners = {"eager fp32": lambda images: model(images)}
        runners.update({fmt: load(path, num_threads=args.threads) for fmt, path in files.items()})
        with torch.no_grad():
            expected = model([image])[0]
            times = {name: [] for name in runners}
            for name, run in runners.items():  # warm-up (first-call allocations, onnxruntime's graph optimisation)
                run([image])
            for _ in range(args.repeats):
                for name, run in runners.items():
                    start = time.perf_counter()
                    run([image])
                    times[name].append(time.perf_counter() - start)
            got = {name: run([image])[0] for name, run in runners.items()}
    print(describe())
    print(f"{args.size[0]}x{args.size[1]} image, {args.threads} threads, median of {args.repeats}")
    print("| format | ms / image | vs eager | max box diff (px) | max score diff |")
    print("|---|---|---|---|---|")
    base = statistics.median(times["eager fp32"])
    for name in runners:
        ms = statistics.median(times[name])
        g = got[name]
        same = len(g["boxes"]) == len(expected["boxes"])
        box = f"{(g['boxes'] - expected['boxes']).abs().max():.1e}" if same and len(g["boxes"]) else "-"
        score = f"{(g['scores'] - expected['scores']).abs().max():.1e}" if same and len(g["boxes"]) else "-"
        print(f"| {name} | {ms * 1e3:.1f} | {base / ms:.2f}x | {box} | {score} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

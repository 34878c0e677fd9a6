#!/usr/bin/env python
"""Deployed detectors on real data (issue 22 item 4): one trained checkpoint per dataset (BCCD Faster R-CNN,
DSB2018 Mask R-CNN, both R50-GN-FPN from benchmarks/bf16_accuracy), exported to TorchScript .pt, torch.export .pt2,
ONNX .onnx and int8 ONNX (backbone + FPN, calibrated on TRAIN images), then per format:
  (a) parity on the first --parity-images val images (sorted by image id) against the eager fp32 model: labels equal,
      largest box difference / image size, largest score difference, smallest mask IoU (binarised at 0.5) over
      matched detections (index-matched when the labels are equal in order and the boxes within 1e-3 of the image
      size, as tests/test_deploy_formats.py; otherwise greedily by box IoU >= 0.5 with the same label, int8's case,
      and the matched share is reported);
  (b) COCO AP on the val set through tools/eval_coco.py's code path (deploy.run_exported.run_on_coco + evaluate_coco);
  (c) ms per image, median of --repeats after a warm-up, rows interleaved, at the size of the first val image.

    OMP_NUM_THREADS=1 python benchmarks/deploy_real.py [--work /tmp/deploy_real] [--threads 1] [--only bccd]

Exports and per-format AP results are cached in --work (reused when present: exports take minutes). Writes
benchmarks/results/deploy.md and deploy.csv (--out). Needs ../shared/data (BCCD, DSB2018) and the two checkpoints.
"""
import argparse
import csv
import datetime
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe  # noqa: E402

RUNS = ROOT / "benchmarks" / "bf16_accuracy" / "runs"
DATA = ROOT.parent / "shared" / "data"
DATASETS = {
    "bccd": dict(title="BCCD val, Faster R-CNN R50-GN-FPN", run=RUNS / "bccd_scratch_gn_it300" / "fp32_s0",
                 folder=DATA / "bccd", iou_types=["bbox"]),
    "dsb2018": dict(title="DSB2018 val, Mask R-CNN R50-GN-FPN", run=RUNS / "dsb2018_scratch_gn_it300" / "fp32_s0",
                    folder=DATA / "dsb2018_nuclei", iou_types=["bbox", "segm"]),
}
FORMATS = {"TorchScript .pt": (".pt", ["--format", "torchscript"]), ".pt2": (".pt2", ["--format", "export"]),
           "onnxruntime fp32": (".onnx", ["--format", "onnx"]),
           "onnxruntime int8": ("_int8.onnx", ["--quantize", "int8", "--calib-images", "32"])}
FP32 = ["TorchScript .pt", ".pt2", "onnxruntime fp32"]


def export_all(name, spec, work):
    """{format: file} in `work`, exporting with tools/export_detector.py what is not there yet."""
    files = {}
    ckpt = spec["run"] / "checkpoints" / "last.pt"
    for fmt, (suffix, flags) in FORMATS.items():
        path = work / f"{name}{suffix}"
        if not path.is_file():
            calib = ["--calib", str(spec["folder"] / "train.json")] if "--quantize" in flags else []
            started = time.perf_counter()
            subprocess.run([sys.executable, str(ROOT / "tools" / "export_detector.py"), "--checkpoint", str(ckpt),
                            "--output", str(path), *flags, *calib], check=True)
            print(f"exported {path} in {time.perf_counter() - started:.0f} s", flush=True)
        files[fmt] = path
    return files


def box_iou(a, b):
    from torchvision.ops import box_iou as iou
    return iou(a, b) if len(a) and len(b) else torch.zeros(len(a), len(b))


def match(e, g, size):
    """([(i, j)] pairs of eager detection i and exported detection j, labels equal in order): index pairs when the
    labels are equal and every box within 1e-3 of the image size, else greedy by box IoU (docstring above)."""
    same = len(e["labels"]) == len(g["labels"]) and torch.equal(e["labels"], g["labels"])
    if same and (not len(e["labels"]) or (e["boxes"] - g["boxes"]).abs().max() <= 1e-3 * size):
        return [(i, i) for i in range(len(e["labels"]))], True
    ious, pairs, used = box_iou(e["boxes"], g["boxes"]), [], set()
    for i in range(len(e["labels"])):
        best, best_j = 0.5, None
        for j in range(len(g["labels"])):
            if j not in used and g["labels"][j] == e["labels"][i] and ious[i, j] >= best:
                best, best_j = float(ious[i, j]), j
        if best_j is not None:
            used.add(best_j)
            pairs.append((i, best_j))
    return pairs, same


def parity(expected, got, images):
    """Parity numbers of one format over the images: {"labels_equal", "box", "score", "mask_iou", "matched"}."""
    out = dict(labels_equal=True, box=0.0, score=0.0, mask_iou=1.0, matched=0, total=0, masks_below=0, reordered=0)
    for image, e, g in zip(images, expected, got):
        size = float(max(image.shape[1:]))
        pairs, same = match(e, g, size)
        out["labels_equal"] &= same
        out["reordered"] += any(i != j for i, j in pairs)  # near-tied scores swapped: matched by IoU instead
        out["matched"] += len(pairs)
        out["total"] += max(len(e["labels"]), len(g["labels"]))
        if not pairs:
            continue
        i, j = (torch.tensor(x) for x in zip(*pairs))
        out["box"] = max(out["box"], float((e["boxes"][i] - g["boxes"][j]).abs().max()) / size)
        out["score"] = max(out["score"], float((e["scores"][i] - g["scores"][j]).abs().max()))
        if "masks" in e:
            a, b = e["masks"][i, 0] > 0.5, g["masks"][j, 0] > 0.5
            inter, union = (a & b).flatten(1).sum(1).double(), (a | b).flatten(1).sum(1).double()
            iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))
            out["mask_iou"] = min(out["mask_iou"], float(iou.min()))
            out["masks_below"] += int((iou < 0.99).sum())
    if "masks" not in expected[0]:
        out["mask_iou"] = None
    return out


def coco_ap(path, spec, cache):
    """{iou_type: AP (fraction)} of a checkpoint or exported file on the full val set (eval_coco's code path)."""
    if cache.is_file():
        return json.loads(cache.read_text())
    from resbackbones.deploy.run_exported import run_on_coco
    from resbackbones.evaluation.coco import evaluate_coco

    gt, started = spec["folder"] / "val.json", time.perf_counter()
    found = run_on_coco(path, gt, spec["folder"] / "images", device="cpu", iou_types=spec["iou_types"])
    results = evaluate_coco(gt, found.detections, iou_types=spec["iou_types"], max_dets=found.max_dets)
    torch.set_num_threads(1)  # a checkpoint's config may set the thread count: keep it at --threads (1)
    ap = {t: float(r.stats["AP"]) for t, r in results.items()}
    ap["seconds"], ap["max_dets"] = time.perf_counter() - started, list(found.max_dets)
    cache.write_text(json.dumps(ap))
    return ap


def val_images(spec, n):
    from resbackbones.data.folders import read_image
    from resbackbones.data.images import image_to_tensor

    gt = json.loads((spec["folder"] / "val.json").read_text())
    records = sorted(gt["images"], key=lambda im: im["id"])[:n]
    return [image_to_tensor(read_image(spec["folder"] / "images" / r["file_name"])) for r in records]


def latency(runners, image, repeats):
    """{row: median ms} of each runner on [image], warm-up first, rows interleaved."""
    times = {name: [] for name in runners}
    with torch.no_grad():
        for run in runners.values():
            run([image])
        for _ in range(repeats):
            for name, run in runners.items():
                started = time.perf_counter()
                run([image])
                times[name].append(time.perf_counter() - started)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def measure(name, spec, args):
    from resbackbones.deploy import load, load_detector
    from resbackbones.utils.amp import autocast, resolve_amp

    work = args.work
    files = export_all(name, spec, work)
    torch.set_num_threads(args.threads)
    loaded = load_detector(spec["run"] / "checkpoints" / "last.pt")
    model = loaded.model.eval()
    torch.set_num_threads(args.threads)
    detectors = {fmt: load(path, num_threads=args.threads) for fmt, path in files.items()}
    images = val_images(spec, args.parity_images)
    with torch.no_grad():
        expected = [model([im])[0] for im in images]
        checks = {fmt: parity(expected, [d([im])[0] for im in images], images) for fmt, d in detectors.items()}
    print(f"{name} parity: {json.dumps(checks)}", flush=True)
    aps = {"ours eager fp32": coco_ap(spec["run"] / "checkpoints" / "last.pt", spec, work / f"{name}_ap_eager.json")}
    for fmt, path in files.items():
        aps[fmt] = coco_ap(path, spec, work / f"{name}_ap_{path.name}.json")
    print(f"{name} AP: {json.dumps(aps)}", flush=True)
    cpu = torch.device("cpu")
    amp_mode, amp_reason = resolve_amp("auto", cpu)

    def amp_run(batch):
        with autocast(cpu, amp_mode):
            return model(batch)
    runners = {}
    reference, ref_note = torchvision_reference(loaded, images[0])
    if reference is not None:
        runners["torchvision eager fp32"] = reference
    runners.update({"ours eager fp32": model, "ours amp=auto": amp_run})
    runners.update(detectors)
    ms = latency(runners, images[0], args.repeats)
    return dict(parity=checks, ap=aps, ms=ms, amp=(amp_mode, amp_reason), ref_note=ref_note,
                size=tuple(images[0].shape[1:]))


def torchvision_reference(loaded, image):
    """(runner, note): torchvision's own parts with this checkpoint's weights (torchvision resnet50 with GroupNorm(32)
    through IntermediateLayerGetter, torchvision's FeaturePyramidNetwork with GroupNorm, GeneralizedRCNNTransform;
    the RPN and RoI heads are torchvision's modules in our model already), when its detections on `image` match
    the eager model's (labels equal, boxes / scores within 1e-3); else (None, why)."""
    import copy
    from functools import partial

    from torchvision.models import resnet50
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.detection.transform import GeneralizedRCNNTransform
    from torchvision.ops import FeaturePyramidNetwork
    from resbackbones.weights.convert_torchvision import _rename

    model = loaded.model.eval()
    try:
        gn = partial(torch.nn.GroupNorm, 32)
        body = resnet50(weights=None, norm_layer=gn)
        ours = model.backbone.body.state_dict()
        body.load_state_dict({k: ours[_rename(k)[len("backbone."):]] for k in body.state_dict() if not k.startswith("fc.")},
                             strict=False)
        names = model.roi_heads.box_roi_pool.featmap_names
        getter = IntermediateLayerGetter(body, dict(zip(["layer1", "layer2", "layer3", "layer4"], names)))
        channels = model.backbone.out_channels
        fpn = FeaturePyramidNetwork([256, 512, 1024, 2048], channels, norm_layer=gn)
        fpn.load_state_dict(model.backbone.fpn.state_dict())

        class Backbone(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.body, self.fpn, self.out_channels = getter, fpn, channels

            def forward(self, x):
                return self.fpn(self.body(x))
        tv = copy.deepcopy(model)
        tv.backbone = Backbone()
        t = model.transform
        tv.transform = GeneralizedRCNNTransform(t.min_size, t.max_size, t.image_mean, t.image_std,
                                                size_divisible=t.size_divisible)
        tv.eval()
        with torch.no_grad():
            e, g = model([image])[0], tv([image])[0]
        size = float(max(image.shape[1:]))
        same = torch.equal(e["labels"], g["labels"]) and (e["boxes"] - g["boxes"]).abs().max() <= 1e-3 * size \
            and (e["scores"] - g["scores"]).abs().max() <= 1e-3
    except Exception as error:  # noqa: BLE001 - a reference we cannot build is reported, not fatal
        return None, f"not built ({type(error).__name__}: {str(error).splitlines()[0][:120]})"
    if not same:
        return None, "torchvision's parts with these weights do not reproduce the eager detections: no row"
    return tv, ("torchvision's own resnet50 (GroupNorm 32) + FeaturePyramidNetwork (GroupNorm) + "
                "GeneralizedRCNNTransform with the same weights, RPN / RoI heads torchvision's; detections equal "
                "ours on the first val image to 1e-3")


def write(results, args):
    header = ["dataset", "row", "ms_per_image", "vs_torchvision", "ap_bbox", "ap_segm", "labels_equal",
              "max_box_diff_rel", "max_score_diff", "min_mask_iou", "masks_below_0.99", "matched", "detections",
              "images_reordered"]
    rows, lines = [], []
    measured = getattr(args, "measured", None)  # --from-results: when results.json was written
    date = (measured or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    import onnxruntime
    lines += ["# Deployed detectors on real data (issue 22 item 4)", "",
              f"- date: {date}; machine: {describe().splitlines()[0]}",
              f"- torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; {args.threads} thread "
              f"(torch and onnxruntime intra-op); {args.note}",
              "- command: OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/deploy_real.py", ""]
    for name, r in results.items():
        spec = DATASETS[name]
        ref = r["ms"].get("torchvision eager fp32")
        lines += [f"## {spec['title']}", "",
                  f"ms per image: median of {args.repeats} at {r['size'][0]}x{r['size'][1]} (the first val image), "
                  f"rows interleaved. amp=auto resolves to `{r['amp'][0]}` here ({r['amp'][1]}). "
                  f"torchvision reference: {r['ref_note']}. AP: full val set through eval_coco's code path "
                  f"(percent). Parity: first {args.parity_images} val images (sorted by id) against ours eager fp32; "
                  f"detections paired in order, or by box IoU >= 0.5 and the same label where near-tied scores "
                  f"came out in another order (images reordered) or the detections differ (int8); box and score "
                  f"differences and mask IoU (masks binarised at 0.5) over the pairs.",
                  "", "| format | ms / image | vs torchvision eager | AP bbox | AP segm | labels equal | "
                  "max box diff / image size | max score diff | min mask IoU (masks < 0.99) | matched (images "
                  "reordered) |", "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
        order = ["torchvision eager fp32", "ours eager fp32", "ours amp=auto", *FORMATS]
        for row in order:
            if row not in r["ms"]:
                continue
            same = row == "ours amp=auto" and r["amp"][0] == "none"  # auto is fp32 here: the eager model's AP
            ms, ap, p = r["ms"][row], r["ap"].get("ours eager fp32" if same else row), r["parity"].get(row)
            ratio = ref / ms if ref else None
            bbox, segm = (ap or {}).get("bbox"), (ap or {}).get("segm")
            cells = [row, f"{ms:.1f}", f"{ratio:.2f}x" if ratio else "–",
                     f"{100 * bbox:.2f}" if bbox is not None else "–", f"{100 * segm:.2f}" if segm is not None else "–"]
            if p:
                cells += ["yes" if p["labels_equal"] else "no", f"{p['box']:.1e}", f"{p['score']:.1e}",
                          f"{p['mask_iou']:.3f} ({p['masks_below']})" if p["mask_iou"] is not None else "–",
                          f"{p['matched']}/{p['total']} ({p['reordered']})"]
            else:
                cells += ["(reference)" if row == "ours eager fp32" else "–"] + ["–"] * 4
            lines.append("| " + " | ".join(cells) + " |")
            rows.append([name, row, f"{ms:.2f}", f"{ratio:.3f}" if ratio else "", bbox if bbox is not None else "",
                         segm if segm is not None else "", p["labels_equal"] if p else "", p["box"] if p else "",
                         p["score"] if p else "", p["mask_iou"] if p and p["mask_iou"] is not None else "",
                         p["masks_below"] if p and p["mask_iou"] is not None else "", p["matched"] if p else "",
                         p["total"] if p else "", p["reordered"] if p else ""])
        int8, amp = r["ms"]["onnxruntime int8"], r["ms"]["ours amp=auto"]
        lines += ["", f"int8 vs ours amp=auto: {amp / int8:.2f}x ({'faster' if int8 < amp else 'NOT faster'}; "
                  f"this CPU has AVX2 only, no VNNI / AMX). int8 AP - eager fp32 AP: " + ", ".join(
                      f"{t} {100 * (r['ap']['onnxruntime int8'][t] - r['ap']['ours eager fp32'][t]):+.2f} points"
                      for t in spec["iou_types"]) + ".", ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "deploy.md").write_text("\n".join(lines))
    with open(args.out / "deploy.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    print("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/deploy_real"), help="exports and AP cache")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--parity-images", type=int, default=20)
    parser.add_argument("--only", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--note", default="nothing else ran on the machine",
                        help="what else ran during the measurement (a line of the table's header)")
    parser.add_argument("--from-results", action="store_true",
                        help="write the tables again from WORK/results.json (the last run) without measuring")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.from_results:
        saved = args.work / "results.json"
        args.measured = datetime.datetime.fromtimestamp(saved.stat().st_mtime, datetime.timezone.utc)
        write(json.loads(saved.read_text()), args)
        return 0
    torch.set_num_threads(args.threads)
    results = {name: measure(name, DATASETS[name], args) for name in args.only}
    (args.work / "results.json").write_text(json.dumps(results, default=str))
    write(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Seconds per training step of the study's pretraining nets and detector fine-tunes, for the budget table.

    OMP_NUM_THREADS=1 python projects/transfer/measure_costs.py cls --archs resnet50 resnet101 vgg16 --px 48
    OMP_NUM_THREADS=1 python projects/transfer/measure_costs.py det --init pretrained \
        --configs projects/transfer/configs/bccd_resnet50.yaml projects/transfer/configs/dsb_resnet50.yaml

cls: the classifier of configs/pretrain_<arch>.yaml (its options, channels_last, amp)
  on random images of px x px, batch --batch, SGD step under train.amp (bf16 where native); data loading is not
  counted (CIFAR JPEG decoding at 32-48 px is small beside the network).
det: tools/train_det.py's own DetTrainer.run_step on real images of the config's train set (--limit of them),
  with run.sh's backbone settings for --init and any --overrides appended.
The first --warmup steps are not timed (allocator and oneDNN kernel selection). Prints one CSV row per net:
  what,name,threads,load_1min,steps,s_per_step,images_per_step,s_per_image,amp,infer_s_per_image
(infer_s_per_image: cls only, forward passes in eval mode as for the final top-1; det: nan, the runs' eval.json
has eval_seconds)
load_1min is the machine's load average when timing started: on a shared CPU the seconds are that hour's.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CONFIGS = HERE / "configs"


def _timed(step, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def measure_cls(arch: str, px: int, batch: int, steps: int, warmup: int):
    import resbackbones as rb
    from resbackbones.config import load_config
    from resbackbones.config.cls import ClsConfig
    from resbackbones.utils.amp import autocast, resolve_amp

    cfg = load_config(ClsConfig, str(CONFIGS / f"pretrain_{arch}.yaml"), [])
    device = torch.device("cpu")
    amp, _ = resolve_amp(cfg.train.amp, device)
    model = rb.build_classifier(arch, num_classes=10, **cfg.model.backbone.options)
    if cfg.model.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    images = torch.randn(batch, 3, px, px).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,))

    def step():
        with autocast(device, amp):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    train_seconds = _timed(step, steps, warmup)
    model.eval()

    def infer():  # the final top-1 over the 10,000 test images: forward passes only
        with torch.no_grad(), autocast(device, amp):
            model(images)

    return train_seconds, batch, amp, _timed(infer, steps, warmup) / batch


def init_overrides(config: str, init: str, folder: Path):
    """run.sh's backbone settings for `init`; "pretrained" starts from a stand-in export (random BN-trained weights
    of the same arch: the step costs the same whatever the values)."""
    if init == "scratch":
        return ["model.backbone.weights=''", "model.backbone.norm=GN", "model.backbone.freeze_at=0"]
    import resbackbones as rb
    from resbackbones.config import load_config
    from resbackbones.config.det import DetTrainConfig

    name = load_config(DetTrainConfig, config, []).model.backbone.name
    norm = "none" if name.startswith("vgg") and not name.endswith("_bn") else "FrozenBN"  # as run.sh
    stand_in = folder / f"{name}_stand_in.safetensors"
    rb.weights.save(rb.build_backbone(name, norm="none" if norm == "none" else "BN"), stand_in)
    return [f"model.backbone.weights={stand_in}", f"model.backbone.norm={norm}", "model.backbone.freeze_at=2"]


def measure_det(config: str, init: str, overrides, limit: int, steps: int, warmup: int):
    from resbackbones.config import load_config
    from resbackbones.config.det import DetTrainConfig
    from resbackbones.engine.det_trainer import DetTrainer

    # A throwaway folder: the trainer writes its config.yaml there, the stand-in export goes there too.
    scratch = Path(tempfile.mkdtemp(prefix="transfer_measure_"))
    cfg = load_config(DetTrainConfig, config, [f"data.train.limit={limit}", f"train.output_dir={scratch}",
                                               "train.num_threads=0"] + init_overrides(config, init, scratch)
                      + list(overrides))
    trainer = DetTrainer(cfg)
    trainer.model.train()
    data = trainer.data_iter()

    def step():
        trainer.run_step(next(data))

    seconds = _timed(step, steps, warmup)
    shutil.rmtree(scratch, ignore_errors=True)  # the stand-in export is ~100-500 MB
    return seconds, cfg.solver.batch_size, trainer.amp, float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    cls = sub.add_parser("cls", help="pretraining step of each arch")
    cls.add_argument("--archs", nargs="+", default=["resnet50", "resnet101", "vgg16"])
    cls.add_argument("--px", type=int, default=48)
    cls.add_argument("--batch", type=int, default=128)
    det = sub.add_parser("det", help="fine-tune step of each detection config")
    det.add_argument("--configs", nargs="+", required=True)
    det.add_argument("--limit", type=int, default=8, help="train images read (cached) for the timing")
    det.add_argument("--overrides", nargs="*", default=[], help="key=value for every config")
    det.add_argument("--init", choices=["scratch", "pretrained"], default="scratch",
                     help="run.sh's backbone settings: GN from random weights, or FrozenBN (VGG: none) from an export")
    for p in (cls, det):
        p.add_argument("--steps", type=int, default=3)
        p.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    print("what,name,threads,load_1min,steps,s_per_step,images_per_step,s_per_image,amp,infer_s_per_image", flush=True)
    names = args.archs if args.what == "cls" else args.configs
    for name in names:
        load = os.getloadavg()[0]
        if args.what == "cls":
            seconds, images, amp, infer = measure_cls(name, args.px, args.batch, args.steps, args.warmup)
            label = f"{name}@{args.px}px"
        else:
            if not Path(name).is_file():
                print(f"error: detection config {name} not found", file=sys.stderr)
                return 2
            seconds, images, amp, infer = measure_det(name, args.init, args.overrides, args.limit, args.steps,
                                                      args.warmup)
            label = f"{Path(name).stem}[{args.init}]"
        print(f"{args.what},{label},{threads},{load:.1f},{args.steps},{seconds:.3f},{images},{seconds / images:.4f},"
              f"{amp},{infer:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Which ops of a study detector's training step run on bf16 tensors under bf16 autocast? One forward (train mode,
real val images) under autocast with the products emulated (emulated_bf16.py); every aten op is counted by the
dtype of its floating outputs, grouped by the module that called it.

    python benchmarks/bf16_accuracy/dtype_census.py [--config benchmarks/bf16_accuracy/dsb2018.yaml]
"""
import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from emulated_bf16 import EmulatedBF16  # noqa: E402
from resbackbones.config import load_yaml_with_bases  # noqa: E402
from resbackbones.detection.builder import build_detector  # noqa: E402

WHERE = []  # the module path being run (forward pre/post hooks)


class Census(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (list, tuple)) else [out]
        dtypes = {o.dtype for o in outs if isinstance(o, torch.Tensor) and o.is_floating_point()}
        if dtypes:
            where = ".".join(WHERE[-1].split(".")[:3]) if WHERE else "(top)"
            name = func.overloadpacket.__name__
            for d in dtypes:
                self.counts[(where, name, str(d).replace("torch.", ""))] += 1
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(HERE / "bccd.yaml"))
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = load_yaml_with_bases(args.config)
    model = build_detector(cfg["model"]).train()
    for name, mod in model.named_modules():
        if name:
            mod.register_forward_pre_hook(lambda m, a, n=name: WHERE.append(n))
            mod.register_forward_hook(lambda m, a, o: WHERE.pop() and None)
    val = cfg["data"]["val"]
    ann = json.loads(Path(val["ann_file"]).read_text())
    ims, targets = [], []
    for im in ann["images"][:2]:
        ims.append(torch.from_numpy(np.array(Image.open(Path(val["image_root"]) / im["file_name"]).convert("RGB")))
                   .permute(2, 0, 1).float() / 255)
        anns = [a for a in ann["annotations"] if a["image_id"] == im["id"]]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], dtype=torch.float32)
        t = {"boxes": boxes, "labels": torch.tensor([a["category_id"] for a in anns])}
        if cfg["model"].get("mask_head", {}).get("enabled"):
            h, w = ims[-1].shape[1:]
            t["masks"] = torch.zeros(len(anns), h, w, dtype=torch.uint8)  # dtype census only: boxes as masks
            for k, b in enumerate(boxes.round().long()):
                t["masks"][k, b[1]:b[3], b[0]:b[2]] = 1
        targets.append(t)
    census = Census()
    with EmulatedBF16(), torch.autocast("cpu", dtype=torch.bfloat16), census:
        losses = model(ims, targets)
    print("losses:", {k: str(v.dtype) for k, v in losses.items()})
    by_where = collections.defaultdict(dict)
    for (where, name, dtype), n in sorted(census.counts.items()):
        by_where[where].setdefault(dtype, collections.Counter())[name] += n
    for where, d in by_where.items():
        line = "; ".join(f"{dt}: " + ", ".join(f"{k} x{v}" for k, v in c.most_common()) for dt, c in sorted(d.items()))
        print(f"{where}: {line}")


if __name__ == "__main__":
    main()

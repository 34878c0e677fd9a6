"""Check that emulated_bf16.py gives the numbers of native bf16 autocast on a study detector: one training forward +
backward of the same weights on the same synthetic batch (same RNG seed, so the same sampled anchors) in fp32,
native bf16 and emulated bf16; prints the losses, the relative gradient differences and the time of each.
Read the RPN losses (the same sampled anchors in all three): at random init the proposals' order, hence the sampled
RoIs and the RoI-head losses and gradients, changes with any rounding (bf16 vs fp32 differ as much as bf16emu vs
bf16), so the whole-model gradient difference says little; forward_error.py compares features and gradients without
sampling, and the op-level check (a conv + GN + linear chain) gives bit-identical bf16 outputs.

    python benchmarks/bf16_accuracy/check_emulation.py [benchmarks/bf16_accuracy/bccd.yaml]
"""
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from emulated_bf16 import EmulatedBF16  # noqa: E402
from resbackbones.config import load_yaml_with_bases  # noqa: E402
from resbackbones.detection.builder import build_detector  # noqa: E402


def main() -> None:
    config = sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parent / "bccd.yaml")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_detector(load_yaml_with_bases(config)["model"]).train()
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 160, 213, generator=g) for _ in range(2)]
    targets = []
    for _ in images:
        xy = torch.rand(6, 2, generator=g) * torch.tensor([180.0, 130.0])
        wh = 10 + torch.rand(6, 2, generator=g) * 30
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(1, 3, (6,), generator=g)})
    results = {}
    for name in ("fp32", "bf16", "bf16emu"):
        m = copy.deepcopy(model)
        torch.manual_seed(2)
        start = time.perf_counter()
        with EmulatedBF16() if name == "bf16emu" else torch.autocast("cpu", enabled=False):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name != "fp32"):
                losses = m(images, targets)
            loss = sum(v.float() for v in losses.values())
            loss.backward()
        seconds = time.perf_counter() - start
        grad = torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])
        results[name] = (losses, grad)
        print(f"{name:8s} {seconds:7.1f} s  " + "  ".join(f"{k}={v.item():.5f}" for k, v in losses.items()), flush=True)
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    g32, gb, ge = (results[k][1] for k in ("fp32", "bf16", "bf16emu"))
    print(f"gradient relative difference: bf16 vs fp32 {rel(gb, g32):.4f}, bf16emu vs fp32 {rel(ge, g32):.4f}, "
          f"bf16emu vs bf16 {rel(ge, gb):.4f}")


if __name__ == "__main__":
    main()

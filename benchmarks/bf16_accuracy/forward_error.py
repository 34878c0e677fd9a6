"""Where does bf16 autocast move the numbers? Backbone + FPN of a study detector on real val images, in fp32 and in
(emulated, benchmarks/bf16_accuracy/emulated_bf16.py) bf16 with one part at a time kept out of bf16; prints the
relative error of the FPN outputs and of the backbone + FPN gradients (of a fixed random projection of the
outputs: no proposal sampling, so nothing but precision differs) against fp32.

    python benchmarks/bf16_accuracy/forward_error.py [--config C] [--checkpoint RUN/checkpoints/last.pt]

Cheap (seconds, one thread): a screen for the training ablations in docs/results/bf16_accuracy/README.md, not a
substitute for them (it measures the error of one step, not what training does with it).
"""
import argparse
import contextlib
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from emulated_bf16 import EmulatedBF16  # noqa: E402
from resbackbones.config import load_yaml_with_bases  # noqa: E402
from resbackbones.detection.builder import build_detector  # noqa: E402

BF16 = torch.bfloat16


@contextlib.contextmanager
def patched(cls, name, fn):
    old = getattr(cls, name)
    setattr(cls, name, fn)
    try:
        yield
    finally:
        setattr(cls, name, old)


def gn_fp32(keep_output_fp32: bool):
    """GroupNorm computed in float32 (statistics and affine); output float32 or back in the input dtype."""
    def forward(self, x):
        with torch.autocast("cpu", enabled=False):
            y = F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps)
        return y if keep_output_fp32 else y.to(x.dtype)
    return patched(nn.GroupNorm, "forward", forward)


def fp32_module(module: nn.Module):
    """`module` run with autocast off and float32 inputs."""
    old = module.forward

    def forward(*args, **kwargs):
        def cast(v):
            if isinstance(v, torch.Tensor) and v.dtype == BF16:
                return v.float()
            if isinstance(v, dict):
                return type(v)((k, cast(t)) for k, t in v.items())
            return v
        with torch.autocast("cpu", enabled=False):
            return old(*[cast(a) for a in args], **kwargs)
    return patched(module, "forward", forward)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(HERE / "bccd.yaml"))
    p.add_argument("--checkpoint", default="", help="a train_det checkpoint (its 'model' weights); default random init")
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--only", nargs="*", default=[], help="run only the variants whose name contains one of these")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = load_yaml_with_bases(args.config)
    model = build_detector(cfg["model"]).eval()
    if args.checkpoint:
        model.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=True)["model"])
    val = cfg["data"]["val"]
    ann = json.loads(Path(val["ann_file"]).read_text())
    images = [torch.from_numpy(np.array(Image.open(Path(val["image_root"]) / im["file_name"]).convert("RGB")))
              .permute(2, 0, 1).float() / 255 for im in ann["images"][:args.images]]
    batch = model.transform(images)[0].tensors
    net = model.backbone  # body (ResNet) + FPN
    outs = net(batch)
    gen = torch.Generator().manual_seed(3)
    proj = {k: torch.randn(v.shape, generator=gen) for k, v in outs.items()}

    def run(ctx_factory, control=False):
        m = copy.deepcopy(net)
        with ctx_factory(m):
            with torch.autocast("cpu", dtype=BF16, enabled=ctx_factory is not fp32_ctx and not control):
                out = m(batch)
            loss = sum((out[k].float() * proj[k]).sum() for k in out)
            loss.backward()
        grads = {}
        for name, q in m.named_parameters():
            if q.grad is not None:
                grads.setdefault(group_of(name), []).append(q.grad.flatten())
        grads = {g: torch.cat(v) for g, v in grads.items()}
        grads["all"] = torch.cat(list(grads.values()))
        return {k: v.detach().float() for k, v in out.items()}, grads

    def group_of(name: str) -> str:
        parts = name.split(".")
        return parts[2] if parts[0] == "body" and len(parts) > 2 else parts[0]  # body.stages.res3... -> res3

    def round_input(m):
        return patched(m, "forward", lambda x, _f=m.forward: _f(x.to(BF16).float()))

    def perturb_weights(m, scale):
        g = torch.Generator().manual_seed(4)
        with torch.no_grad():
            for q in m.parameters():
                q.mul_(1 + scale * torch.randn(q.shape, generator=g))
        return contextlib.nullcontext()

    def fp32_ctx(m):
        return contextlib.nullcontext()

    def emu(**kw):
        return lambda m: EmulatedBF16(**kw)

    def with_emu(other):
        def factory(m):
            stack = contextlib.ExitStack()
            stack.enter_context(other(m))
            stack.enter_context(EmulatedBF16())
            return stack
        return factory

    variants = {
        "bf16 (all of autocast)": emu(),
        "  conv outputs kept fp32": emu(round_output=False),
        "  conv operands kept fp32": emu(round_inputs=False),
        "  GroupNorm in fp32, fp32 output": with_emu(lambda m: gn_fp32(True)),
        "  GroupNorm in fp32, bf16 output": with_emu(lambda m: gn_fp32(False)),
        "  backbone body fp32 (FPN bf16)": with_emu(lambda m: fp32_module(m.body)),
        "  FPN fp32 (body bf16)": with_emu(lambda m: fp32_module(m.fpn)),
    }
    # Controls: how sensitive is fp32 itself? (the same network, fp32 throughout, one tiny perturbation)
    variants["control: fp32, input rounded to bf16"] = lambda m: round_input(m)
    variants["control: fp32, weights * (1 + 1e-3 noise)"] = lambda m: perturb_weights(m, 1e-3)
    for stage in ("stem", "res2", "res3", "res4", "res5"):
        variants[f"  {stage} fp32 (rest bf16)"] = with_emu(lambda m, st=stage: fp32_module(getattr(m.body.stages, st)))
    ref_out, ref_grad = run(fp32_ctx)
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    groups = list(ref_grad)
    print("relative error vs fp32 of the FPN outputs | of the gradients of each parameter group")
    print(f"{'variant':36s} " + " ".join(f"{k:>6s}" for k in ref_out) + " | " + " ".join(f"{g:>6s}" for g in groups))
    for name, factory in variants.items():
        if args.only and not any(o in name for o in args.only):
            continue
        out, grad = run(factory, control=name.startswith("control"))
        print(f"{name:36s} " + " ".join(f"{rel(out[k], ref_out[k]):6.4f}" for k in ref_out) + " | " +
              " ".join(f"{rel(grad[g], ref_grad[g]):6.4f}" for g in groups), flush=True)


if __name__ == "__main__":
    main()

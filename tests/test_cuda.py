"""CUDA paths: device and AMP choice, RoIAlign's CUDA fallback, detection / classification steps under CUDA autocast,
the fast inference path on a GPU, and the trainers end to end on cuda.

Tests marked `cuda` need a GPU and skip without one (benchmarks/gpu_check.sh runs this file on a GPU machine); the
unmarked ones check the CUDA branches of the device / precision choice with a faked GPU and run everywhere.
"""
import math
from pathlib import Path

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign

import resbackbones as rb
from resbackbones.detection import DetectorConfig
from resbackbones.detection.roi_align import FastMultiScaleRoIAlign
from resbackbones.utils.amp import autocast, grad_scaler, resolve_amp, resolve_device
from resbackbones.inference import inference_dtype

HAS_CUDA = torch.cuda.is_available()
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_gpu(monkeypatch):
    """Pretend the current device is a GPU of the given compute capability."""
    def install(major, minor, name="Fake GPU"):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, minor))
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    return install


@pytest.mark.parametrize("capability,expected", [((9, 0), "bf16"), ((8, 0), "bf16"), ((7, 5), "fp16")])
def test_auto_amp_on_cuda_follows_compute_capability(fake_gpu, capability, expected):
    fake_gpu(*capability)
    device = torch.device("cuda", 0)
    amp, reason = resolve_amp("auto", device)
    assert amp == expected and f"{capability[0]}.{capability[1]}" in reason and "Fake GPU" in reason
    assert (grad_scaler(device, amp) is not None) == (amp == "fp16")  # loss scaling for fp16 only
    dtype, why = inference_dtype("auto", device)
    assert dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[expected] and why == reason


def test_fp16_is_refused_on_cpu_and_unknown_modes_name_the_choices():
    with pytest.raises(ValueError, match="amp=fp16 is for CUDA"):
        resolve_amp("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="auto, none, bf16, fp16"):
        resolve_amp("half", torch.device("cpu"))


@pytest.mark.skipif(HAS_CUDA, reason="checks the message on a machine without CUDA")
def test_asking_for_cuda_without_it_is_one_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")


# -- on a GPU --------------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_device_auto_is_cuda_with_its_amp():
    device = resolve_device("auto")
    assert device.type == "cuda"
    amp, reason = resolve_amp("auto", device)
    major, _ = torch.cuda.get_device_capability(device)
    assert amp == ("bf16" if major >= 8 else "fp16"), reason


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_roi_align_on_cuda_is_torchvisions_kernel_and_matches_the_cpu_sparse_path():
    gen = torch.Generator().manual_seed(0)
    levels = ["p2", "p3", "p4", "p5"]
    feats = {n: torch.randn(2, 16, 64 // 2 ** i, 80 // 2 ** i, generator=gen) for i, n in enumerate(levels)}
    xy = torch.rand(40, 2, generator=gen) * torch.tensor([320.0, 256.0])
    boxes = [torch.cat([xy, xy + 8 + torch.rand(40, 2, generator=gen) * 150], 1)] * 2
    shapes = [(256, 320)] * 2
    on_gpu = {k: v.cuda().requires_grad_() for k, v in feats.items()}
    ours = FastMultiScaleRoIAlign(levels, 7, 2)(on_gpu, [b.cuda() for b in boxes], shapes)
    ref = MultiScaleRoIAlign(levels, 7, 2)(on_gpu, [b.cuda() for b in boxes], shapes)
    assert torch.equal(ours, ref)  # CUDA keeps torchvision's kernel
    cpu = FastMultiScaleRoIAlign(levels, 7, 2)(feats, boxes, shapes)  # the sparse CPU path
    torch.testing.assert_close(ours.cpu(), cpu, rtol=1e-4, atol=1e-5)
    ours.sum().backward()
    assert all(torch.isfinite(v.grad).all() for v in on_gpu.values())
    with torch.autocast("cuda", dtype=torch.bfloat16):
        low = FastMultiScaleRoIAlign(levels, 7, 2)({k: v.detach().bfloat16() for k, v in on_gpu.items()},
                                                   [b.cuda() for b in boxes], shapes)
    torch.testing.assert_close(low.float(), ours.detach(), rtol=2e-2, atol=2e-2)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("amp", ["auto", "fp16"])
def test_mask_rcnn_step_and_inference_under_cuda_autocast(amp):
    from test_detector_bf16 import _coco_batch, _record_dtypes

    device = torch.device("cuda")
    amp, _ = resolve_amp(amp, device)
    torch.manual_seed(0)
    cfg = DetectorConfig(num_classes=80)
    cfg.mask_head.enabled = True
    # BN + identity-initialised blocks: a random FrozenBN backbone's activations (~1e4) would overflow fp16
    cfg.backbone.name, cfg.backbone.norm, cfg.backbone.freeze_at = "resnet18", "BN", 0
    cfg.backbone.options = {"zero_init_residual": True}
    cfg.input.min_size, cfg.input.max_size = (256,), 384
    model = rb.build_detector(cfg).to(device)
    images, targets = _coco_batch()
    images = [im.to(device) for im in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scaler = grad_scaler(device, amp)
    model.train()
    seen, handles = _record_dtypes(model)
    with autocast(device, amp):
        losses = model(images, targets)
    for handle in handles:
        handle.remove()
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    assert seen.pop("backbone") == low and all(d == torch.float32 for d in seen.values()), seen
    assert all(v.dtype == torch.float32 and math.isfinite(v.item()) for v in losses.values()), losses
    loss = sum(losses.values())
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    model.eval()
    with torch.no_grad(), autocast(device, amp):
        out = model(images)
    assert out[0]["boxes"].device.type == "cuda" and out[0]["boxes"].dtype == torch.float32


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_classifier_channels_last_amp_step_and_fast_inference_on_cuda():
    device = torch.device("cuda")
    amp, _ = resolve_amp("auto", device)
    torch.manual_seed(0)
    model = rb.build_classifier("resnet18", num_classes=10).to(device).to(memory_format=torch.channels_last)
    images = torch.randn(16, 3, 64, 64, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (16,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = grad_scaler(device, amp)
    first = None
    for _ in range(8):  # the same batch: the loss must go down
        with autocast(device, amp):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        (scaler.step(optimizer), scaler.update()) if scaler is not None else optimizer.step()
        first = loss.item() if first is None else first
    assert loss.item() < first
    model.eval()
    with torch.no_grad():
        reference = model(images)
    fast = rb.optimize_for_inference(model)  # auto: bf16 / fp16 on a GPU
    assert fast.precision in ("bf16", "fp16")
    out = fast(images)
    assert out.dtype == torch.float32 and out.device.type == "cuda"
    agreement = (out.argmax(1) == reference.argmax(1)).float().mean().item()
    assert agreement >= 0.9, agreement


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_cls_and_det_tools_run_on_cuda(tmp_path, capsys):
    """tools/train_cls.py (synthetic data) and tools/train_det.py (tiny quickstart) train and evaluate on cuda."""
    import train_cls
    import train_det
    from test_train_det_tool import _tiny

    assert train_cls.main(["--output", str(tmp_path / "cls"), "--epochs", "1", "--batch-size", "16",
                           "--device", "cuda", "data.synthetic.train_per_class=8", "data.synthetic.val_per_class=2",
                           "train.progress=false", "train.tensorboard=false"]) == 0
    assert "amp: " in capsys.readouterr().out
    assert train_det.main(_tiny(tmp_path / "shapes", tmp_path / "det", "solver.max_iter=2", "--device",
                                "cuda")) == 0
    assert (tmp_path / "det" / "eval.json").is_file()

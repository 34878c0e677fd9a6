"""Device choice and mixed precision: cuda > mps > cpu, bf16/fp16 autocast, a GradScaler only where fp16 needs one."""
import contextlib
import functools
import os
from typing import ContextManager, Optional, Tuple

import torch

AMP_CHOICES = ("none", "bf16", "fp16")
AMP_MODES = ("auto",) + AMP_CHOICES
# CPU flags (Linux /proc/cpuinfo names) whose presence means bf16 matrix maths runs natively: Intel AMX tiles
# (Sapphire Rapids and later) or AVX512-BF16 dot products (Cooper Lake, AMD Zen 4 and later). Without them, oneDNN
# emulates bf16 through fp32 and autocast only adds conversions.
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def cpu_bf16_flags() -> Tuple[str, ...]:
    """The CPU_BF16_FLAGS this CPU reports (empty where /proc/cpuinfo is absent, e.g. macOS or Windows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return tuple(f for f in CPU_BF16_FLAGS if f in flags)
    except OSError:
        pass
    return ()


def resolve_amp(amp: str, device: torch.device) -> Tuple[str, str]:
    """The autocast mode to train/infer with on `device`, and why: (mode in AMP_CHOICES, reason for the log).

    "auto": bf16 on CPUs with native bf16 (amx_bf16 / avx512_bf16) and on CUDA GPUs that support it (compute
    capability >= 8.0, Ampere and later), fp16 (+ GradScaler) on older CUDA GPUs, none otherwise (MPS included).
    An explicit mode is returned as given after checking it is usable on `device`.
    """
    if amp not in AMP_MODES:
        raise ValueError(f"unknown amp mode {amp!r}; choose one of {', '.join(AMP_MODES)}")
    if amp != "auto":
        autocast(device, amp)  # refuses fp16 on CPU with the fix
        return amp, "set in the config"
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        name = torch.cuda.get_device_name(device)
        if (major, minor) >= (8, 0):
            return "bf16", f"auto: {name} (compute capability {major}.{minor}) has native bf16"
        return "fp16", f"auto: {name} (compute capability {major}.{minor}) has no bf16; fp16 with loss scaling"
    if device.type == "cpu":
        flags = cpu_bf16_flags()
        if flags:
            return "bf16", f"auto: the CPU has native bf16 ({', '.join(flags)})"
        return "none", "auto: the CPU has no native bf16 (no amx_bf16 / avx512_bf16), fp32"
    return "none", f"auto: fp32 on {device.type}"


def resolve_device(name: str = "auto", *, local_rank: Optional[int] = None) -> torch.device:
    """"auto" -> cuda (this process's LOCAL_RANK GPU) if available, else cpu; otherwise torch.device(name).

    Raises ValueError naming the device when it is unknown or not available here.
    """
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available on this machine (use --device cpu)")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        elif device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} requested but MPS is not available here")
    return device


def amp_dtype(amp: str) -> Optional[torch.dtype]:
    if amp not in AMP_CHOICES:
        raise ValueError(f"unknown amp mode {amp!r}; choose one of {', '.join(AMP_CHOICES)}")
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def autocast(device: torch.device, amp: str) -> ContextManager:
    """Autocast context for `amp` ("none" -> no-op). fp16 on CPU is refused: CPU kernels are bf16-only."""
    dtype = amp_dtype(amp)
    if dtype is None:
        return contextlib.nullcontext()
    if device.type == "cpu" and dtype == torch.float16:
        raise ValueError("amp=fp16 is for CUDA; on CPU use amp=bf16 or amp=none")
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, amp: str) -> Optional["torch.amp.GradScaler"]:
    """A GradScaler for fp16 on CUDA (fp16 gradients underflow without loss scaling); None otherwise."""
    if amp == "fp16" and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


def set_deterministic(enabled: bool) -> None:
    """Bit-reproducible kernels (cuDNN deterministic, torch.use_deterministic_algorithms) when enabled."""
    if enabled:
        # cuBLAS needs this workspace setting for deterministic GEMMs; harmless on CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=False)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled

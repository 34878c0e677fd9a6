"""The hardware a benchmark ran on, one line for the head of every table: CPU model, logical CPUs, torch threads, the
native-bf16 flags (amx_bf16, avx512_bf16: utils/amp.py picks bf16 from them), torch's CPU kernel level, and the
GPU (name, compute capability) when one is used.

    from machine import describe                  # benchmarks/ is each script's own folder on sys.path
    print(f"machine: {describe(device)}")
    -> "CPU AMD EPYC (family 25, model 17), 2 logical CPUs, 2 torch threads, amx_bf16: no, avx512_bf16: yes,
        torch CPU kernels AVX512; no GPU used; torch 2.14.1, torchvision 0.29.1, python 3.11.7"

A machine's bf16 speed-ups differ by kind (AMX ~6x fp32 GEMM, AVX512-BF16 ~2x, neither ~1x), so a ratio without
this line cannot be compared with another table.
"""
import os
import platform
import sys
from pathlib import Path
from typing import Dict, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from resbackbones.utils.amp import CPU_BF16_FLAGS, cpu_bf16_flags  # noqa: E402


def _cpuinfo_fields() -> Dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none, e.g. macOS)."""
    fields: Dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    """e.g. "Intel(R) Xeon(R) Platinum 8480+ (family 6, model 143)"; virtual machines may report less."""
    fields = _cpuinfo_fields()
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def bf16_flags() -> str:
    """"amx_bf16: no, avx512_bf16: yes" from the CPU flags."""
    present = cpu_bf16_flags()
    return ", ".join(f"{flag}: {'yes' if flag in present else 'no'}" for flag in CPU_BF16_FLAGS)


def gpu(device: Optional[torch.device] = None) -> str:
    """The GPU used (name, compute capability, memory), or why none is."""
    if not torch.cuda.is_available():
        return "no GPU"
    index = device.index if device is not None and device.type == "cuda" and device.index is not None else 0
    props = torch.cuda.get_device_properties(index)
    text = f"GPU {props.name} (compute capability {props.major}.{props.minor}, {props.total_memory / 2 ** 30:.0f} GiB)"
    return text if device is not None and device.type == "cuda" else text + " present, not used"


def describe(device: Optional[torch.device] = None) -> str:
    """One line: CPU, bf16 flags, threads, GPU, library versions."""
    import torchvision

    level = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else "?"
    return (f"CPU {cpu_model()}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads, "
            f"{bf16_flags()}, torch CPU kernels {level}; {gpu(device)}; torch {torch.__version__}, "
            f"torchvision {torchvision.__version__}, python {platform.python_version()}")


if __name__ == "__main__":
    print(describe(torch.device("cuda") if torch.cuda.is_available() else None))

"""Device and precision choice: CUDA when present (bf16 autocast, TF32), else CPU (all cores; bf16 autocast
where the CPU has native bf16 matmuls)."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from core.config import DTYPES

_DTYPES = {name: getattr(torch, name) for name in DTYPES if name != "auto"}


def device_kind(name: str = "auto") -> str:
    """ "cuda" or "cpu" for a device name, "auto" resolved here (the one place that does)."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name).type


def pick_device(name: str = "auto") -> torch.device:
    device = torch.device(device_kind(name) if name == "auto" else name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for CUDA, but no CUDA device is available; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda[:N], got {name!r}")
    return device


def device_name(device: torch.device) -> str:
    """The device in words, as a model card records where it was trained."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "")
    except OSError:
        pass
    threads = torch.get_num_threads()
    return f"cpu ({model + ', ' if model else ''}{threads} thread{'s' if threads != 1 else ''})"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX), not by emulation: the CPU has
    the instructions and oneDNN may use them (`ONEDNN_MAX_CPU_ISA=AVX2` forbids them, as on an AVX2-only CPU:
    bf16 there is emulated, many times slower than float32)."""
    try:
        has = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        return bool(has and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def has_native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bf16 matrices natively, so that bf16 is the fast precision there."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and cpu_has_native_bf16()


def autocast_dtype(device: torch.device, name: str = "auto") -> torch.dtype:
    """The precision matmuls run in. `auto`: bf16 on CUDA GPUs that support it (else fp16), bf16 on CPUs
    with native bf16 matmuls, fp32 on other CPUs (emulated bf16 is slower than fp32); `float32` turns
    autocast off. Why: RESULTS.md, train_speed.py."""
    if name != "auto":
        dtype = _DTYPES[name]
        if dtype == torch.float16 and device.type == "cpu":
            raise ValueError("float16 autocast is for CUDA; use bfloat16 or float32 on CPU")
        return dtype
    if has_native_bf16(device):
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else torch.float32


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def configure(device: torch.device) -> None:
    """Process-wide settings that make training fast on `device`."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(os.cpu_count() or 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

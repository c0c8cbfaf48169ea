"""Device and precision choice: CUDA when present (bf16 autocast, TF32), else CPU (all cores)."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for CUDA, but no CUDA device is available; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda[:N], got {name!r}")
    return device


def autocast_dtype(device: torch.device, name: str = "auto") -> torch.dtype:
    """The precision matmuls run in. `auto`: bf16 on CUDA GPUs that support it, fp32 on CPU.

    bf16 autocast on this project's CPUs (AMD EPYC, AVX2, no AVX512-BF16) was measured slower than fp32
    (benchmarks/train_speed.py), so CPU stays fp32 unless asked.
    """
    if name != "auto":
        dtype = _DTYPES[name]
        if dtype == torch.float16 and device.type == "cpu":
            raise ValueError("float16 autocast is for CUDA; use bfloat16 or float32 on CPU")
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


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

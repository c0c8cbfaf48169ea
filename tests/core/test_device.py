from __future__ import annotations

import pytest
import torch

from core import device as dev


@pytest.mark.parametrize("native", [True, False])
def test_cpu_autocast_is_bf16_only_with_native_bf16(monkeypatch, native):
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert dev.autocast_dtype(cpu) == (torch.bfloat16 if native else torch.float32)
    assert dev.autocast_dtype(cpu, "float32") == torch.float32  # the way to turn it off
    assert dev.autocast_dtype(cpu, "bfloat16") == torch.bfloat16


def test_float16_is_refused_on_cpu():
    with pytest.raises(ValueError, match="float16 autocast is for CUDA"):
        dev.autocast_dtype(torch.device("cpu"), "float16")


def test_native_bf16_needs_the_instructions_and_onednns_leave(monkeypatch):
    """An AVX512-BF16 CPU whose oneDNN is held to AVX2 (ONEDNN_MAX_CPU_ISA, or a real AVX2 CPU's) emulates bf16:
    the dtype choice must then be float32 (the newcomer's 1,232 ms a step was emulated bf16)."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    for onednn, expected in ((True, True), (False, False)):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda onednn=onednn: onednn)
        assert dev.cpu_has_native_bf16() is expected
        assert dev.autocast_dtype(torch.device("cpu")) == (torch.bfloat16 if expected else torch.float32)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert dev.cpu_has_native_bf16() is False  # oneDNN's word alone is not the CPU's

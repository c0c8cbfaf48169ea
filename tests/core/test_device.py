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


def test_native_bf16_check_answers_a_bool():
    assert isinstance(dev.cpu_has_native_bf16(), bool)

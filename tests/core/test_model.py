from __future__ import annotations

import pytest
import torch

from core.config import ConfigError, ModelConfig
from core.model import GPT, KVCache, project


def make_model(**overrides) -> GPT:
    torch.manual_seed(0)
    config = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=11, **overrides)
    return GPT(config).eval()


def test_forward_shapes_and_loss():
    model = make_model()
    idx, targets = torch.randint(0, 11, (2, 3, 16))
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 16, 11)
    assert loss.item() == pytest.approx(torch.log(torch.tensor(11.0)).item(), abs=0.3)  # near uniform at init


def test_weights_are_tied():
    model = make_model()
    assert model.lm_head.weight.data_ptr() == model.wte.weight.data_ptr()


def test_kv_cache_matches_full_forward():
    model = make_model()
    idx = torch.randint(0, 11, (2, 16))
    full, _ = model(idx)
    cache = KVCache.empty(model.config, 2, torch.device("cpu"), torch.float32)
    prefix, _ = model(idx[:, :5], cache=cache)  # prefill
    assert torch.allclose(prefix[:, -1], full[:, 4], atol=1e-5)
    for t in range(5, 16):  # then one token at a time
        step, _ = model(idx[:, t : t + 1], cache=cache)
        assert torch.allclose(step[:, -1], full[:, t], atol=1e-5)
    cache2 = KVCache.empty(model.config, 2, torch.device("cpu"), torch.float32)
    model(idx[:, :4], cache=cache2)
    chunk, _ = model(idx[:, 4:9], cache=cache2)  # a multi-token step after a cached prefix
    assert torch.allclose(chunk[:, -1], full[:, 8], atol=1e-5)


@pytest.mark.parametrize("bias", [False, True])
def test_single_row_decoding_matches_full_forward(bias):
    """One sequence, one token per step: the CPU path that splits each projection across threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        layer = torch.nn.Linear(32, 96, bias=bias)
        row = torch.randn(1, 1, 32)
        with torch.no_grad():
            assert torch.allclose(project(layer, row), layer(row), atol=1e-6)
        model = make_model(bias=bias)
        idx = torch.randint(0, 11, (1, 16))
        with torch.no_grad():
            full, _ = model(idx)
            cache = KVCache.empty(model.config, 1, torch.device("cpu"), torch.float32)
            for t in range(16):
                step, _ = model(idx[:, t : t + 1], cache=cache)
                assert torch.allclose(step[:, -1], full[:, t], atol=1e-5)
    finally:
        torch.set_num_threads(threads)


def test_context_overflow_is_an_error():
    model = make_model()
    with pytest.raises(ValueError, match="exceeds the context"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_invalid_shapes_are_rejected():
    with pytest.raises(ConfigError, match="multiple of n_head"):
        ModelConfig(n_head=3, n_embd=32).validate()
    with pytest.raises(ConfigError, match="positive"):
        ModelConfig(n_layer=0).validate()
    with pytest.raises(ConfigError, match="dropout"):
        ModelConfig(dropout=1.0).validate()


def test_weight_decay_only_on_matrices():
    model = make_model(bias=True)
    opt = model.optimizer(1e-3, 0.1, (0.9, 0.99), torch.device("cpu"))
    decayed, plain = opt.param_groups
    assert all(p.dim() >= 2 for p in decayed["params"]) and decayed["weight_decay"] == 0.1
    assert all(p.dim() < 2 for p in plain["params"]) and plain["weight_decay"] == 0.0
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))

"""The cached decoding step (core.decoding, KVCache): equal to a fresh encoding, sliding past the context, shared
by several caches."""

from __future__ import annotations

import pytest
import torch

from core.config import ModelConfig
from core.decoding import Decoder
from core.model import GPT, KVCache
from core.sampling import SamplingConfig, generate_ids


def test_a_full_rotary_cache_slides_and_keeps_scoring_as_a_fresh_encoding_would():
    """One layer: keys and values depend on a token and its position only, so after a slide the next step
    must equal the model reading the kept tokens afresh; with deeper layers they carry what they read."""
    torch.manual_seed(0)
    config = ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=7, pos_encoding="rope", dropout=0.0)
    model = GPT(config).eval()
    ids = torch.randint(0, 7, (1, 17))
    cache = KVCache.empty(config, 1, torch.device("cpu"), torch.float32)
    with torch.inference_mode():
        model(ids[:, :16], cache=cache)
        cache.slide(4, model.rope_cos, model.rope_sin)
        assert cache.length == 12
        slid = Decoder(model)([int(ids[0, 16])], cache)
        fresh, _ = model(ids[:, 4:17])
    assert torch.allclose(slid[0], fresh[0, -1], atol=1e-5)
    with pytest.raises(ValueError, match="cannot drop"):
        cache.slide(14, model.rope_cos, model.rope_sin)


@pytest.mark.parametrize("pos_encoding", ["learned", "rope"])
def test_past_the_context_rotary_models_slide_and_learned_positions_encode_again(pos_encoding, monkeypatch):
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=7, pos_encoding=pos_encoding))
    encodings = []
    model.register_forward_hook(lambda module, args, out: encodings.append(args[0].shape[1]))
    out = list(generate_ids(model.eval(), [1, 2, 3], SamplingConfig(max_new_tokens=60, seed=0)))
    assert len(out) == 60 and all(0 <= t < 7 for t in out)
    assert encodings == ([3] if pos_encoding == "rope" else [3] + [12] * len(encodings[1:]))
    assert pos_encoding == "rope" or len(encodings) > 3


def test_one_decoder_serves_several_caches_at_once():
    """The Chat tab's sessions share a model's decoder: steps of two conversations, interleaved, each give
    what they give alone."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=7, pos_encoding="rope")).eval()
    step = Decoder(model)
    streams = ([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1])
    alone = []
    for ids in streams:
        cache = KVCache.empty(model.config, 1, torch.device("cpu"), torch.float32)
        alone.append([step([t], cache) for t in ids])
    caches = [KVCache.empty(model.config, 1, torch.device("cpu"), torch.float32) for _ in streams]
    for t, (a, b) in enumerate(zip(*streams)):
        assert torch.equal(step([a], caches[0]), alone[0][t]) and torch.equal(step([b], caches[1]), alone[1][t])

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
import torch

from core import sampling
from core.config import ModelConfig
from core.decoding import Decoder
from core.model import GPT
from core.sampling import Drafts, SamplingConfig, generate_ids, sample_next, stream
from core.vocab import Vocab


def test_top_k_one_is_argmax():
    logits = torch.randn(4, 50)
    picked = sample_next(logits, SamplingConfig(temperature=1.0, top_k=1))
    assert torch.equal(picked.squeeze(1), logits.argmax(-1))


def test_temperature_zero_is_greedy():
    logits = torch.randn(3, 20)
    assert torch.equal(sample_next(logits, SamplingConfig(temperature=0)).squeeze(1), logits.argmax(-1))


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]]))
    gen = torch.Generator().manual_seed(0)
    picks = {int(sample_next(logits, SamplingConfig(temperature=1.0, top_p=0.8), generator=gen)) for _ in range(200)}
    assert picks == {0, 1}


def test_repetition_penalty_discourages_recent_tokens():
    logits = torch.tensor([[2.0, 1.9, 0.0]])
    recent = torch.tensor([[0]])
    picked = sample_next(logits, SamplingConfig(temperature=0, repetition_penalty=2.0), recent)
    assert int(picked) == 1


def test_bad_settings_are_rejected():
    for bad in (dict(temperature=-1), dict(top_p=0), dict(top_k=-2), dict(max_new_tokens=-1), dict(draft_tokens=-2)):
        with pytest.raises(ValueError):
            SamplingConfig(**bad).validate()


@pytest.fixture
def model_and_vocab():
    torch.manual_seed(0)
    vocab = Vocab(sorted(set("abc \n")))
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=len(vocab))).eval()
    return model, vocab


def test_cached_and_uncached_generation_agree_within_context(model_and_vocab):
    model, vocab = model_and_vocab
    settings = SamplingConfig(temperature=0, max_new_tokens=5)
    prompt = vocab.encode("ab c")
    assert list(generate_ids(model, prompt, settings)) == list(generate_ids(model, prompt, settings, use_cache=False))


def test_generation_runs_past_the_context(model_and_vocab):
    model, vocab = model_and_vocab
    out = list(generate_ids(model, vocab.encode("abc"), SamplingConfig(max_new_tokens=30, seed=1)))
    assert len(out) == 30


def test_seed_makes_sampling_reproducible(model_and_vocab):
    model, vocab = model_and_vocab
    settings = SamplingConfig(temperature=1.0, max_new_tokens=20, seed=5)
    assert "".join(stream(model, vocab, "a", settings)) == "".join(stream(model, vocab, "a", settings))


def test_stream_stops_before_stop_string(model_and_vocab):
    model, vocab = model_and_vocab
    settings = SamplingConfig(temperature=1.5, max_new_tokens=200, seed=3)
    full = "".join(stream(model, vocab, "a", settings))
    for stop in ("a", "bc", " \n"):
        cut = "".join(stream(model, vocab, "a", settings, stop=(stop,)))
        assert stop not in cut
        assert full.startswith(cut)
        if stop in full:
            assert cut == full[: full.index(stop)]


def test_a_stop_string_counts_only_after_stop_after_characters(model_and_vocab):
    model, vocab = model_and_vocab
    settings = SamplingConfig(temperature=1.5, max_new_tokens=200, seed=3)
    full = "".join(stream(model, vocab, "a", settings))
    stop = full[5]  # met early, so a reply would end at character 5 (or sooner)
    early = "".join(stream(model, vocab, "a", settings, stop=(stop,)))
    late = "".join(stream(model, vocab, "a", settings, stop=(stop,), stop_after=40))
    assert len(early) <= 5 and full.startswith(late) and len(late) >= 40
    rest = full[40:]
    assert late == full[: 40 + rest.index(stop)] if stop in rest else late == full


def test_unknown_prompt_characters_are_dropped(model_and_vocab):
    model, vocab = model_and_vocab
    text = "".join(stream(model, vocab, "aXYZ\x00b", SamplingConfig(max_new_tokens=5, seed=0)))
    assert len(text) == 5


def test_skip_leading_drops_only_the_first_run_of_those_characters(model_and_vocab):
    model, vocab = model_and_vocab
    settings = SamplingConfig(temperature=1.5, max_new_tokens=200, seed=3)
    full = "".join(stream(model, vocab, "a", settings))
    lead = next(c for c in full)  # whatever the model starts with, skipping it must not stop the reply
    skipped = "".join(stream(model, vocab, "a", settings, skip_leading=lead))
    assert not skipped.startswith(lead)
    assert full.lstrip(lead).startswith(skipped) and len(skipped) <= len(full.lstrip(lead))


def test_drafts_guess_what_followed_the_longest_recent_match():
    assert Drafts([2, 3, 5, 2, 3, 7, 9, 2, 3]).guess(2) == [7, 9]  # the latest occurrence of "2 3"
    drafts = Drafts([1, 2, 3, 4, 9, 9, 1, 2, 3])
    assert drafts.guess(3) == [4, 9, 9]  # the longest match ("1 2 3") wins over a shorter, later one
    assert Drafts([1, 2, 3]).guess(4) == []  # nothing repeats yet
    drafts.append(4)
    assert drafts.guess(1) == [9]


@pytest.mark.parametrize("pos_encoding", ["learned", "rope"])
@pytest.mark.parametrize(
    "settings",
    [
        SamplingConfig(temperature=0, max_new_tokens=120),  # auto: guesses when greedy
        SamplingConfig(temperature=0.8, max_new_tokens=120, seed=3, draft_tokens=4),
        SamplingConfig(
            temperature=1.0, top_k=3, top_p=0.9, repetition_penalty=1.3, max_new_tokens=120, seed=5, draft_tokens=2
        ),
    ],
)
def test_speculative_decoding_gives_plain_decodings_output_in_fewer_model_calls(pos_encoding, settings, monkeypatch):
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=48, vocab_size=5, pos_encoding=pos_encoding))
    prompt = [0, 1, 2, 3] * 6  # repeats, so guesses are there from the start and the context fills up
    calls = []
    step = Decoder.__call__
    monkeypatch.setattr(Decoder, "__call__", lambda self, ids, cache: calls.append(len(ids)) or step(self, ids, cache))
    plain = list(generate_ids(model.eval(), prompt, dataclasses.replace(settings, draft_tokens=0)))
    plain_calls, calls[:] = len(calls), []
    assert list(generate_ids(model, prompt, settings)) == plain
    assert max(calls) > 1 and len(calls) < plain_calls  # guesses were checked, and some were right


def test_sampled_replies_step_in_half_precision_unless_exact_and_greedy_ones_never(model_and_vocab, monkeypatch):
    model, vocab = model_and_vocab
    built: list[bool] = []
    real = sampling.decoder_for
    monkeypatch.setattr(sampling, "decoder_for", lambda m, half: built.append(half) or real(m, half))
    prompt = vocab.encode("ab c")
    for settings in (SamplingConfig(seed=1), SamplingConfig(seed=1, exact=True), SamplingConfig(temperature=0)):
        out = list(generate_ids(model, prompt, dataclasses.replace(settings, max_new_tokens=5)))
        assert len(out) == 5
    assert built == [True, False, False]
    exact = SamplingConfig(seed=1, exact=True, max_new_tokens=5)  # float32 throughout: as if uncached
    assert list(generate_ids(model, prompt, exact)) == list(generate_ids(model, prompt, exact, use_cache=False))


def test_the_next_turn_goes_to_the_stream_that_has_had_the_fewest():
    from core.sampling import Turns

    turns, order, holding = Turns(), [], threading.Event()
    release = threading.Event()

    def hold() -> None:
        with turns.turn(0):
            holding.set()
            release.wait(10)

    def ask(had: int, name: str) -> None:
        with turns.turn(had):
            order.append(name)

    first = threading.Thread(target=hold)
    first.start()
    assert holding.wait(10)
    long_one = threading.Thread(target=ask, args=(500, "long"))
    long_one.start()
    time.sleep(0.2)  # the long stream asks first
    short_one = threading.Thread(target=ask, args=(0, "short"))
    short_one.start()
    time.sleep(0.2)
    release.set()
    for thread in (first, long_one, short_one):
        thread.join(10)
    assert order == ["short", "long"]

"""Turning logits into text: a pure `sample_next` and a streaming generator over a model's KV cache.

The CLI chat, the workbench's Chat tab and the samples printed during training all call `stream`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from core.model import GPT, KVCache
from core.vocab import Vocab


@dataclass
class SamplingConfig:
    temperature: float = field(default=0.8, metadata={"help": "0 = greedy; higher = more random"})
    top_k: int = field(default=0, metadata={"help": "keep the k most likely characters (0 = all)"})
    top_p: float = field(default=1.0, metadata={"help": "keep the smallest set with this total probability"})
    repetition_penalty: float = field(default=1.0, metadata={"help": "> 1 discourages recent characters"})
    max_new_tokens: int = field(default=300, metadata={"help": "characters to generate at most"})
    seed: int = field(default=-1, metadata={"help": "random seed (-1 = not seeded)"})

    def validate(self) -> SamplingConfig:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if not -1 <= self.seed < 2**63:
            raise ValueError(f"seed must be -1 (not seeded) or in [0, 2**63), got {self.seed}")
        return self


REPETITION_WINDOW = 64


def sample_next(
    logits: torch.Tensor,
    config: SamplingConfig,
    recent: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token id for each row of `logits` (B, V); returns (B, 1)."""
    logits = logits.float()
    if recent is not None and recent.numel() and config.repetition_penalty != 1.0:
        picked = logits.gather(1, recent)
        penalised = torch.where(picked > 0, picked / config.repetition_penalty, picked * config.repetition_penalty)
        logits = logits.scatter(1, recent, penalised)
    if config.temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / config.temperature
    if 0 < config.top_k < logits.size(-1):
        kth = torch.topk(logits, config.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - sorted_logits.softmax(dim=-1) >= config.top_p  # keeps at least the top token
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.inference_mode()
def generate_ids(
    model: GPT,
    prompt_ids: list[int],
    config: SamplingConfig,
    *,
    use_cache: bool = True,
) -> Iterator[int]:
    """Yield new token ids one at a time. Without a cache, each step re-reads the whole context.

    With the cache, when the context fills up the last 3/4 of it is re-encoded at its new positions and
    generation continues from there (learned positions make a sliding cache impossible).
    """
    config.validate()
    device = next(model.parameters()).device
    block = model.config.block_size
    generator = None
    if config.seed >= 0:
        generator = torch.Generator(device=device).manual_seed(config.seed)
    was_training = model.training
    model.eval()
    try:
        ids = torch.tensor([prompt_ids or [0]], dtype=torch.long, device=device)
        cache = None
        for _ in range(config.max_new_tokens):
            if not use_cache:
                logits, _ = model(ids[:, -block:])
                logits = logits[:, -1, :]
            else:
                if cache is None or cache.length >= block:
                    keep = ids[:, -(block * 3 // 4 if cache is not None else block) :]
                    cache = KVCache.empty(model.config, 1, device, model.wte.weight.dtype)
                    logits, _ = model(keep, cache=cache)
                else:
                    logits, _ = model(ids[:, -1:], cache=cache)
                logits = logits[:, -1, :]
            next_id = sample_next(logits, config, ids[:, -REPETITION_WINDOW:], generator)
            ids = torch.cat([ids, next_id], dim=1)
            yield int(next_id)
    finally:
        model.train(was_training)


def stream(
    model: GPT,
    vocab: Vocab,
    prompt: str,
    config: SamplingConfig,
    stop: tuple[str, ...] = (),
    *,
    skip_leading: str = "",
    use_cache: bool = True,
) -> Iterator[str]:
    """Yield generated text piece by piece; stops before any of the `stop` strings.

    Text that might be the start of a stop string is held back until it is known not to be one.
    Characters in `skip_leading` are dropped until the first other one, so a reply that starts with
    blank lines is not mistaken for one that ended. Characters of `prompt` that are not in the
    vocabulary are dropped (see `Vocab.filter_known`).
    """
    known, _ = vocab.filter_known(prompt)
    stop = tuple(s for s in stop if s)
    held = ""
    started = not skip_leading
    for token in generate_ids(model, vocab.encode(known), config, use_cache=use_cache):
        char = vocab.chars[token]
        if not started and char in skip_leading:
            continue
        started = True
        held += char
        found = [held.index(s) for s in stop if s in held]
        if found:
            if min(found):
                yield held[: min(found)]
            return
        hold = max((n for s in stop for n in range(1, len(s)) if held.endswith(s[:n])), default=0)
        if len(held) > hold:
            yield held[: len(held) - hold]
            held = held[len(held) - hold :]
    if held:
        yield held


def complete(model: GPT, vocab: Vocab, prompt: str, config: SamplingConfig, stop: tuple[str, ...] = ()) -> str:
    return "".join(stream(model, vocab, prompt, config, stop))

"""Turning logits into text: a pure `sample_next` and a streaming generator over a model's KV cache that
checks guessed characters (speculative decoding) without changing what it generates.

The CLI chat, the workbench's Chat tab and the samples printed during training all call `stream`.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from core.decoding import decoder_for
from core.device import autocast, has_native_bf16
from core.model import GPT, KVCache
from core.stops import StopMatcher
from core.vocab import Vocab

REPETITION_WINDOW = 64
MAX_DRAFT_TOKENS = 16
GREEDY_DRAFT_TOKENS = 4


@dataclass
class SamplingConfig:
    temperature: float = field(default=0.8, metadata={"help": "0 = greedy; higher = more random"})
    top_k: int = field(default=0, metadata={"help": "keep the k most likely characters (0 = all)"})
    top_p: float = field(default=1.0, metadata={"help": "keep the smallest set with this total probability"})
    repetition_penalty: float = field(default=1.0, metadata={"help": "> 1 discourages recent characters"})
    max_new_tokens: int = field(default=300, metadata={"help": "characters to generate at most"})
    min_reply_chars: int = field(
        default=80,
        metadata={"help": "chat: a reply ends at a blank line only once it is this long (0 = at the first one)"},
    )
    seed: int = field(default=-1, metadata={"help": "random seed (-1 = not seeded)"})
    draft_tokens: int = field(
        default=-1,
        metadata={
            "help": "guessed characters the model checks per call, the same output (0 = off, -1 = auto: "
            f"{GREEDY_DRAFT_TOKENS} when greedy, where guesses are often right, else 0)"
        },
    )
    exact: bool = field(
        default=False,
        metadata={
            "help": "decode in float32 only (the model's own arithmetic); off, a reply without guesses (a "
            "sampled one) on a CPU steps with float16 copies of the weights and re-encodes a full context in "
            "bf16 where native: faster, logits within ~1e-3"
        },
    )

    def validate(self) -> SamplingConfig:
        for name in ("temperature", "top_p", "repetition_penalty"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.min_reply_chars < 0:
            raise ValueError(f"min_reply_chars must be >= 0, got {self.min_reply_chars}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if not -1 <= self.draft_tokens <= MAX_DRAFT_TOKENS:
            raise ValueError(f"draft_tokens must be -1 (auto) or in [0, {MAX_DRAFT_TOKENS}], got {self.draft_tokens}")
        if not -1 <= self.seed < 2**63:
            raise ValueError(f"seed must be -1 (not seeded) or in [0, 2**63), got {self.seed}")
        return self

    @property
    def guesses(self) -> int:
        """Guesses checked per model call. Auto: only when greedy, where prompt lookup's guesses are right often
        enough to repay a call with guesses; sampled, they are not (RESULTS.md, Decoding speed)."""
        if self.draft_tokens >= 0:
            return self.draft_tokens
        return GREEDY_DRAFT_TOKENS if self.temperature == 0 else 0


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
    # less the largest first: a tiny temperature then sends the others to -inf, never the largest to inf
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / config.temperature
    if 0 < config.top_k < logits.size(-1):
        kth = torch.topk(logits, config.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - sorted_logits.softmax(dim=-1) >= config.top_p
        drop[:, 0] = False  # the top token stays, even where top_p rounds to 0 in float32
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


class Drafts:
    """Guesses of the next characters by prompt lookup: the longest recent run of characters (up to
    `MAX_ORDER`) that occurred before in the text, and what followed it there. Free to compute, often right
    in a character model's text (names, common words, the turns of a chat), and only ever a guess: the model
    checks every one (`generate_ids`)."""

    MAX_ORDER, MIN_ORDER = 6, 2

    def __init__(self, history: list[int]):
        """Index `history`, which becomes this object's: extend it through `append` from now on."""
        self.history = history
        self.follows: dict[tuple[int, ...], int] = {}  # an n-gram -> where the token after its latest occurrence is
        for end in range(1, len(history)):
            self._index(end)

    def _index(self, end: int) -> None:
        """Record the n-grams that end just before position `end` as followed by the token there."""
        for n in range(self.MIN_ORDER, min(self.MAX_ORDER, end) + 1):
            self.follows[tuple(self.history[end - n : end])] = end

    def append(self, token: int) -> None:
        self.history.append(token)
        self._index(len(self.history) - 1)

    def guess(self, count: int) -> list[int]:
        history = self.history
        for n in range(min(self.MAX_ORDER, len(history)), self.MIN_ORDER - 1, -1):
            at = self.follows.get(tuple(history[-n:]))
            if at is not None:
                return history[at : at + count]
        return []


def fill_dtype(device: torch.device, half: bool) -> torch.dtype:
    """The precision of encoding a prompt or refilling a full context (192 rows for a context of 256): matrix
    products that bf16 runs several times faster where the device has it natively."""
    return torch.bfloat16 if half and has_native_bf16(device) else torch.float32


@torch.inference_mode()
def generate_ids(
    model: GPT,
    prompt_ids: list[int],
    config: SamplingConfig,
    *,
    use_cache: bool = True,
) -> Iterator[int]:
    """Yield new token ids one at a time. Without a cache, each step re-reads the whole context.

    With the cache, when the context fills up, the oldest quarter is dropped. With rotary positions the
    cache slides (`KVCache.slide`): the kept tokens' keys and values stay, so the model reads the last 3/4
    to all of its context at every step at no cost; a kept token's values still carry what it read of the
    dropped ones, as in the steps before. With learned positions the last 3/4 is encoded again at its new
    positions, once every quarter of a context.

    Speculative decoding with the cache: a step feeds the model the last token and up to `config.guesses`
    guesses (`Drafts`) at once, reading the weights once for all of them; each position's token is then
    picked exactly as one step at a time would pick it (the same `sample_next`, the same random draws in the
    same order), and the guesses are kept while they equal what was picked. The output is that of plain
    decoding, up to the rounding of the few-row products (~1e-6, which can tip a near-tie); only the number
    of model calls changes.
    """
    config.validate()
    device = next(model.parameters()).device
    block = model.config.block_size
    generator = None
    if config.seed >= 0:
        generator = torch.Generator(device=device).manual_seed(config.seed)
    penalised = config.repetition_penalty != 1.0
    was_training = model.training
    model.eval()
    try:
        # the model reads the last `block` tokens; the guesses look further back, but not through a whole book
        history = list(prompt_ids[-max(4 * block, 4096) :] or [0])
        del prompt_ids  # a megabyte's ids are not held while the reply is generated
        # Guessing steps stay float32: several rows are not faster in float16, and a guess must be checked
        # with the arithmetic of the step it replaces.
        half = not config.exact and config.guesses == 0
        step = decoder_for(model, half=half) if use_cache else None
        fill = autocast(device, fill_dtype(device, half))
        drafts = Drafts(history) if use_cache and config.guesses > 0 else None
        cache = None
        slides = model.config.pos_encoding == "rope"  # a full cache slides on; else it is encoded again
        left = config.max_new_tokens
        while left > 0:
            guesses: list[int] = []
            if slides and cache is not None and cache.length >= block:
                cache.slide(block // 4, model.rope_cos, model.rope_sin)
            if not use_cache:
                rows = model(torch.tensor([history[-block:]], device=device))[0][0, -1:]
            elif cache is None or cache.length >= block:
                keep = history[-(block * 3 // 4 if cache is not None else block) :]
                cache = KVCache.empty(model.config, 1, device, model.wte.weight.dtype)
                with fill:
                    rows = model(torch.tensor([keep], device=device), cache=cache)[0][0].float()
            else:
                room = min(config.guesses, block - cache.length - 1, left - 1)
                guesses = drafts.guess(room) if drafts is not None and room > 0 else []
                rows = step(history[-1:] + guesses, cache)
            fed = cache.length if cache is not None else 0
            for row, guess in enumerate([*guesses, None]):
                recent = torch.tensor([history[-REPETITION_WINDOW:]], device=device) if penalised else None
                token = int(sample_next(rows[row : row + 1], config, recent, generator))
                if drafts is not None:
                    drafts.append(token)  # its history is this one
                else:
                    history.append(token)
                left -= 1
                yield token
                if token != guess:
                    break
            if guesses:  # the cache keeps the fed tokens up to the last guess that was right
                cache.length = fed - len(guesses) + row
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
    stop_after: int = 0,
    shared: bool = False,
    on_token: Callable[[int], None] | None = None,
) -> Generator[str, None, str]:
    """Yield generated text piece by piece; stops before any of the `stop` strings. Returns why it ended:
    "stop" (a stop string) or "length" (`max_new_tokens` generated).

    Text that might be the start of a stop string is held back until it is known not to be one
    (`StopMatcher`, linear in the text and the stop strings). Characters in `skip_leading` are dropped until
    the first other one, so a reply that starts with blank lines is not mistaken for one that ended.
    Characters of `prompt` that are not in the vocabulary are dropped (see `Vocab.filter_known`). The `stop`
    strings count only once `stop_after` characters were yielded, so that a chat reply is more than its
    first short line. `shared`: the model serves other streams of this process, so each model step takes
    its turn (`taking_turns`); decoding and stop matching stay outside the turn. `on_token` sees each
    generated token id (a server counts them).
    """
    known, _ = vocab.filter_known(prompt)
    matcher = StopMatcher(stop)
    started = not skip_leading
    yielded = 0
    decode = vocab.stream_decoder()  # a token's text: one character, or with a BPE several or none yet
    tokens = generate_ids(model, vocab.encode(known), config, use_cache=use_cache)
    del known
    for token in taking_turns(tokens) if shared else tokens:
        if on_token is not None:
            on_token(token)
        piece = decode(token)
        if not started:
            piece = piece.lstrip(skip_leading)
            if not piece:
                continue
            started = True
        if yielded < stop_after:
            yielded += len(piece)
            yield piece
            continue
        shown, stopped = matcher.feed(piece)
        if shown:
            yield shown
        if stopped:
            return "stop"
    held = matcher.flush()
    if held:
        yield held
    return "length"


class Turns:
    """One model step at a time across a process's streams, the next turn going to the stream that has had the
    fewest (least attained service): a short request waiting behind fifty long ones gets its turns before theirs,
    and equals take turns in the order they asked. A turn is handed over directly to the waiter it goes to."""

    AGE_TURNS = 64

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._busy = False
        self._waiting: list[tuple[int, int, threading.Event]] = []  # a heap of (turns had, arrival, its wake-up)
        self._arrivals = itertools.count()

    @contextlib.contextmanager
    def turn(self, had: int) -> Iterator[None]:
        with self._mutex:
            granted = not self._busy
            self._busy = True
            if not granted:
                wake = threading.Event()
                # past AGE_TURNS a stream waits in order with the others: new requests come first only briefly
                heapq.heappush(self._waiting, (min(had, self.AGE_TURNS), next(self._arrivals), wake))
        if not granted:
            wake.wait()
        try:
            yield
        finally:
            with self._mutex:
                if self._waiting:
                    heapq.heappop(self._waiting)[2].set()  # still busy: the turn passes to it
                else:
                    self._busy = False


_TURNS = Turns()


def taking_turns(pieces: Iterator[Any], turns: Turns = _TURNS) -> Generator[Any, None, Any]:
    """`pieces`, each made while no other stream in this process makes one (a server's many streams).

    Many threads running small forward passes at once oversubscribe the cores (each op is itself
    multi-threaded) and fight over the GIL; one step at a time serves every stream faster
    (benchmarks/chat_load.py, benchmarks/serve_api.py), and fewest-turns-first keeps short requests short
    (benchmarks/hostile_api.py).
    """
    had = 0
    while True:
        with turns.turn(had):
            try:
                piece = next(pieces)
            except StopIteration as done:
                return done.value  # why `stream` ended
        had += 1
        yield piece


def complete(model: GPT, vocab: Vocab, prompt: str, config: SamplingConfig, stop: tuple[str, ...] = ()) -> str:
    return "".join(stream(model, vocab, prompt, config, stop))

"""Which tokenizer a tournament tries: a byte-level BPE where it is measured to pay, else the characters.

A BPE wins where the budget reads the training text a few times and loses where it reads it many times over and
overfits (RESULTS.md, "Characters against BPE" and "The tokenizer in the tournament"), so the rule is in passes
over the text: a BPE is tried when the budget's training would read it at most `MAX_BPE_PASSES` times.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.data import Dataset
from core.tune.candidates import default_params
from core.tune.config import TournamentConfig
from core.variants import AS_PREPARED, open_dataset, variant_dir

BPE_SIZE = 2048
MAX_BPE_PASSES = 8.0  # the default candidate takes the BPE up to here
MAX_TRIED_PASSES = 20.0  # past the measured loss (13 passes) and up to here, the search still tries it beside
CHARS_PER_BPE_TOKEN = 3.0  # what a 2048-token BPE spells on English text, between the plays' and the verses'
BPE_GAIN = "0.13-0.19 nats/char"  # what it won by where it read the text a few times (RESULTS.md)
BUILD_CHARS_PER_S = 2.8e6  # fitting on a bounded sample and encoding every split (data_speed.py, BPE 2048)
MAX_BUILD_SHARE = 0.1  # of the budget; beyond it the prepared tokenizer is kept
TYPICAL_STEP_S = 0.05  # the default model's step on a small CPU, until a tournament has measured this one


@dataclass
class TokenizerPick:
    """The tokenizer a tournament's default candidate uses (and whether the search may try the other)."""

    tokenizer: str  # AS_PREPARED, "char" or "bpe"
    vocab_size: int
    why: str
    searched: bool = False  # the candidates may draw the other tokenizer too (`tried`, or the prepared one)
    build_s: float = 0.0
    tried: int = 0  # a BPE size the search tries beside a default that keeps the prepared characters

    @property
    def params(self) -> dict[str, Any]:
        """What the default candidate's params hold of it (nothing for the dataset as prepared)."""
        if self.tokenizer == AS_PREPARED:
            return {}
        return {"tokenizer": self.tokenizer, "vocab_size": self.vocab_size}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def for_plan(self, searches: bool) -> TokenizerPick:
        """This pick for a plan that searches or not: with no search there are no candidates to try a BPE on."""
        if searches or not self.tried:
            return self
        why = self.why.replace(f", with BPE {self.vocab_size or self.tried} among the candidates", "")
        return TokenizerPick(AS_PREPARED, 0, why + " (a search would try it)")


def expected_passes(dataset: Dataset, budget_s: float, step_s: float, chars_per_step: float) -> float:
    """How many times training for `budget_s` at `step_s` would read the training split."""
    train_chars = dataset.stats.get("train_chars") or len(dataset.tokens["train"]) / dataset.tokens_per_char["train"]
    return budget_s / max(step_s, 1e-9) * chars_per_step / max(train_chars, 1)


def pick_tokenizer(config: TournamentConfig, dataset: Dataset, step_s: float) -> TokenizerPick:
    """The tokenizer the tournament of `config` trains its default candidate with (see the module docstring);
    `step_s` is the default model's measured pace."""
    default = default_params(config.overrides)
    tokens_per_step = default["batch_size"] * default.get("grad_accum", 1) * default["block_size"]
    asked = config.tokenizer
    if config.overrides.get("init_from"):
        return TokenizerPick(AS_PREPARED, 0, "the saved model's own tokenizer")
    if asked in ("char", "prepared"):
        return TokenizerPick("char" if asked == "char" else AS_PREPARED, 0, f"{asked}, as asked")
    if dataset.vocab.kind == "bpe":
        return TokenizerPick(AS_PREPARED, 0, f"the dataset's own BPE of {len(dataset.vocab)} tokens")
    passes = expected_passes(dataset, config.budget, step_s, tokens_per_step * CHARS_PER_BPE_TOKEN)
    build_s = sum(len(t) for t in dataset.tokens.values()) / BUILD_CHARS_PER_S
    if asked == "auto" and build_s > MAX_BUILD_SHARE * config.budget:
        why = (f"characters: building a BPE of this text would take about {build_s / 60:.0f} min, more than "
               f"{MAX_BUILD_SHARE:.0%} of the budget")  # fmt: skip
        return TokenizerPick(AS_PREPARED, 0, why)
    if asked == "bpe" or passes <= MAX_BPE_PASSES:
        why = (f"BPE {BPE_SIZE}: in {config.budget / 60:.3g} min it reads the text about {passes:.1f} times, where "
               f"a BPE has beaten characters by {BPE_GAIN}")  # fmt: skip
        return TokenizerPick("bpe", BPE_SIZE, why if asked == "auto" else f"BPE {BPE_SIZE}, as asked",
                             searched=asked == "auto")  # fmt: skip
    if passes <= MAX_TRIED_PASSES:
        why = (f"characters, with BPE {BPE_SIZE} among the candidates: in {config.budget / 60:.3g} min a BPE would "
               f"read the text about {passes:.0f} times, where it may overfit")  # fmt: skip
        return TokenizerPick(AS_PREPARED, 0, why, searched=True, tried=BPE_SIZE)
    why = (f"characters: a BPE would read this text about {passes:,.0f} times in {config.budget / 60:.3g} min and "
           f"overfit (it pays up to about {MAX_BPE_PASSES:.0f})")  # fmt: skip
    return TokenizerPick(AS_PREPARED, 0, why)


def build(pick: TokenizerPick, data_dir: str | Path) -> TokenizerPick:
    """Build the BPE variant the tournament uses or tries now (once; every worker and rung reuses it), timed: it is
    paid from the budget."""
    size = pick.vocab_size if pick.tokenizer == "bpe" else pick.tried
    if not size:
        return pick
    started = time.perf_counter()
    open_dataset(variant_dir(data_dir, "bpe", size))
    pick.build_s = time.perf_counter() - started
    return pick


def tokenizer_outlook(dataset: Dataset, step_s: float | None = None, minutes: float = 10.0) -> str:
    """What a tournament of `minutes` on a character dataset is expected to do about the tokenizer, said after
    prepare; `step_s`: the default model's pace here where a tournament measured it (else a typical one)."""
    step_s = step_s or TYPICAL_STEP_S
    default = default_params()
    tokens_per_step = default["batch_size"] * default["block_size"]
    passes = expected_passes(dataset, minutes * 60, step_s, tokens_per_step * CHARS_PER_BPE_TOKEN)
    if passes <= MAX_BPE_PASSES:
        return (
            f"A BPE of {BPE_SIZE} tokens usually beats characters on a text of this size (by {BPE_GAIN} where "
            f"measured); Tune tries it (a {minutes:.0f}-minute budget reads the text about {passes:.0f} times)."
        )
    return (
        f"On a text this size characters are expected to do as well: in {minutes:.0f} minutes a BPE would read "
        f"it about {passes:,.0f} times and overfit, so Tune keeps characters unless the budget is shorter."
    )

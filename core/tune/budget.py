"""What a budget gets before it starts: its plan, the tokenizer and the default model, chosen from the pace
measured here, and the preview a page shows before Start.

A long budget on a text a BPE reads a few times trains a larger default for all of it instead of searching:
measured, the search space's largest CPU shape trained 30 minutes beat a tournament of the small candidates,
whose short rungs judge where small models lead (RESULTS.md, "The tokenizer in the tournament").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.config import ModelConfig, replace_known
from core.data import Dataset
from core.model import flops_per_token
from core.tune import tokenizer as tokenizers
from core.tune.candidates import default_params
from core.tune.config import TournamentConfig, TuningError
from core.tune.plan import SLICE_OVERHEAD_S, Minimums, Plan, Rung, budget_minimums, make_plan, plan_tournament
from core.tune.space import SearchSpace
from core.tune.speed import Speed, measured_speed, recorded_plan
from core.variants import AS_PREPARED

GROWN_SHAPE = {"n_layer": 6, "n_head": 4, "n_embd": 256, "block_size": 256}  # the CPU search space's largest
# Passes over the text (as `expected_passes` estimates them) where the larger default trains: it won reading the
# text about 6 times (30 minutes of the default corpus); past MAX_BPE_PASSES a BPE overfits.
GROWN_MIN_PASSES = 4.0


def plan_for(config: TournamentConfig, speed: Speed, workers: int = 1) -> Plan:
    """The rungs of `config`'s budget at the default model's `speed` (core.tune.plan)."""
    return plan_tournament(
        config.budget,
        speed.step_s,
        workers=workers,
        eta=config.eta,
        final_share=config.final_share,
        search_rungs=config.search_rungs,
        slice_overhead_s=SLICE_OVERHEAD_S + speed.score_s,
    )


def choose_plan(
    config: TournamentConfig,
    dataset: Dataset,
    speed: Speed,
    *,
    workers: int = 1,
    measure: bool = True,
    space: SearchSpace | None = None,
) -> tuple[Plan, tokenizers.TokenizerPick]:
    """The plan of `config`'s budget and the tokenizer its default candidate trains with (not built yet): a
    larger default trained for all of the budget where `grown_default` finds one, else the rungs of `plan_for`
    and `pick_tokenizer`'s choice."""
    grown = grown_default(config, dataset, speed, measure, space)
    if grown is None:
        plan = plan_for(config, speed, workers)
        return plan, tokenizers.pick_tokenizer(config, dataset, speed.step_s).for_plan(plan.searches)
    pick, passes, step_s = grown
    shape = GROWN_SHAPE
    note = (
        f"no search: a larger model ({shape['n_layer']} layers of {shape['n_embd']}, context {shape['block_size']} "
        f"tokens, {step_s * 1000:.0f} ms a step) trains for all of it, where one this size beat a search of smaller "
        "ones"
    )
    grown_plan = {"params": shape, "step_s": step_s, "passes": round(passes, 2)}
    plan = make_plan(config.budget, speed.step_s, [Rung(1, 0.0)], workers=workers, note=note,
                     slice_overhead_s=SLICE_OVERHEAD_S + speed.score_s, grown=grown_plan)  # fmt: skip
    return plan, pick


def grown_default(
    config: TournamentConfig, dataset: Dataset, speed: Speed, measure: bool = True, space: SearchSpace | None = None
) -> tuple[tokenizers.TokenizerPick, float, float] | None:
    """(its tokenizer, passes over the text, seconds a step) of the larger default where a BPE of the text (the
    dataset's own, or one a tournament may build) is read GROWN_MIN_PASSES to MAX_BPE_PASSES times by it in the
    budget; None where the user fixed the tokenizer to characters, a field of its shape or a base model, the
    search `space` (the budget's default) does not hold its shape, or
    the default's own pace already says it would read the text too few times. Its pace is measured here once
    (cached like the default's); with `measure` False a pace not measured yet is a TuningError."""
    if config.tokenizer not in ("auto", "bpe") or config.overrides.get("init_from"):
        return None
    if set(config.overrides) & {*GROWN_SHAPE, "head_size"} or not _space_holds(
        space or SearchSpace.for_budget(config.device)
    ):
        return None
    as_bpe = dataset.vocab.kind == "bpe"
    chars_per_token = 1 / dataset.tokens_per_char["train"] if as_bpe else tokenizers.CHARS_PER_BPE_TOKEN
    default = default_params(config.overrides)
    chars_per_step = default["batch_size"] * default.get("grad_accum", 1) * GROWN_SHAPE["block_size"] * chars_per_token
    # Its pace is measured only where it may fall in the window: its step takes at least the default's, and at
    # most SLOWEST_MARGIN times what its arithmetic takes more (the small default is bound by overheads more).
    vocab_size = len(dataset.vocab) if as_bpe else tokenizers.BPE_SIZE
    slowest_s = speed.step_s * SLOWEST_MARGIN * _step_flops(default | GROWN_SHAPE, vocab_size)
    slowest_s /= _step_flops(default, len(dataset.vocab))
    if tokenizers.expected_passes(dataset, config.budget, speed.step_s, chars_per_step) < GROWN_MIN_PASSES:
        return None
    if tokenizers.expected_passes(dataset, config.budget, slowest_s, chars_per_step) > tokenizers.MAX_BPE_PASSES:
        return None
    changes = GROWN_SHAPE | {"vocab_size": vocab_size}
    pace = measured_speed(config, dataset, measure, changes)
    if pace is None:
        raise TuningError("the larger model's pace is measured on this machine when no job is running; see it then")
    passes = tokenizers.expected_passes(dataset, config.budget, pace.step_s, chars_per_step)
    if not GROWN_MIN_PASSES <= passes <= tokenizers.MAX_BPE_PASSES:
        return None
    if as_bpe:
        return (
            tokenizers.TokenizerPick(AS_PREPARED, 0, f"the dataset's own BPE of {len(dataset.vocab)} tokens"),
            passes,
            pace.step_s,
        )
    why = (f"BPE {tokenizers.BPE_SIZE}: in {config.budget / 60:.3g} min the larger model reads the text about "
           f"{passes:.1f} times, where a BPE has beaten characters by {tokenizers.BPE_GAIN}")  # fmt: skip
    return tokenizers.TokenizerPick("bpe", tokenizers.BPE_SIZE, why), passes, pace.step_s


SLOWEST_MARGIN = 2.0


def _step_flops(params: dict[str, Any], vocab_size: int) -> float:
    model_config = replace_known(ModelConfig(vocab_size=vocab_size), params)
    return flops_per_token(model_config) * params["batch_size"] * params.get("grad_accum", 1) * model_config.block_size


def _space_holds(space: SearchSpace) -> bool:
    """Whether `space` holds the larger shape (a GPU's space is another; a user's may be narrower)."""
    head_size = GROWN_SHAPE["n_embd"] // GROWN_SHAPE["n_head"]
    checks = {**{k: v for k, v in GROWN_SHAPE.items() if k != "n_embd"}, "head_size": head_size}
    return all(space.allows(name, value) for name, value in checks.items())


@dataclass
class Preview:
    """What a budget will do, said before it starts: the plan, or why there is none, and the minimums."""

    minimums: Minimums
    plan: Plan | None
    error: str = ""
    continuing: bool = False
    step_s: float = 0.0  # the default model's pace the minimums rest on

    def text(self) -> str:
        if self.error:
            return self.error
        verb = "continues its recorded plan: " if self.continuing else ""
        return verb + self.plan.summary()


def preview(config: TournamentConfig, workers: int = 1, measure: bool = True) -> Preview:
    """The plan a budget gets (the recorded one when the study already holds a tournament), without starting;
    with `measure` False a speed not measured yet is a TuningError saying so."""
    dataset = Dataset(config.data_dir)
    speed = measured_speed(config, dataset, measure)
    if speed is None:
        raise TuningError(
            "the smallest budgets are measured on this machine when no job is running; they show here then"
        )
    least = budget_minimums(speed.step_s, workers=workers, eta=config.eta, final_share=config.final_share,
                            slice_overhead_s=SLICE_OVERHEAD_S + speed.score_s)  # fmt: skip
    recorded = recorded_plan(config)
    if recorded is not None:
        return Preview(least, recorded, continuing=True, step_s=speed.step_s)
    try:
        plan, pick = choose_plan(config, dataset, speed, workers=workers, measure=measure)
    except TuningError as err:
        return Preview(least, None, error=str(err), step_s=speed.step_s)
    plan.tokenizer = pick.to_json()  # built at Start
    return Preview(least, plan, step_s=speed.step_s)

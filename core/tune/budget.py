"""What a budget gets before it starts: its plan, the tokenizer and the default model, chosen from the pace
measured here, and the preview a page shows before Start.

A long budget on a CPU, where a text's BPE is read a few times, trains a larger default for all of it instead of
searching: measured, the CPU search space's largest shape trained for all of a long budget beat a tournament of
the small candidates, whose short rungs judge where small models lead (RESULTS.md, "The tokenizer in the
tournament").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.config import ModelConfig, replace_known
from core.data import Dataset
from core.device import device_kind
from core.model import flops_per_token
from core.tune import tokenizer as tokenizers
from core.tune.candidates import default_params
from core.tune.config import TournamentConfig, TuningError
from core.tune.plan import SLICE_OVERHEAD_S, Minimums, Plan, Rung, budget_minimums, make_plan, plan_tournament
from core.tune.space import SearchSpace
from core.tune.speed import Speed, measured_speed, recorded_plan
from core.variants import AS_PREPARED

GROWN_SHAPE = {"n_layer": 6, "n_head": 4, "n_embd": 256, "block_size": 256}  # the CPU search space's largest
# What it trains with besides, where the user fixed nothing else: it reads the text a few times and overfits, and a
# decoupled weight decay of its hidden matrices scored lower where it was measured (RESULTS.md).
GROWN_RECIPE = {"muon_weight_decay": 0.04}
# Where it trains: reading the text GROWN_MIN_PASSES to MAX_BPE_PASSES times (as `expected_passes` estimates them;
# past MAX_BPE_PASSES a BPE overfits) in at least GROWN_MIN_STEPS steps, around where it was measured to win.
GROWN_MIN_PASSES, GROWN_MIN_STEPS = 4.0, 2_000
# Its step against the default's, bounded by their arithmetic before it is measured: at least 1/FASTEST_SHARE
# and at most SLOWEST_SHARE of the ratio of their FLOPs a step (a small model is bound by overheads more; the
# measured ratio was about half the arithmetic's, RESULTS.md), so that budgets it cannot fit measure nothing.
FASTEST_SHARE, SLOWEST_SHARE = 3.0, 2.0


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
    pick, passes, step_s, changes = grown
    shape = GROWN_SHAPE
    params = shape | {k: v for k, v in GROWN_RECIPE.items() if k not in config.overrides}
    decay = f", weight decay {params['muon_weight_decay']:g} of its matrices" if "muon_weight_decay" in params else ""
    note = (
        f"no search: a larger model ({shape['n_layer']} layers of {shape['n_embd']}, context {shape['block_size']} "
        f"tokens, {step_s * 1000:.0f} ms a step, about {passes:.1f} passes over the text{decay}) trains for the whole "
        "budget: one this size beat a search of smaller models"
    )
    plan = make_plan(config.budget, speed.step_s, [Rung(1, 0.0)], workers=workers, note=note,
                     slice_overhead_s=SLICE_OVERHEAD_S + speed.score_s,
                     grown={"params": params, "step_s": step_s, "changes": changes})  # fmt: skip
    return plan, pick


def grown_default(
    config: TournamentConfig, dataset: Dataset, speed: Speed, measure: bool = True, space: SearchSpace | None = None
) -> tuple[tokenizers.TokenizerPick, float, float, dict[str, Any]] | None:
    """(its tokenizer, passes over the text, seconds a step, the changes its pace is kept under) of the larger
    default where the budget holds it (GROWN_MIN_PASSES, GROWN_MIN_STEPS) on a CPU; None where the user asked
    for characters, a search even of a short budget, a base model or a field of its shape, where `space` (the
    budget's default) does not hold it, or where its pace is not measured yet and `measure` is False (another
    job is running: the plan is the usual one then)."""
    if not _may_grow(config, dataset, space):
        return None
    as_bpe = dataset.vocab.kind == "bpe"
    chars_per_token = 1 / dataset.tokens_per_char["train"] if as_bpe else tokenizers.CHARS_PER_BPE_TOKEN
    default = default_params(config.overrides)
    chars_per_step = default["batch_size"] * default.get("grad_accum", 1) * GROWN_SHAPE["block_size"] * chars_per_token
    vocab_size = len(dataset.vocab) if as_bpe else tokenizers.BPE_SIZE
    ratio = _step_flops(default | GROWN_SHAPE, vocab_size) / _step_flops(default, len(dataset.vocab))
    fastest_s, slowest_s = speed.step_s * max(1.0, ratio / FASTEST_SHARE), speed.step_s * ratio * SLOWEST_SHARE
    passes_a_step = tokenizers.expected_passes(dataset, 1.0, 1.0, chars_per_step)
    if not _fits(config.budget, fastest_s, slowest_s, passes_a_step):
        return None
    changes = GROWN_SHAPE | {"vocab_size": vocab_size}
    pace = measured_speed(config, dataset, measure, changes)
    if pace is None or not _fits(config.budget, pace.step_s, pace.step_s, passes_a_step):
        return None
    passes = config.budget / pace.step_s * passes_a_step
    if as_bpe:
        pick = tokenizers.TokenizerPick(AS_PREPARED, 0, f"the dataset's own BPE of {len(dataset.vocab)} tokens")
    elif config.tokenizer == "bpe":
        pick = tokenizers.TokenizerPick("bpe", tokenizers.BPE_SIZE, f"BPE {tokenizers.BPE_SIZE}, as asked")
    else:
        why = (f"BPE {tokenizers.BPE_SIZE}: a BPE has beaten characters by {tokenizers.BPE_GAIN} where a budget "
               "read the text a few times")  # fmt: skip
        pick = tokenizers.TokenizerPick("bpe", tokenizers.BPE_SIZE, why)
    return pick, passes, pace.step_s, changes


def _may_grow(config: TournamentConfig, dataset: Dataset, space: SearchSpace | None) -> bool:
    """Whether nothing the user fixed or asked for rules the larger default out, on a CPU (where it was measured)."""
    as_bpe = dataset.vocab.kind == "bpe"
    wanted = config.tokenizer in ("auto", "bpe") or (config.tokenizer == "prepared" and as_bpe)
    fixed = set(config.overrides) & {*GROWN_SHAPE, "head_size", "init_from"}
    cpu = device_kind(config.device) == "cpu"
    return (
        wanted
        and not fixed
        and cpu
        and config.search_rungs != 1
        and _space_holds(space or SearchSpace.for_budget("cpu"))
    )


def _fits(budget_s: float, fastest_s: float, slowest_s: float, passes_a_step: float) -> bool:
    """Whether a step taking `fastest_s` to `slowest_s` may train within the window in `budget_s`."""
    most, least = budget_s / fastest_s, budget_s / slowest_s  # steps
    enough = most >= GROWN_MIN_STEPS and most * passes_a_step >= GROWN_MIN_PASSES
    possible = GROWN_MIN_STEPS * passes_a_step <= tokenizers.MAX_BPE_PASSES  # a small text: too many passes first
    return enough and possible and least * passes_a_step <= tokenizers.MAX_BPE_PASSES


def _step_flops(params: dict[str, Any], vocab_size: int) -> float:
    model_config = replace_known(ModelConfig(vocab_size=vocab_size), params)
    return flops_per_token(model_config) * params["batch_size"] * params.get("grad_accum", 1) * model_config.block_size


def _space_holds(space: SearchSpace) -> bool:
    """Whether `space` holds the larger shape (a user's may be narrower)."""
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

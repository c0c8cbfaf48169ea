"""A tournament's plan: how many rungs of how many candidates for how many seconds a budget holds, and the
smallest budgets that train, search and search briefly."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from core.tune.config import TuningError

PLAN_ATTR = "tournament"


# Seconds kept free at the end for the final evaluation and save, and per exploration slice for building,
# loading and checkpointing a candidate; scoring it is measured (`measure_score_s`) and kept on top, since a
# fixed allowance let slices overrun and the final rung shrink (RESULTS.md, Tuning within one budget).
END_MARGIN_S, SLICE_OVERHEAD_S = 5.0, 1.0


FINAL_TOKEN_SCALE = 2


@dataclass
class Rung:
    candidates: int
    seconds: float  # training time of each candidate in this rung (the last rung: what the budget leaves)


@dataclass
class Plan:
    budget_s: float
    workers: int
    rungs: list[Rung]
    score_fraction: float  # of an exploration slice spent on the scoring cooldown branch
    final_cooldown: float  # of the final rung spent decaying
    started: float  # wall clock (time.time) when the tournament began
    step_s: float  # measured seconds a step of the default model
    note: str = ""  # why there is no search, when there is none
    slice_overhead_s: float = SLICE_OVERHEAD_S  # kept per exploration slice for what is not training (scoring, loading)
    # The survivor's tokens a step in the final rung, as a multiple of its own: short slices favour small steps,
    # long runs larger ones (RESULTS.md). Taken as a longer context where the model can read one
    # (`final_shape`), else as a larger batch.
    final_token_scale: int = FINAL_TOKEN_SCALE
    final_longer_context: bool = True
    tokenizer: dict[str, Any] = field(default_factory=dict)  # the default candidate's (core.tune.tokenizer)
    grown: dict[str, Any] = field(default_factory=dict)  # a larger default for a long budget (core.tune.budget)

    @property
    def deadline(self) -> float:
        return self.started + self.budget_s

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        # a plan recorded by earlier code goes on as it began: a final rung at the survivor's own shape, or at a
        # larger batch (its scale then named final_batch_scale)
        data = dict(data)
        old = {"final_token_scale": data.pop("final_batch_scale", 1), "final_longer_context": False}
        return cls(**{**old, **data, "rungs": [Rung(**r) for r in data["rungs"]]})

    @property
    def final_step_s(self) -> float:
        """The expected pace of the final rung's model (a plan without search trains its default as it is)."""
        return self.grown.get("step_s") or self.step_s * (self.final_token_scale if self.searches else 1)

    @property
    def searches(self) -> bool:
        """False for a budget too short for a search that pays: the default trains for all of it."""
        return len(self.rungs) > 1

    def tokenizer_text(self) -> str:
        """What the plan does about the tokenizer, first: which one and why, and what building it cost."""
        pick = self.tokenizer
        if not pick:
            return ""
        built = f" (built in {_clock(pick['build_s'])})" if pick.get("build_s") else ""
        return f"{pick['why']}{built}; "

    def describe(self) -> str:
        return self.tokenizer_text() + self._rungs_text()

    def _rungs_text(self) -> str:
        if not self.searches:
            return self.note or "no search: the default configuration trains for all of the budget"
        larger = "context (or batch)" if self.final_longer_context else "batch"
        final = "1 x the rest" + (f" at {self.final_token_scale}x its {larger}" if self.final_token_scale > 1 else "")
        parts = [f"{r.candidates} x {r.seconds:.0f}s" for r in self.rungs[:-1]] + [final]
        return f"{len(self.rungs)} rungs: " + ", then ".join(parts)

    def summary(self) -> str:
        """The plan in a user's words: the tokenizer, who trains for how long."""
        if not self.searches:
            return self.describe()
        rounds = [math.ceil(r.candidates / self.workers) for r in self.rungs[:-1]]
        explore = sum(n * (r.seconds + self.slice_overhead_s) for n, r in zip(rounds, self.rungs[:-1]))
        final_s = max(0.0, self.budget_s - explore - END_MARGIN_S)
        first, *rest = self.rungs[:-1]
        parts = [f"{first.candidates} candidates train {_clock(first.seconds)} each"]
        parts += [f"the best {r.candidates} go on for {_clock(r.seconds)} more" for r in rest]
        longer = " at twice its context" if self.final_token_scale > 1 and self.final_longer_context else ""
        said = ", then ".join(parts) + f"; the winner trains for the last {_clock(final_s)}{longer} and is saved"
        said = self.tokenizer_text() + said
        return f"{said} ({self.note})" if self.note else said


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 0.02 else f"{seconds * 1000:.0f} ms"


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds}s"


def plan_tournament(
    budget_s: float,
    step_s: float,
    *,
    workers: int = 1,
    eta: int = 3,
    final_share: float = 0.7,
    min_steps: int | None = None,
    max_rungs: int = 4,
    search_rungs: int = 2,
    slice_overhead_s: float = SLICE_OVERHEAD_S,
) -> Plan:
    """Rungs for a budget: the most rungs whose first slice still trains `min_steps` steps at `step_s`
    seconds a step (the measured speed of the default model here); exploration rungs each take the same wall
    time, their slices run by `workers` at once (a rung of 3 on 2 workers takes two slices' time, not 1.5),
    and the final rung gets the rest, at least `final_share` of the budget.

    A search needs `search_rungs` exploration rungs: with one, every candidate but the winner is judged on a
    single short slice and its time is lost, which cost more than the best neighbour of the default gained
    at 10 minutes on 2 cores (docs/tuning.md, Tuning within one budget). A budget that holds one rung but not
    `search_rungs`, or none, is spent on the default configuration alone; one shorter than `budget_minimums`'s
    run_s (a first slice of the default, its scoring and the final save) is refused with that number.

    `search_rungs` 1 is a short search ("search even if the budget is short"): where no rung of candidates
    trains `min_steps`, one rung of `eta` (else 2) candidates of at least SHORT_MIN_STEPS, said in the note."""
    if not budget_s > 0 or not math.isfinite(budget_s):
        raise TuningError(f"the budget must be a positive duration, e.g. 10m or 1h, got {budget_s!r}")
    if eta < 2:
        raise TuningError(f"eta must be >= 2, got {eta}")
    if not 0 < final_share < 1:
        raise TuningError(f"final_share must be in (0, 1), got {final_share}")
    if not 1 <= search_rungs < max_rungs:
        raise TuningError(f"search_rungs must be in [1, {max_rungs - 1}], got {search_rungs}")
    least = budget_minimums(step_s, workers=workers, eta=eta, final_share=final_share, min_steps=min_steps,
                            search_rungs=search_rungs, slice_overhead_s=slice_overhead_s)  # fmt: skip
    min_steps = min_steps or MIN_STEPS
    min_slice = max(2.0, min_steps * step_s)
    explore_s = (1 - final_share) * (budget_s - END_MARGIN_S)

    def plan(rungs: list[Rung], note: str = "") -> Plan:
        return make_plan(budget_s, step_s, rungs, workers=workers, slice_overhead_s=slice_overhead_s, note=note)

    for rungs in range(max_rungs, 1, -1):
        per_rung = explore_s / (rungs - 1)  # wall time: `workers` slices run at once, in ceil(n / workers) rounds
        counts = [eta ** (rungs - 1 - k) for k in range(rungs - 1)]
        slices = [per_rung / math.ceil(n / workers) - slice_overhead_s for n in counts]
        if slices[0] >= min_slice:
            if rungs - 1 < search_rungs:
                return plan([Rung(1, 0.0)], _no_search_note(budget_s, least, f"holds {rungs - 1} exploration rung(s)"))
            return plan([Rung(n, s) for n, s in zip(counts, slices)] + [Rung(1, 0.0)], _short_note(search_rungs,
                        slices[0], step_s))  # fmt: skip
    for count in (eta, 2) if search_rungs == 1 else ():  # a short search: the most candidates that fit
        first = explore_s / math.ceil(count / workers) - slice_overhead_s
        if first >= max(2.0, SHORT_MIN_STEPS * step_s):
            return plan([Rung(count, first), Rung(1, 0.0)], _short_note(search_rungs, first, step_s))
    if budget_s >= least.run_s:
        return plan([Rung(1, 0.0)], _no_search_note(budget_s, least, "is too short for a search"))
    raise TuningError(
        f"a budget of {budget_s:.0f}s is too short to train even the default model ({min_steps} steps at the "
        f"measured {step_s * 1000:.0f} ms/step, then its evaluation and save); give at least {math.ceil(least.run_s)}s"
    )


def make_plan(
    budget_s: float,
    step_s: float,
    rungs: list[Rung],
    *,
    workers: int = 1,
    slice_overhead_s: float = SLICE_OVERHEAD_S,
    note: str = "",
    **fields: Any,
) -> Plan:
    """A plan of these rungs starting now, with the schedule every tournament uses."""
    return Plan(budget_s, workers, rungs, score_fraction=0.2, final_cooldown=0.4, started=time.time(), step_s=step_s,
                slice_overhead_s=slice_overhead_s, note=note, **fields)  # fmt: skip


MIN_STEPS = 150  # steps of a candidate's first slice that judge it reliably


SHORT_MIN_STEPS = 40  # what a short search (search_rungs 1) accepts instead


@dataclass
class Minimums:
    """The smallest budgets, in seconds: one that trains the default model, one that searches, and one that
    searches when a short search is asked for (the smallest: two candidates of SHORT_MIN_STEPS)."""

    run_s: float
    search_s: float
    short_search_s: float = 0.0


def budget_minimums(
    step_s: float,
    *,
    workers: int = 1,
    eta: int = 3,
    final_share: float = 0.7,
    min_steps: int | None = None,
    search_rungs: int = 2,
    slice_overhead_s: float = SLICE_OVERHEAD_S,
) -> Minimums:
    """The same for every budget: they depend on the speed and the search's shape only."""
    slice_s = max(2.0, (min_steps or MIN_STEPS) * step_s) + slice_overhead_s
    short_slice_s = max(2.0, SHORT_MIN_STEPS * step_s) + slice_overhead_s
    search_s = _smallest_budget(max(search_rungs, 2), eta, slice_s, workers, final_share)
    return Minimums(
        run_s=math.ceil(slice_s + END_MARGIN_S),
        search_s=math.ceil(search_s),
        short_search_s=math.ceil(_smallest_budget(1, 2, short_slice_s, workers, final_share)),
    )


def _short_note(search_rungs: int, first_slice_s: float, step_s: float) -> str:
    if search_rungs != 1:
        return ""
    steps = int(first_slice_s / step_s)
    if steps >= MIN_STEPS:
        return ""
    return f"a short search: about {steps:,} steps a candidate, fewer than the {MIN_STEPS} that judge one reliably"


def _no_search_note(budget_s: float, least: Minimums, why: str) -> str:
    return (
        f"no search: {budget_s:.0f}s {why}, and a search that pays needs at least {least.search_s:.0f}s (a short "
        f"search {least.short_search_s:.0f}s); the default configuration trains for all of it"
    )


def _smallest_budget(search_rungs: int, eta: int, slice_s: float, workers: int, final_share: float) -> float:
    """The budget whose exploration share holds `search_rungs` rungs of equal wall time, the first of
    eta**search_rungs candidates of `slice_s` seconds each (overhead included), `workers` at a time."""
    per_rung = math.ceil(eta**search_rungs / workers) * slice_s
    return search_rungs * per_rung / (1 - final_share) + END_MARGIN_S

"""Tuning within one wall-time budget: successive halving whose last rung is the final training.

    plan = plan_tournament(budget_s=1200, step_s=0.12)        # rungs: candidates and seconds each
    model_dir = run_tournament(config, space, models_dir="models", name="best")

Many candidates train for a short slice; the best 1/eta are *continued from their own checkpoint* for a
slice eta times longer, and so on; the survivor of the last rung trains until the budget ends and is saved
as `models/<name>/`, so the compute spent on it is kept. Candidates train with a warmup-stable-decay
schedule held at the stable rate, so a checkpoint can be continued; each exploration slice ends with a short
cooldown *branch* (a copy, discarded) that gives the score, so rungs compare candidates as they would be
after their decay. The configuration `train` uses by default is always a candidate, and so are its
`neighbours` that the search space allows; a seeded draw of the space fills the rest.

Every rung of every candidate is a trial of one Optuna study (user attributes `candidate`, `rung`,
`parent`), so storages, heartbeats, optuna-dashboard and `train --from-study` keep working. Work is handed
out through the study itself: rung-0 candidates and promotions are enqueued trials that any worker pops,
and a trial of a killed worker is failed by its heartbeat and queued again by Optuna, to be continued from
the candidate's last checkpoint (the end of its previous rung).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import statistics
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import TrialState

from core import checkpoint as ckpt
from core.config import ModelConfig, TrainConfig, recipe_configs, replace_known, to_dict
from core.data import Dataset, require_dataset
from core.device import pick_device
from core.fileio import atomic_write_text
from core.model import GPT
from core.runs import claim_model_dir
from core.trainer import TrainHooks, split_loss, train
from core.tuning import (
    MACHINE_THREADS_ENV,
    SearchSpace,
    TuneConfig,
    TuningError,
    apply_params,
    create_study,
    open_study,
    write_study_best_params,
)
from core.variants import open_dataset

log = logging.getLogger(__name__)
# Heartbeats run by hand here (get_heartbeat_thread), which Optuna warns about outside Study.optimize.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")

PLAN_ATTR = "tournament"
SCORE_CHARS = 65_536  # validation characters scored per candidate: the same evenly spread windows for all
RUNGS_JSON = "rungs.json"  # in the final model's folder: the survivor's rungs
STOPPED_REASON = "stopped by the user"
REPORT_EVERY_S = 2.0  # between step events of a running rung
_POLL_S = 1.0


# Seconds kept free at the end for the final evaluation and save, and per exploration slice for building,
# loading and checkpointing a candidate; scoring it is measured (`measure_score_s`) and kept on top. With a
# fixed 1 s for all of it, a 30-minute Bible tournament's 29 s slices took 36-38 s and its final rung got 67%
# of the budget, not the planned 70% (scoring 65,536 characters with the default model alone: 2.3 s).
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
    # long runs larger ones (3x128 at context 128, Shakespeare, 30 min, seed 1: batch 12 1.319, 24 1.306, 48
    # 1.306). Taken as a longer context where the model can read one (`final_shape`), else as a larger batch.
    final_token_scale: int = FINAL_TOKEN_SCALE
    final_longer_context: bool = True

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
    def searches(self) -> bool:
        """False for a budget too short for a search that pays: the default trains for all of it."""
        return len(self.rungs) > 1

    def describe(self) -> str:
        if not self.searches:
            return self.note or "no search: the default configuration trains for all of the budget"
        grown = "context (or batch)" if self.final_longer_context else "batch"
        final = "1 x the rest" + (f" at {self.final_token_scale}x its {grown}" if self.final_token_scale > 1 else "")
        parts = [f"{r.candidates} x {r.seconds:.0f}s" for r in self.rungs[:-1]] + [final]
        return f"{len(self.rungs)} rungs: " + ", then ".join(parts)

    def summary(self) -> str:
        """The plan in a user's words: who trains for how long."""
        if not self.searches:
            return self.describe()
        rounds = [math.ceil(r.candidates / self.workers) for r in self.rungs[:-1]]
        explore = sum(n * (r.seconds + self.slice_overhead_s) for n, r in zip(rounds, self.rungs[:-1]))
        final_s = max(0.0, self.budget_s - explore - END_MARGIN_S)
        first, *rest = self.rungs[:-1]
        parts = [f"{first.candidates} candidates train {_clock(first.seconds)} each"]
        parts += [f"the best {r.candidates} go on for {_clock(r.seconds)} more" for r in rest]
        grown = " at twice its context" if self.final_token_scale > 1 and self.final_longer_context else ""
        said = ", then ".join(parts) + f"; the winner trains for the last {_clock(final_s)}{grown} and is saved"
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
        return Plan(
            budget_s, workers, rungs, score_fraction=0.2, final_cooldown=0.4, started=time.time(), step_s=step_s,
            slice_overhead_s=slice_overhead_s, note=note,
        )  # fmt: skip

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


WARM_STEPS, TIMED_BLOCKS, BLOCK_STEPS = 5, 4, 5  # how the default model's pace is measured


def measure_step_s(config: TuneConfig, dataset: Dataset) -> float:
    """Seconds a step of the default model takes here: the median of TIMED_BLOCKS x BLOCK_STEPS steps timed
    after WARM_STEPS (allocations, the first kernels), so that a burst of stalls (another process on the cores)
    does not move it. Eagerly: where the run compiles, it does so because compiled steps are faster."""
    model_config, train_config = candidate_configs(default_params(config.overrides), config, 0, len(dataset.vocab))
    steps = WARM_STEPS + TIMED_BLOCKS * BLOCK_STEPS + 1
    train_config = replace_known(train_config, {"max_iters": steps, "max_minutes": 0.0, "warmup_iters": 0,
                                                "compile": "off"})  # fmt: skip
    timings: list[float] = []
    train(model_config, train_config, dataset=dataset, hooks=TrainHooks(on_step=lambda e: timings.append(e.elapsed_s)))
    gaps = [b - a for a, b in zip(timings, timings[1:])][WARM_STEPS:]
    return statistics.median(gaps)


def measure_score_s(config: TuneConfig, dataset: Dataset) -> float:
    """Seconds scoring the default model takes here (the end of every exploration slice)."""
    model_config, _ = candidate_configs(default_params(config.overrides), config, 0, len(dataset.vocab))
    model = GPT(model_config).to(pick_device(config.device))
    started = time.perf_counter()
    _score(model, dataset)
    return time.perf_counter() - started


# --- candidates ------------------------------------------------------------------------------------


def default_params(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The configuration `train` uses by default, as tuned parameters, with the fields the user fixed."""
    model_config, train_config = recipe_configs()
    values = {k: v for k, v in (to_dict(model_config) | to_dict(train_config)).items() if k in _TUNABLE}
    return values | (overrides or {})


_TUNABLE = {
    "n_layer",
    "n_head",
    "n_embd",
    "block_size",
    "dropout",
    "batch_size",
    "lr",
    "weight_decay",
    "optimizer",
    "muon_lr",
    "pos_encoding",
    "norm",
    "mlp",
    "qk_norm",
}


def candidate_configs(
    params: dict[str, Any], config: TuneConfig, candidate: int, vocab_size: int
) -> tuple[ModelConfig, TrainConfig]:
    """A candidate's configs for one slice: the stable phase of wsd (no decay), warmup by steps, one cheap
    evaluation at the end (the score comes from `split_loss`).

    Warmup lasts as many tokens as the default's (unless the user set --warmup-iters): 100 steps at context
    256 are four times the default's tokens, and a first slice of 20 s that such a candidate spent all in
    warmup judged it on a rate it had not reached yet."""
    base = replace_known(
        TrainConfig(),
        {
            "data_dir": config.data_dir,
            "device": config.device,
            "seed": config.seed * 100_003 + candidate,
            "max_iters": 10**9,
            "schedule": "wsd",
            "cooldown_fraction": 0.0,
            "warmup_fraction": 0.0,
            "eval_interval": 10**9,
            "eval_iters": 2,
            "eval_train": False,
            "sample_chars": 0,
        },
    )
    model_config, train_config = apply_params(params, ModelConfig(vocab_size=vocab_size), base)
    warmup = train_config.warmup_iters
    if "warmup_iters" not in (config.overrides or {}):
        default = default_params(config.overrides)
        tokens = train_config.batch_size * train_config.grad_accum * model_config.block_size
        default_tokens = default["batch_size"] * default.get("grad_accum", 1) * default["block_size"]
        warmup = max(1, round(warmup * default_tokens / tokens))
    # warmup by steps only, whatever the params say: a continued candidate must not warm up again
    return model_config.validate(), replace_known(
        train_config, {"warmup_fraction": 0.0, "warmup_iters": warmup}
    ).validate()


def neighbours(default: dict[str, Any]) -> list[dict[str, Any]]:
    """Changes of the default that gain as training grows longer, the measured best first: a longer context
    with one layer fewer to pay for it, lower Muon rates, a longer context alone, a wider model. Measured on
    Shakespeare, 2 cores, seed 0, each trained 4 minutes (the default: 1.522 on the whole validation split):
    context 128 -0.024, context 256 -0.021, 3 layers at context 128 -0.039, and at 3 layers, context 128
    Muon 0.02 1.483, 0.01 1.464, 0.005 1.451. All eight tournaments of 30 minutes so far (2 corpora, seeds
    0-1) were won by 3 layers at context 128, with Muon at 0.01 or 0.005 (docs/tuning.md, Tuning within one budget)."""
    context, layers, head_size = default["block_size"], default["n_layer"], default["n_embd"] // default["n_head"]
    shallower_and_longer = {"block_size": 2 * context, "n_layer": layers - 1}
    return [
        shallower_and_longer | {"muon_lr": default["muon_lr"] / 2},
        shallower_and_longer | {"muon_lr": default["muon_lr"] / 4},
        shallower_and_longer,
        {"block_size": 2 * context},
        {"block_size": 4 * context, "n_layer": layers - 1},
        {"block_size": 2 * context, "n_embd": default["n_head"] * (head_size * 3 // 2)},
    ]


def first_candidates(
    space: SearchSpace, count: int, seed: int, overrides: dict[str, Any] | None = None
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(params, the space's values of them) of a first rung: the default configuration, its `neighbours`
    that the space allows, then a seeded random sample of the space (the random start-up phase of a seeded
    TPE sampler). A candidate the space cannot express records no values (the default, often)."""
    default = default_params(overrides)
    out: list[tuple[dict[str, Any], dict[str, Any]]] = [(default, {})]
    for change in neighbours(default):
        params = default | change | (overrides or {})
        values, searched = space.in_space_terms(params), space.searched_values(params)
        changed = ["head_size" if k == "n_embd" else k for k in change]
        in_space = searched is not None and all(space.allows(k, values[k]) for k in changed)
        if in_space and all(params != p for p, _ in out):
            out.append((params, searched))
    draw = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
    while len(out) < count:
        trial = draw.ask()
        out.append((space.suggest(trial) | (overrides or {}), dict(trial.params)))
        draw.tell(trial, state=TrialState.PRUNED)
    return out[:count]


def init_tournament(
    study: optuna.Study, plan: Plan, space: SearchSpace, seed: int, overrides: dict[str, Any] | None = None
) -> Plan:
    """Record the plan and enqueue the first rung's candidates (`first_candidates`), once per study (later
    calls return the recorded plan)."""
    recorded = study.user_attrs.get(PLAN_ATTR)
    if recorded:
        return Plan.from_json(recorded)
    study.set_user_attr(PLAN_ATTR, plan.to_json())
    study.set_user_attr("search_space", space.to_json())
    for candidate, (params, fixed) in enumerate(first_candidates(space, plan.rungs[0].candidates, seed, overrides)):
        study.enqueue_trial(
            fixed, user_attrs={"candidate": candidate, "rung": 0, "parent": None, "params": params, "fixed": fixed}
        )
    return plan


# --- running ---------------------------------------------------------------------------------------


@dataclass
class RungEvent:
    """What a running tournament reports: a rung of a candidate started or ended, or a promotion."""

    kind: str  # plan, start, step (every few seconds inside a rung), end, promote, done
    rung: int
    candidate: int | None = None
    trial: int | None = None
    score: float | None = None
    seconds: float = 0.0
    alive: int = 0
    time_left_s: float = 0.0
    message: str = ""
    step: int = 0  # the candidate's training steps so far (its earlier rungs included)
    loss: float | None = None  # its latest training loss (step events)
    step_s: float | None = None  # its pace: the median of its recent steps (step events)

    def text(self) -> str:
        """One line for a person: the CLI prints it, the Tune tab shows it."""
        if self.kind == "step" and self.message:
            return f"rung {self.rung}: candidate {self.candidate}: {self.message}"
        if self.kind == "step":
            pace = f", {fmt_ms(self.step_s)} a step" if self.step_s else ""
            return (
                f"rung {self.rung}: candidate {self.candidate} at step {self.step:,}, train loss {self.loss:.3f}{pace}"
            )
        if self.kind == "start":
            return f"rung {self.rung} ({self.alive} alive): training candidate {self.candidate}"
        if self.kind == "end":
            score = f"val {self.score:.4f}" if self.score is not None else self.message
            return (
                f"rung {self.rung}: candidate {self.candidate} (trial {self.trial}) {score} after {self.seconds:.0f}s"
            )
        return self.message


def prepare_tournament(
    config: TuneConfig, space: SearchSpace, *, workers: int = 1, worker: int = 0, dataset: Dataset | None = None
) -> tuple[optuna.Study, Plan]:
    """The study and its plan: made once (the budget's clock starts here, before the speed is measured), and
    read back by every later call, so workers and a restarted run follow the same plan."""
    config.validate()
    space.validate()
    if not config.budget > 0:
        raise TuningError("a tournament needs a budget > 0, e.g. --budget 10m")
    started = time.time()
    study = create_study(config, worker)
    recorded = study.user_attrs.get(PLAN_ATTR)
    if recorded:
        return study, Plan.from_json(recorded)
    dataset = dataset or Dataset(config.data_dir)
    plan = plan_for(config, measured_speed(config, dataset), workers=workers)
    plan.started = started
    plan = init_tournament(study, plan, space.fixing(config.overrides), config.seed, config.overrides)
    log.info(
        "tournament plan (default model at %.0f ms/step, %.1f s a slice besides training): %s",
        plan.step_s * 1000, plan.slice_overhead_s, plan.describe(),
    )  # fmt: skip
    return study, plan


@dataclass
class Speed:
    """What the plan of a budget rests on, measured with the default model on this device and dataset."""

    step_s: float  # seconds a training step
    score_s: float  # seconds scoring a candidate at the end of a slice


SPEED_FILE = ".tournament_speed.json"  # in the dataset folder: one measurement per device and default model


def measured_speed(config: TuneConfig, dataset: Dataset, measure: bool = True) -> Speed | None:
    """The default model's speed here, measured once per dataset, device and fixed fields and then read from
    the dataset folder, so that the minimum budget the page shows is the one Start applies; None when it is
    not known yet and `measure` is False (another job busy on the cores would make a measurement too slow)."""
    key, known = _speed_key(config, dataset), _known_speeds(config)
    if isinstance(known.get(key), dict):
        with contextlib.suppress(TypeError):
            return Speed(**known[key])
    if not measure:
        return None
    speed = Speed(measure_step_s(config, dataset), measure_score_s(config, dataset))
    _write_speed(config, key, speed)
    return speed


def record_observed_speed(config: TuneConfig, dataset: Dataset, step_s: float) -> None:
    """The default model's pace as a run found it, over the measured one when they differ by more than
    OBSERVED_MARGIN: the next plan rests on what the machine did, not on a measurement the run disproved."""
    key, known = _speed_key(config, dataset), _known_speeds(config)
    with contextlib.suppress(TypeError):
        speed = Speed(**known[key]) if isinstance(known.get(key), dict) else None
        if speed is not None and abs(step_s / speed.step_s - 1) > OBSERVED_MARGIN:
            log.info("the default model ran at %.0f ms/step, not the measured %.0f: the plans use it from now on",
                     step_s * 1000, speed.step_s * 1000)  # fmt: skip
            _write_speed(config, key, Speed(step_s, speed.score_s))


OBSERVED_MARGIN = 0.2


def _speed_key(config: TuneConfig, dataset: Dataset) -> str:
    device = pick_device(config.device)
    # the threads `train` will use (core.device.configure), not whatever this process has set so far
    threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1) if device.type == "cpu" else 0
    return json.dumps([str(device), threads, len(dataset.vocab), config.overrides], sort_keys=True, default=str)


def _known_speeds(config: TuneConfig) -> dict[str, Any]:
    try:
        known = json.loads((Path(config.data_dir) / SPEED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _write_speed(config: TuneConfig, key: str, speed: Speed) -> None:
    known = _known_speeds(config)
    with contextlib.suppress(OSError):  # a read-only dataset measures again next time
        atomic_write_text(
            Path(config.data_dir) / SPEED_FILE, json.dumps({**known, key: asdict(speed)}, indent=2) + "\n"
        )


def plan_for(config: TuneConfig, speed: Speed, workers: int = 1) -> Plan:
    return plan_tournament(
        config.budget,
        speed.step_s,
        workers=workers,
        eta=config.eta,
        final_share=config.final_share,
        search_rungs=config.search_rungs,
        slice_overhead_s=SLICE_OVERHEAD_S + speed.score_s,
    )


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


def preview(config: TuneConfig, workers: int = 1, measure: bool = True) -> Preview:
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
        return Preview(least, plan_for(config, speed, workers), step_s=speed.step_s)
    except TuningError as err:
        return Preview(least, None, error=str(err), step_s=speed.step_s)


def recorded_plan(config: TuneConfig) -> Plan | None:
    try:
        recorded = open_study(config.study, config.storage).user_attrs.get(PLAN_ATTR)
    except TuningError:
        return None
    return Plan.from_json(recorded) if recorded else None


def has_plan(config: TuneConfig) -> bool:
    """Whether the study of `config` already holds a tournament (a re-run continues it)."""
    return recorded_plan(config) is not None


def begin_tournament(
    config: TuneConfig, space: SearchSpace | None, name: str, models_dir: str | Path, *, overwrite: bool = False
) -> tuple[Path, SearchSpace, bool]:
    """Check a budgeted run's inputs and claim its model folder, for every front end: (the final model's
    folder, the search space, whether the study's recorded tournament is continued)."""
    if not config.budget > 0:
        raise TuningError("the budget must be a positive duration, e.g. 10m or 1h")
    config.validate()
    space = (space or SearchSpace.for_budget(config.device)).validate()
    require_dataset(config.data_dir)
    out_dir = ckpt.model_dir(name, models_dir)
    plan = recorded_plan(config)
    if plan is not None and _finished(open_study(config.study, config.storage), plan):
        raise TuningError(
            f"the tournament of study {config.study} has finished; give another study name to run a new one"
        )
    claim_model_dir(out_dir, resume=plan is not None, overwrite=overwrite)
    return out_dir, space, plan is not None


def _finished(study: optuna.Study, plan: Plan) -> bool:
    final = _rung_trials(study, len(plan.rungs) - 1)
    return any(t.state == TrialState.COMPLETE for t in final)


def _rung_trials(study: optuna.Study, rung: int) -> list[optuna.trial.FrozenTrial]:
    trials = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("rung") == rung]
    return _dedupe(trials)


def _dedupe(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """One trial per candidate of a rung: a retry replaces its failed original; two promotions of one candidate
    (two workers promoting at once) count once, the lower-numbered."""
    by_candidate: dict[int, optuna.trial.FrozenTrial] = {}
    for trial in sorted(trials, key=lambda t: t.number):
        candidate = trial.user_attrs.get("candidate")
        kept = by_candidate.get(candidate)
        if kept is None or kept.state == TrialState.FAIL:
            by_candidate[candidate] = trial
    return list(by_candidate.values())


def _claim_waiting(study: optuna.Study) -> optuna.Trial | None:
    """A waiting trial, now RUNNING for this worker; None when there is none. `study.ask` would create a
    trial when another worker took the last waiting one between a look and the claim; its pop does not."""
    trial_id = study._pop_waiting_trial_id()
    return None if trial_id is None else optuna.Trial(study, trial_id)


def run_tournament(
    config: TuneConfig,
    space: SearchSpace,
    *,
    name: str,
    models_dir: str | Path = "models",
    worker: int = 0,
    workers: int = 1,
    stop: threading.Event | None = None,
    on_event: Callable[[RungEvent], None] | None = None,
) -> Path | None:
    """Run a budgeted tournament (this worker's share of it); returns the final model's folder, or None when
    another worker trains the final rung or it was stopped. Blocks; stop with `stop`."""
    stop = stop or threading.Event()
    dataset = Dataset(config.data_dir)
    study, plan = prepare_tournament(config, space, workers=workers, worker=worker, dataset=dataset)
    runs_root = Path(config.runs_dir) / config.study
    final_dir = ckpt.model_dir(name, models_dir)
    emit = on_event or (lambda event: None)
    final_rung = len(plan.rungs) - 1
    recorded_space = study.user_attrs.get("search_space") or space.fixing(config.overrides).to_json()
    space = SearchSpace.from_json(recorded_space, base=space)
    _requeue_stopped(study)
    emit(RungEvent("plan", 0, alive=plan.rungs[0].candidates, time_left_s=plan.deadline - time.time(),
                   message=plan.summary()))  # fmt: skip

    while not stop.is_set():
        optuna.storages.fail_stale_trials(study)  # a killed worker's rung comes back as a waiting trial
        if trial := _claim_waiting(study):
            if "rung" not in trial.user_attrs:  # enqueued by hand: not ours to run
                trial.set_user_attr("reason", "not part of the tournament")
                study.tell(trial, state=TrialState.FAIL)
                continue
            _run_rung(study, trial, plan, config, space, dataset, runs_root, final_dir, stop, emit, worker)
            continue
        state = _tournament_state(study, plan)
        if state == "done":
            break
        if state == "busy":
            time.sleep(_POLL_S)  # another worker runs the rest of this rung
        else:
            _promote(study, plan, state, emit)
    final = [t for t in _rung_trials(study, final_rung) if t.state == TrialState.COMPLETE]
    if final and final_dir.is_dir() and not stop.is_set():
        shutil.rmtree(runs_root, ignore_errors=True)  # the candidates' checkpoints: the survivor lives on in final_dir
        emit(
            RungEvent(
                "done",
                final_rung,
                final[0].user_attrs.get("candidate"),
                final[0].number,
                final[0].value,
                message=f"saved {final_dir}",
            )
        )
        return final_dir
    return None


def _requeue_stopped(study: optuna.Study) -> None:
    """Queue again the rungs a user stopped that no later trial took up, so that this run continues them."""
    trials = study.get_trials(deepcopy=False)

    def place(t: optuna.trial.FrozenTrial) -> tuple:
        return t.user_attrs.get("rung"), t.user_attrs.get("candidate")

    for trial in trials:
        attrs = trial.user_attrs
        stopped = trial.state == TrialState.FAIL and attrs.get("reason") == STOPPED_REASON and "rung" in attrs
        if stopped and not any(t.number > trial.number and place(t) == place(trial) for t in trials):
            kept = {k: v for k, v in attrs.items() if k not in ("reason", "seconds", "steps", "worker")}
            study.enqueue_trial(trial.params, user_attrs=kept)


def _tournament_state(study: optuna.Study, plan: Plan) -> str | int:
    """ "busy" while a rung still has running or queued trials, the number of a finished rung whose
    candidates are to be promoted, or "done" once the final rung has ended."""
    for rung in range(len(plan.rungs)):
        trials = _rung_trials(study, rung)
        if not trials:
            return rung - 1
        if any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials):
            return "busy"
    return "done"


def _promote(study: optuna.Study, plan: Plan, rung: int, emit: Callable[[RungEvent], None]) -> None:
    """Enqueue the best candidates of a finished rung for the next one (idempotent: already promoted ones
    are skipped)."""
    scored = sorted(
        (t for t in _rung_trials(study, rung) if t.state == TrialState.COMPLETE and t.value is not None),
        key=lambda t: t.value,
    )
    if not scored:
        raise TuningError(f"no candidate of rung {rung} finished; see the failed trials' 'reason' attribute")
    already = {t.user_attrs.get("candidate") for t in _rung_trials(study, rung + 1)}
    keep = plan.rungs[rung + 1].candidates
    for parent in scored[:keep]:
        candidate = parent.user_attrs["candidate"]
        if candidate in already:
            continue
        study.enqueue_trial(
            parent.params,
            user_attrs={
                "candidate": candidate,
                "rung": rung + 1,
                "parent": parent.number,
                "params": parent.user_attrs["params"],
                "fixed": parent.params,
            },
        )
    emit(
        RungEvent(
            "promote",
            rung + 1,
            alive=min(keep, len(scored)),
            time_left_s=plan.deadline - time.time(),
            message=f"promoted candidates {[t.user_attrs['candidate'] for t in scored[:keep]]} to rung {rung + 1}",
        )
    )


def _run_rung(
    study: optuna.Study,
    trial: optuna.Trial,
    plan: Plan,
    config: TuneConfig,
    space: SearchSpace,
    dataset: Dataset,
    runs_root: Path,
    final_dir: Path,
    stop: threading.Event,
    emit: Callable[[RungEvent], None],
    worker: int,
) -> None:
    attrs = trial.user_attrs
    rung, candidate = attrs["rung"], attrs["candidate"]
    trial.set_user_attr("worker", worker)
    siblings = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get("rung") == rung
        and t.user_attrs.get("candidate") == candidate
        and t.number < trial.number
        and t.state in (TrialState.RUNNING, TrialState.COMPLETE)
    ]
    if siblings:  # a second promotion of the same candidate
        trial.set_user_attr("reason", f"duplicate of trial {siblings[0].number}")
        study.tell(trial, state=TrialState.PRUNED)
        return
    params = attrs["params"]
    if attrs.get("fixed"):
        space.suggest(trial)  # records the enqueued values as the trial's params, for the dashboard
    final = rung == len(plan.rungs) - 1
    folder = runs_root / f"candidate-{candidate:03d}"
    started = time.time()
    emit(
        RungEvent(
            "start",
            rung,
            candidate,
            trial.number,
            alive=plan.rungs[rung].candidates,
            time_left_s=plan.deadline - started,
        )
    )
    owned = _Ownership(study, trial, stop)
    watch = _RungWatch(trial, rung, candidate, plan, emit)

    def abandon() -> None:
        message = f"lost: trial {trial.number} was failed as stale (its heartbeats were late); its retry goes on"
        log.warning(message)
        emit(RungEvent("end", rung, candidate, trial.number, None, time.time() - started, message=message))

    with get_heartbeat_thread(trial._trial_id, study._storage):
        try:
            model_config, train_config = candidate_configs(params, config, candidate, len(dataset.vocab))
            if Path(train_config.data_dir) != dataset.data_dir:  # a tokenizer the space searches
                dataset = open_dataset(train_config.data_dir)
            dataset.check_block_size(model_config.block_size)
            if final:
                model_config, train_config = final_shape(
                    plan, space, model_config, train_config, dataset, rung, fixed=set(config.overrides or {})
                )
                score = _final_rung(trial, plan, model_config, train_config, dataset, folder, final_dir, owned, rung,
                                    watch)  # fmt: skip
            else:
                score = _exploration_rung(plan, rung, model_config, train_config, dataset, folder, owned, watch)
        except Exception as err:
            if owned.check():  # its retry may have moved the candidate's files under it: not this worker's error
                return abandon()
            if not isinstance(err, (ValueError, torch.OutOfMemoryError)):  # a bad combination, divergence, no memory
                raise
            trial.set_user_attr("reason", str(err) or type(err).__name__)
            study.tell(trial, state=TrialState.PRUNED)
            emit(RungEvent("end", rung, candidate, trial.number, None, time.time() - started, message=f"failed: {err}"))
            return
    if owned.check():
        return abandon()
    if rung == 0 and candidate == 0 and watch.pace() is not None:  # the default model, at its own shape
        record_observed_speed(config, dataset, watch.pace())
    trial.set_user_attr("seconds", round(time.time() - started, 2))
    latest = ckpt.latest_checkpoint(final_dir if final else folder)
    trial.set_user_attr("steps", latest.step if latest else 0)  # the candidate's training steps so far
    if math.isfinite(score) and latest is not None and not stop.is_set() and latest.step not in watch.reported:
        trial.report(score, latest.step)  # its score among its intermediate values, for optuna-dashboard
    if stop.is_set():  # a stopped rung is not a result; the next run queues it again (`_requeue_stopped`)
        trial.set_user_attr("reason", STOPPED_REASON)
        study.tell(trial, state=TrialState.FAIL)
        return
    study.tell(trial, score)
    if final:
        write_study_best_params(study, config.storage)
    emit(
        RungEvent(
            "end", rung, candidate, trial.number, score, time.time() - started, time_left_s=plan.deadline - time.time()
        )
    )


class _RungWatch:
    """What a running rung tells: a step event every few seconds (step, loss, time left) and, for the
    dashboard, each evaluation's loss as an intermediate value of its trial."""

    def __init__(self, trial: optuna.Trial, rung: int, candidate: int, plan: Plan, emit: Callable[[RungEvent], None]):
        self.trial, self.rung, self.candidate, self.plan, self.emit = trial, rung, candidate, plan, emit
        self._last = -math.inf
        self._elapsed: list[float] = []
        self.reported: set[int] = set(trial.storage.get_trial(trial._trial_id).intermediate_values)

    def pace(self) -> float | None:
        """The median seconds a step after the first ones (one compile or stall does not move a median)."""
        gaps = [b - a for a, b in zip(self._elapsed, self._elapsed[1:])][WARM_STEPS:]
        return statistics.median(gaps) if len(gaps) >= BLOCK_STEPS else None

    def on_status(self, message: str) -> None:
        self.emit(RungEvent("step", self.rung, self.candidate, self.trial.number, time_left_s=self.plan.deadline - time.time(),
                            alive=self.plan.rungs[self.rung].candidates, message=message))  # fmt: skip

    def on_step(self, event) -> None:
        self._elapsed.append(event.elapsed_s)
        now = time.monotonic()
        if now - self._last < REPORT_EVERY_S:
            return
        self._last = now
        recent = [b - a for a, b in zip(self._elapsed[-21:], self._elapsed[-20:])]
        self.emit(RungEvent("step", self.rung, self.candidate, self.trial.number, alive=self.plan.rungs[self.rung].candidates,
                            time_left_s=self.plan.deadline - time.time(), step=event.step, loss=event.loss,
                            step_s=statistics.median(recent) if len(recent) >= 3 else None))  # fmt: skip

    def on_eval(self, event) -> None:
        if event.step not in self.reported:  # a resumed rung evaluates its first step again: Optuna would warn
            self.reported.add(event.step)
            self.trial.report(event.val_loss, event.step)

    def hooks(self, stop, on_finish=None, reports: bool = False) -> TrainHooks:
        return TrainHooks(on_step=self.on_step, on_eval=self.on_eval if reports else None, should_stop=stop.is_set,
                          on_finish=on_finish, on_status=self.on_status)  # fmt: skip


class _Ownership:
    """What stops a rung, read as `stop.is_set()` by its training: the user's stop, or the trial no longer
    RUNNING in the storage. A trial whose heartbeats came late (a stalled machine) is failed as stale and
    queued again by another worker's check, and its retry then owns the candidate's folder: the original must
    stop writing there within seconds, and report nothing."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial, stop: threading.Event, every_s: float = 2.0):
        self._storage = getattr(study._storage, "_backend", study._storage)  # past the cache: the stored state
        self._trial_id, self._stop, self._every_s = trial._trial_id, stop, every_s
        self._checked, self.lost = time.monotonic(), False

    def check(self) -> bool:
        """Whether the trial was taken from this worker, asked of the storage now."""
        if not self.lost:
            self._checked = time.monotonic()
            self.lost = self._storage.get_trial(self._trial_id).state != TrialState.RUNNING
        return self.lost

    def is_set(self) -> bool:
        if self._stop.is_set():
            return True
        return self.check() if time.monotonic() - self._checked >= self._every_s else self.lost


def _continue(folder: Path, model_config, train_config, dataset, hooks: TrainHooks):
    return train(
        model_config,
        train_config,
        out_dir=folder,
        resume=ckpt.latest_checkpoint(folder) is not None,
        dataset=dataset,
        hooks=hooks,
        budget_spans_resumes=False,  # each slice has its own minutes
    )


def _score(model, dataset: Dataset) -> float:
    """Nats per character on SCORE_CHARS of the validation split (as tokens, for a BPE)."""
    per_token = split_loss(model, dataset.tokens["val"], max_chars=SCORE_CHARS)
    return per_token * dataset.tokens_per_char["val"]


def _exploration_rung(plan, rung, model_config, train_config, dataset, folder: Path, stop, watch: _RungWatch) -> float:
    """Continue the candidate for the stable part of its slice, then score a cooldown branch of it."""
    slice_s = plan.rungs[rung].seconds
    if rung == 0 and folder.exists():  # a retried first slice starts afresh
        shutil.rmtree(folder)
    stable = replace_known(train_config, {"max_minutes": slice_s * (1 - plan.score_fraction) / 60})
    _continue(folder, model_config, stable, dataset, watch.hooks(stop))
    if stop.is_set():  # stopped, or the trial was lost: no score, and no branch beside a retry's
        return math.nan
    branch = folder.parent / f"{folder.name}.branch"
    shutil.rmtree(branch, ignore_errors=True)
    latest = ckpt.latest_checkpoint(folder)
    (branch / ckpt.CHECKPOINT_DIR).mkdir(parents=True)
    shutil.copytree(latest.path, branch / ckpt.CHECKPOINT_DIR / latest.path.name)
    cooldown = replace_known(
        train_config, {"max_minutes": slice_s * plan.score_fraction / 60, "cooldown_fraction": 1.0}
    )
    scores: list[float] = []
    try:
        _continue(branch, model_config, cooldown, dataset,
                  watch.hooks(stop, on_finish=lambda m: scores.append(_score(m, dataset))))  # fmt: skip
    finally:
        shutil.rmtree(branch, ignore_errors=True)
    return scores[0]


@contextlib.contextmanager
def _machine_threads():
    """All of the machine's threads for the final rung of a worker that was given a share of them: the other
    local workers only wait for it, and on 2 cores one thread trains the default model 1.6x slower than two
    (144 against 89 ms a step)."""
    kept, machine = torch.get_num_threads(), int(os.environ.get(MACHINE_THREADS_ENV, "0"))
    if machine > kept:
        torch.set_num_threads(machine)
        log.info("final rung on %d threads (this worker had %d)", machine, kept)
    try:
        yield
    finally:
        torch.set_num_threads(kept)


def final_shape(
    plan: Plan,
    space: SearchSpace,
    model_config: ModelConfig,
    train_config: TrainConfig,
    dataset: Dataset,
    rung: int,
    fixed: set[str] = frozenset(),
) -> tuple[ModelConfig, TrainConfig]:
    """The survivor's configs for the final rung: `plan.final_token_scale` times its tokens a step. A longer
    context where the model reads positions it was not trained at (rotary: its attention sees only relative
    ones), the space allows that context, the user did not fix it and the data hold it; else a larger batch.
    On Shakespeare (3x128, Muon 0.01, 40% cooldown, 20 minutes, seed 2, side by side) context 256 at batch 12
    reached 1.299 where context 128 at batch 24 reached 1.313: the same tokens a step, read further back.
    A plan without search (rung 0 is final) trains the default as it is."""
    scale = plan.final_token_scale
    if rung == 0 or scale == 1:
        return model_config, train_config
    longer = model_config.block_size * scale
    readable = model_config.pos_encoding == "rope" and space.allows("block_size", longer) and "block_size" not in fixed
    if plan.final_longer_context and readable and dataset.holds(longer):
        return replace_known(model_config, {"block_size": longer}).validate(), train_config
    return model_config, replace_known(train_config, {"batch_size": train_config.batch_size * scale}).validate()


def _final_rung(
    trial, plan, model_config, train_config, dataset, folder: Path, final_dir: Path, stop, rung, watch: _RungWatch
) -> float:
    """Continue the survivor in the final model's folder until the budget ends, decaying over its last part."""
    if not (final_dir / ckpt.CHECKPOINT_DIR).is_dir() and rung > 0:
        latest = ckpt.latest_checkpoint(folder)
        if latest is None:
            raise ckpt.ModelError(f"candidate folder {folder} has no checkpoint to continue")
        final_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(latest.path, final_dir / ckpt.CHECKPOINT_DIR / latest.path.name)
    seconds = max(1.0, plan.deadline - time.time() - END_MARGIN_S)
    final_config = replace_known(
        train_config,
        {
            "max_minutes": seconds / 60,
            "cooldown_fraction": plan.final_cooldown,
            "eval_seconds": max(5.0, seconds / 10),
            "eval_iters": 20,
            "sample_chars": 200,
            "checkpoint_interval": max(20, int(30 / max(plan.step_s * plan.final_token_scale, 1e-3))),  # ~ every 30 s
        },
    )
    source = {"study": trial.study.study_name, "trial": trial.number, "tournament": True}
    record = {
        "params": trial.user_attrs["params"],
        # the last rung's shape; the earlier rungs trained at the params' batch and context
        "final_batch_size": final_config.batch_size,
        "final_block_size": model_config.block_size,
        "study": trial.study.study_name,
        "trial": trial.number,
    }
    ckpt.write_best_params(final_dir, record)
    with _machine_threads():
        result = train(
            model_config,
            final_config,
            out_dir=final_dir,
            resume=ckpt.latest_checkpoint(final_dir) is not None,  # none: a plan without search starts the default
            budget_spans_resumes=False,
            dataset=dataset,
            info={"source": source},
            hooks=watch.hooks(stop, reports=True),
        )
    if stop.is_set():  # stopped, or the trial was lost: the run that continues it writes the history
        return math.nan
    history = [
        {
            "rung": t.user_attrs.get("rung"),
            "trial": t.number,
            "seconds": t.user_attrs.get("seconds"),
            "score": t.value,
            "state": t.state.name,
        }
        for t in trial.study.get_trials(deepcopy=False)
        if t.user_attrs.get("candidate") == trial.user_attrs["candidate"] and t.number != trial.number
    ]
    # the winner's value is its card's: the kept weights over the whole validation split
    history.append({"rung": rung, "trial": trial.number, "seconds": seconds, "score": result.shown_val_loss,
                    "state": "COMPLETE"})  # fmt: skip
    atomic_write_text(final_dir / RUNGS_JSON, json.dumps({"plan": plan.to_json(), "rungs": history}, indent=2) + "\n")
    return result.shown_val_loss

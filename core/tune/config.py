"""What a study (`StudyConfig`) or a tournament (`TournamentConfig`) is asked to do, over what both share
(`TuneConfig`); their errors, the studies folder and the pruners."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Self

import optuna

from core.config import DEFAULT_STORAGE, STUDIES_DIR, parse_duration, parse_flops
from core.fileio import valid_name
from core.tracking import check_report_to

PRUNERS = ("percentile", "median", "asha", "hyperband", "none")
TOKENIZER_MODES = ("auto", "char", "prepared", "bpe")  # what a tournament's tokenizer may be (core.tune.tokenizer)


class TuningError(ValueError):
    """A bad search space, storage URL or study; the message says what to change."""


def check_study_name(name: str) -> str:
    if not valid_name(name):
        raise TuningError(f"invalid study name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return name


def make_pruner(
    name: str,
    min_resource: int = 1,
    max_resource: int | str = "auto",
    percentile: float = 100 / 3,
    startup_trials: int = 3,
) -> optuna.pruners.BasePruner:
    """Optuna's pruner `name`; no trial is pruned before `min_resource` steps (the first evaluation).

    `percentile` (the default) stops a trial that is not in the best `percentile` percent of the finished trials
    at the same step, once `startup_trials` have finished (`median` is the same at 50). `asha` (successive
    halving) prunes the second trial if it trails the first, which once steered the sampler away from the best
    region. benchmarks/tuning.py measures what each saves.
    """
    if not 0 < percentile < 100:
        raise TuningError(f"pruner percentile must be in (0, 100), got {percentile:g}")
    if startup_trials < 0:
        raise TuningError(f"pruner startup trials must be >= 0, got {startup_trials}")
    if name == "percentile":
        return optuna.pruners.PercentilePruner(percentile, n_startup_trials=startup_trials, n_warmup_steps=min_resource)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=min_resource)
    if name == "asha":  # at steps r, 3r, 9r.. only the best third of the trials that got there go on
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource, reduction_factor=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=min_resource, max_resource=max_resource)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise TuningError(f"unknown pruner {name!r}; use one of {', '.join(PRUNERS)}")


@dataclass
class TuneConfig:
    """What every study and tournament is asked: where it is kept, on what data and device, from what seed."""

    study: str = field(default="default", metadata={"help": "study name"})
    storage: str = field(default=DEFAULT_STORAGE, metadata={"help": "Optuna storage URL"})
    seed: int = field(default=0, metadata={"help": "study seed: sampler and per-trial seeds derive from it"})
    data_dir: str = field(default="dataset", metadata={"help": "prepared dataset folder"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda[:N]"})
    heartbeat: int = field(default=10, metadata={"help": "seconds between trial heartbeats (RDB storages)"})
    overrides: dict = field(
        default_factory=dict,
        metadata={"help": "model and training fields the user fixed: every candidate uses them", "cli": False},
    )
    report_to: str = field(
        default="none",
        metadata={
            "help": "the dashboard every trial or candidate reports to (train's --report-to)",
            "cli": False,
        },  # fmt: skip
    )

    def validate(self) -> Self:
        check_study_name(self.study)
        check_report_to(self.report_to)
        return self

    @classmethod
    def from_saved(cls, values: dict[str, Any]) -> Self:
        """A config journalled by this or an older workbench, whose one TuneConfig held both modes' fields."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def own_fields(cls) -> tuple[str, ...]:
        """The fields of this mode alone: the flags that make no sense in the other."""
        common = {f.name for f in fields(TuneConfig)}
        return tuple(f.name for f in fields(cls) if f.name not in common)


@dataclass
class StudyConfig(TuneConfig):
    """A study of trials: how many, how long each, and when a trial is pruned."""

    trials: int = field(default=20, metadata={"help": "trials to run in this call"})
    timeout: float = field(
        default=0.0,
        metadata={"help": "stop starting trials after this long: 1200, 20m, 1h (0 = none)", "type": parse_duration},
    )
    trial_iters: int = field(default=300, metadata={"help": "training steps per trial"})
    trial_seconds: float = field(
        default=0.0,
        metadata={
            "help": "train each trial for this long instead of --trial-iters steps: 30, 90s, 2m (0 = by steps)",
            "type": parse_duration,
        },
    )
    trial_flops: float = field(
        default=0.0,
        metadata={
            "help": "train each trial for this many training FLOPs instead of --trial-iters steps: 5e11, 500G, 2T "
            "(0 = by steps); trials of every size cost the same compute, and a study repeats itself on any device",
            "type": parse_flops,
        },
    )
    eval_interval: int = field(default=50, metadata={"help": "steps between evaluations (pruning points)"})
    evals_per_trial: int = field(
        default=6,
        metadata={"help": "with --trial-seconds or --trial-flops: evaluations (pruning points) at equal fractions"},
    )
    eval_iters: int = field(default=20, metadata={"help": "batches per evaluation"})
    pruner: str = field(default="percentile", metadata={"help": "percentile, median, asha, hyperband or none"})
    pruner_percentile: float = field(
        default=100 / 3,
        metadata={"help": "percentile pruner: a trial not in this best percent of finished trials at a step stops"},
    )
    pruner_startup_trials: int = field(
        default=3, metadata={"help": "percentile and median pruners: trials that finish before any is pruned"}
    )

    def validate(self) -> Self:
        super().validate()
        if self.trials <= 0:
            raise TuningError(f"trials must be > 0, got {self.trials}")
        if min(self.trial_iters, self.eval_interval, self.eval_iters, self.evals_per_trial) <= 0:
            raise TuningError("trial_iters, eval_interval, eval_iters and evals_per_trial must be > 0")
        if self.timeout < 0 or self.trial_seconds < 0 or self.trial_flops < 0:
            raise TuningError("timeout, trial_seconds and trial_flops must be >= 0")
        if self.trial_seconds and self.trial_flops:
            raise TuningError("give a trial budget in seconds or in FLOPs, not both")
        self.make_pruner()
        return self

    def make_pruner(self) -> optuna.pruners.BasePruner:
        first, last = self.pruning_points
        return make_pruner(self.pruner, first, last, self.pruner_percentile, self.pruner_startup_trials)

    @property
    def evals_at_fractions(self) -> bool:
        """Under a budget of seconds or FLOPs a trial evaluates at equal fractions of it and reports the
        evaluation number, so pruners compare trials at equal cost whatever their steps."""
        return bool(self.trial_seconds or self.trial_flops)

    @property
    def pruning_points(self) -> tuple[int, int]:
        """The first and last step key at which a trial reports its val loss."""
        if self.evals_at_fractions:
            return 1, self.evals_per_trial
        return self.eval_interval, self.trial_iters


@dataclass
class TournamentConfig(TuneConfig):
    """A tournament: one budget for the search and the final training, and how its rungs narrow."""

    budget: float = field(
        default=0.0,
        metadata={
            "help": "one wall-time budget for the search and the final training: 20m, 2h. Candidates race in rungs, "
            "the best are continued, and the survivor is saved as --name (0 = the trial modes)",
            "type": parse_duration,
        },
    )
    eta: int = field(default=3, metadata={"help": "--budget: 1 in eta candidates goes on to the next rung"})
    final_share: float = field(
        default=0.7, metadata={"help": "--budget: share of the budget kept for the final rung (the survivor)"}
    )
    search_rungs: int = field(
        default=2,
        metadata={
            "help": "--budget: exploration rungs a search needs; a budget too short for them trains the default "
            "configuration for all of it (1: search even with a single rung)"
        },
    )
    tokenizer: str = field(
        default="auto",
        metadata={
            "help": "--budget: auto (a BPE where it is measured to pay, else the characters; see docs/tuning.md), "
            "char, prepared (the dataset as prepared) or bpe"
        },
    )
    runs_dir: str = field(
        default=f"{STUDIES_DIR}/runs",
        metadata={"help": "--budget: candidates' checkpoints, under RUNS_DIR/STUDY (shared by all workers)"},
    )

    def validate(self) -> Self:
        super().validate()
        if not self.budget > 0 or not math.isfinite(self.budget):
            raise TuningError(f"the budget must be a positive duration such as 20m or 1h, got {self.budget:g}s")
        if not 1 <= self.search_rungs <= 3:
            raise TuningError(f"search_rungs must be 1, 2 or 3, got {self.search_rungs}")
        if self.eta < 2 or not 0 < self.final_share < 1:
            raise TuningError(f"eta must be >= 2 and final_share in (0, 1), got {self.eta} and {self.final_share}")
        if self.tokenizer not in TOKENIZER_MODES:
            raise TuningError(f"tokenizer must be one of {', '.join(TOKENIZER_MODES)}, got {self.tokenizer!r}")
        return self

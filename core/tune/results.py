"""What a study found: its best trial and parameters (`train --from-study`), and the studies a storage holds."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from core.config import (
    DEFAULT_STORAGE,
    STUDIES_DIR,
)
from core.fileio import atomic_write_text
from core.tune.config import TuningError, check_study_name
from core.tune.storage import make_storage, sqlite_file


def last_step(trial: optuna.trial.FrozenTrial) -> int:
    """The training step of the trial's last evaluation (its reports are keyed by evaluation number under a
    time budget)."""
    return trial.user_attrs.get("steps", max(trial.intermediate_values, default=0))


def trial_value(trial: optuna.trial.FrozenTrial) -> float | None:
    """A finished trial's value; for a running or pruned one, its last reported val loss."""
    if trial.value is not None:
        return trial.value
    reports = trial.intermediate_values
    return reports[max(reports)] if reports else None


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    try:
        return study.best_trial
    except ValueError:
        raise TuningError(f"study {study.study_name!r} has no completed trial yet; run more trials") from None


def best_params(study: optuna.Study) -> dict[str, Any]:
    """The best trial's full parameters (searched and fixed), with where they came from."""
    trial = best_trial(study)
    return {
        "params": trial.user_attrs.get("params", trial.params),
        "study": study.study_name,
        "trial": trial.number,
        "val_loss": trial.value,
    }


def best_params_path(study_name: str, storage: str = DEFAULT_STORAGE) -> Path:
    """`<study>.best.json` beside a SQLite database (studies/ by default), so a study of the same name in
    another database keeps its own file; in studies/ for server storages."""
    database = sqlite_file(storage)
    folder = database.parent if database else Path(STUDIES_DIR)
    return folder / f"{check_study_name(study_name)}.best.json"


def write_study_best_params(study: optuna.Study, storage: str) -> Path | None:
    """The study's best trial as `<study>.best.json` beside its storage (see `best_params_path`)."""
    try:
        record = best_params(study)
    except TuningError:
        return None
    path = best_params_path(study.study_name, storage)
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


@dataclass
class StudySummary:
    name: str
    complete: int
    pruned: int
    failed: int
    running: int
    best_value: float | None
    best_trial: int | None

    def line(self) -> str:
        best = f"{self.best_value:.4f} (trial {self.best_trial})" if self.best_value is not None else "-"
        return (
            f"{self.name:<24} complete {self.complete:>4}  pruned {self.pruned:>4}  failed {self.failed:>3}  "
            f"running {self.running:>2}  best {best}"
        )


def list_studies(storage: str = DEFAULT_STORAGE) -> list[StudySummary]:
    backend = make_storage(storage, heartbeat=0, writes=False)
    summaries = []
    states = optuna.trial.TrialState
    for summary in optuna.get_all_study_summaries(backend, include_best_trial=True):
        study = optuna.load_study(study_name=summary.study_name, storage=backend)
        counts = {state: 0 for state in states}
        for trial in study.get_trials(deepcopy=False):
            counts[trial.state] += 1
        best = summary.best_trial
        summaries.append(
            StudySummary(
                name=summary.study_name,
                complete=counts[states.COMPLETE],
                pruned=counts[states.PRUNED],
                failed=counts[states.FAIL],
                running=counts[states.RUNNING],
                best_value=best.value if best and best.value is not None and math.isfinite(best.value) else None,
                best_trial=best.number if best else None,
            )
        )
    return summaries

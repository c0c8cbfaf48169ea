"""What several tabs read: the studies of the storage (with cached plots) and the saved models."""

from __future__ import annotations

import logging
import threading
from typing import Any

import optuna

from core import checkpoint as ckpt
from core.tune.storage import make_storage
from workbench.project import Project

log = logging.getLogger(__name__)
MIN_TRIALS_FOR_IMPORTANCE = 3


def model_names(project: Project) -> list[str]:
    """Saved models, newest first."""
    return [p.name for p in ckpt.list_models(project.models_dir)]


class StudyReader:
    """Reads studies for the page through one cached storage, and caches plots by the trials' state."""

    def __init__(self, storage_url: str):
        self.url = storage_url
        self._storage: optuna.storages.BaseStorage | None = None
        self._lock = threading.Lock()
        self._plots: dict[tuple, Any] = {}

    @property
    def storage(self) -> optuna.storages.BaseStorage:
        with self._lock:
            if self._storage is None:
                self._storage = make_storage(self.url, heartbeat=0, writes=False)
            return self._storage

    def names(self) -> list[str]:
        try:
            return [s.study_name for s in optuna.get_all_study_summaries(self.storage)]
        except Exception as err:  # a storage that cannot be read shows as no studies
            log.warning("cannot list studies in %s: %s", self.url, err)
            return []

    def load(self, name: str) -> optuna.Study | None:
        try:
            return optuna.load_study(study_name=name, storage=self.storage)
        except Exception:  # no such study, or a storage that cannot be read: nothing to show
            return None

    def empty_plots(self) -> dict[str, Any]:
        return {"history": placeholder(HISTORY_WAIT), "curves": placeholder(CURVES_WAIT),
                "importance": placeholder(IMPORTANCE_WAIT)}  # fmt: skip

    def plots(self, study: optuna.Study, trials: list[optuna.trial.FrozenTrial]) -> tuple[Any, Any, Any]:
        """Optimization history, intermediate values, parameter importance (a figure saying why where not yet
        meaningful)."""
        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        key_all = (study.study_name, tuple((t.number, t.state, len(t.intermediate_values)) for t in trials))
        key_done = (study.study_name, tuple(t.number for t in complete))
        history = self._cached(("history", key_done), lambda: _history(study, complete))
        curves = self._cached(("curves", key_all), lambda: _intermediate(study, trials))
        importance = self._cached(("importance", key_done), lambda: _importance(study, complete))
        return history, curves, importance

    def _cached(self, key: tuple, make) -> Any:
        if key not in self._plots:
            if len(self._plots) > 60:
                self._plots.clear()
            try:
                self._plots[key] = make()
            except Exception as err:  # a plot that cannot be drawn yet is left empty
                log.info("plot %s not drawn: %s", key[0], err)
                self._plots[key] = placeholder(f"cannot be drawn yet ({err})")
        return self._plots[key]


HISTORY_WAIT = "appears when the first trial finishes"
CURVES_WAIT = "appears when a trial reports its first evaluation"
IMPORTANCE_WAIT = f"appears after {MIN_TRIALS_FOR_IMPORTANCE} finished trials with searched parameters"


def placeholder(text: str):
    """An empty chart that says why it is empty."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_annotation(text=text, showarrow=False, font={"size": 14}, xref="paper", yref="paper", x=0.5, y=0.5)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, "")


def _layout(fig, title: str):
    fig.update_layout(title=title, height=360, margin={"l": 50, "r": 20, "t": 50, "b": 40})
    return fig


def _history(study: optuna.Study, complete: list) -> Any:
    if not complete:
        return placeholder(HISTORY_WAIT)
    return _layout(optuna.visualization.plot_optimization_history(study), "Optimization history (val loss)")


def _intermediate(study: optuna.Study, trials: list) -> Any:
    if not any(t.intermediate_values for t in trials):
        return placeholder(CURVES_WAIT)
    fig = optuna.visualization.plot_intermediate_values(study)
    fig.update_layout(showlegend=len(trials) <= 20)
    return _layout(fig, "Val loss at each evaluation, per trial")


def _importance(study: optuna.Study, complete: list) -> Any:
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE or not any(t.params for t in complete):
        return placeholder(IMPORTANCE_WAIT)
    return _layout(optuna.visualization.plot_param_importances(study), "Parameter importance")

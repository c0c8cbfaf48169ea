"""A tournament's record in its study: its plan, the rungs waiting and stopped, promotions; what every worker
reads to know what comes next."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from core import checkpoint as ckpt
from core.base import base_path, check_tokenizer_kind, load_base, refuse_shape_flags, tuning_overrides
from core.data import Dataset, require_dataset
from core.runs import claim_model_dir
from core.tune.budget import choose_plan
from core.tune.candidates import init_tournament
from core.tune.config import TournamentConfig, TuningError
from core.tune.plan import PLAN_ATTR, Plan, fmt_ms
from core.tune.space import SearchSpace
from core.tune.speed import measured_speed, recorded_plan
from core.tune.storage import create_study, open_study
from core.tune.tokenizer import build as build_tokenizer

log = logging.getLogger(__name__)

STOPPED_REASON = "stopped by the user"


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
    config: TournamentConfig, space: SearchSpace, *, workers: int = 1, worker: int = 0, dataset: Dataset | None = None
) -> tuple[optuna.Study, Plan]:
    """The study and its plan: made once (the budget's clock starts here, before the speed is measured), and
    read back by every later call, so workers and a restarted run follow the same plan."""
    config.validate()
    space.validate()
    started = time.time()
    study = create_study(config, worker)
    recorded = study.user_attrs.get(PLAN_ATTR)
    if recorded:
        return study, Plan.from_json(recorded)
    dataset = dataset or Dataset(config.data_dir)
    speed = measured_speed(config, dataset)
    plan, pick = choose_plan(config, dataset, speed, workers=workers, space=space)
    plan.started, plan.tokenizer = started, build_tokenizer(pick, config.data_dir).to_json()
    plan = init_tournament(study, plan, space.fixing(config.overrides), config.seed, config.overrides)
    log.info(
        "tournament plan (default model at %.0f ms/step, %.1f s a slice besides training): %s",
        plan.step_s * 1000, plan.slice_overhead_s, plan.describe(),
    )  # fmt: skip
    return study, plan


@dataclass
class Begun:
    """A tournament's checked inputs: the final model's folder, the search space, whether the study's recorded
    tournament is continued, and the config (with a base model's shape and recipe among its overrides)."""

    out_dir: Path
    space: SearchSpace
    continuing: bool
    config: TournamentConfig


def begin_tournament(
    config: TournamentConfig, space: SearchSpace | None, name: str, models_dir: str | Path, *, overwrite: bool = False
) -> Begun:
    """Check a budgeted run's inputs and claim its model folder, for every front end."""
    config.validate()
    require_dataset(config.data_dir)
    out_dir = ckpt.model_dir(name, models_dir)
    config = with_base(config, models_dir, out_dir)
    fine_tuning = bool(config.overrides.get("init_from"))
    space = (space or (SearchSpace.for_fine_tune if fine_tuning else SearchSpace.for_budget)(config.device)).validate()
    plan = recorded_plan(config)
    if plan is not None and _finished(open_study(config.study, config.storage), plan):
        raise TuningError(
            f"the tournament of study {config.study} has finished; give another study name to run a new one"
        )
    claim_model_dir(out_dir, resume=plan is not None, overwrite=overwrite)
    return Begun(out_dir, space, plan is not None, config)


def with_base(config: TournamentConfig, models_dir: str | Path, out_dir: Path | None = None) -> TournamentConfig:
    """With `init_from` among the fixed fields, every candidate starts from that saved model: its shape and
    recipe join the fixed fields (a fixed field that would change them is refused)."""
    asked = config.overrides.get("init_from")
    if not asked:
        return config
    base = load_base(base_path(asked, models_dir))
    refuse_shape_flags(config.overrides, base)
    if out_dir is not None and base.path.resolve() == out_dir.resolve():
        raise TuningError(f"models/{out_dir.name} is the model the tournament starts from; name the winner otherwise")
    check_tokenizer_kind(base, config.data_dir)  # a dataset the base cannot read is refused before anything starts
    overrides = {**tuning_overrides(base), **config.overrides, "init_from": str(base.path)}
    return dataclasses.replace(config, overrides=overrides)


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

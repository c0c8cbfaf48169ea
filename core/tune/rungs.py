"""Running a tournament: a worker claims waiting rungs and trains them, an exploration slice scored on a
cooldown branch, the final rung until the budget ends."""

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
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import TrialState

from core import checkpoint as ckpt
from core.base import base_data_dir
from core.config import (
    ModelConfig,
    TrainConfig,
    replace_known,
)
from core.data import Dataset
from core.fileio import atomic_write_text
from core.trainer import TrainHooks, train
from core.tune.candidates import candidate_configs
from core.tune.config import TournamentConfig
from core.tune.plan import END_MARGIN_S, Plan
from core.tune.record import (
    STOPPED_REASON,
    RungEvent,
    _claim_waiting,
    _promote,
    _requeue_stopped,
    _rung_trials,
    _tournament_state,
    prepare_tournament,
)
from core.tune.results import write_study_best_params
from core.tune.space import SearchSpace
from core.tune.speed import BLOCK_STEPS, WARM_STEPS, _score, record_observed_speed
from core.tune.study import MACHINE_THREADS_ENV
from core.variants import open_dataset

log = logging.getLogger(__name__)
# Heartbeats run by hand here (get_heartbeat_thread), which Optuna warns about outside Study.optimize.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")

RUNGS_JSON = "rungs.json"  # in the final model's folder: the survivor's rungs


REPORT_EVERY_S = 2.0  # between step events of a running rung


_POLL_S = 1.0


def run_tournament(
    config: TournamentConfig,
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
            _run_rung(Running(study, plan, config, space, dataset, runs_root, final_dir, stop, emit, worker), trial)
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


@dataclass
class Running:
    """One worker's running tournament: what each of its rungs reads, carried as one."""

    study: optuna.Study
    plan: Plan
    config: TournamentConfig
    space: SearchSpace
    dataset: Dataset
    runs_root: Path
    final_dir: Path
    stop: threading.Event
    emit: Callable[[RungEvent], None]
    worker: int = 0


def _run_rung(run: Running, trial: optuna.Trial) -> None:
    """Train the rung `trial` stands for, and record its score (or why it has none) in the study."""
    rung, candidate = trial.user_attrs["rung"], trial.user_attrs["candidate"]
    trial.set_user_attr("worker", run.worker)
    if _is_duplicate(run.study, trial):
        return
    if trial.user_attrs.get("fixed"):
        run.space.suggest(trial)  # records the enqueued values as the trial's params, for the dashboard
    final = rung == len(run.plan.rungs) - 1
    started = time.time()
    run.emit(RungEvent("start", rung, candidate, trial.number, alive=run.plan.rungs[rung].candidates,
                       time_left_s=run.plan.deadline - started))  # fmt: skip
    owned = _Ownership(run.study, trial, run.stop)
    watch = _RungWatch(trial, rung, candidate, run.plan, run.emit)

    def end(score: float | None, message: str = "") -> None:
        run.emit(RungEvent("end", rung, candidate, trial.number, score, time.time() - started, message=message,
                           time_left_s=run.plan.deadline - time.time()))  # fmt: skip

    with get_heartbeat_thread(trial._trial_id, run.study._storage):
        try:
            score, dataset = _train_rung(run, trial, final, owned, watch)
        except Exception as err:
            if owned.check():  # its retry may have moved the candidate's files under it: not this worker's error
                return end(None, _abandoned(trial))
            if not isinstance(err, (ValueError, torch.OutOfMemoryError)):  # a bad combination, divergence, no memory
                raise
            trial.set_user_attr("reason", str(err) or type(err).__name__)
            run.study.tell(trial, state=TrialState.PRUNED)
            return end(None, f"failed: {err}")
    if owned.check():
        return end(None, _abandoned(trial))
    pace = watch.pace()
    if rung == 0 and candidate == 0 and pace is not None and paced_by_plan(run.plan, dataset is run.dataset):
        record_observed_speed(run.config, run.dataset, pace, run.plan.grown.get("changes"))
    if _record_rung(run, trial, score, final, watch, started):
        end(score)


def _is_duplicate(study: optuna.Study, trial: optuna.Trial) -> bool:
    """A second promotion of the same candidate to the same rung: pruned unrun, the first counts."""
    rung, candidate = trial.user_attrs["rung"], trial.user_attrs["candidate"]
    siblings = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get("rung") == rung
        and t.user_attrs.get("candidate") == candidate
        and t.number < trial.number
        and t.state in (TrialState.RUNNING, TrialState.COMPLETE)
    ]
    if siblings:
        trial.set_user_attr("reason", f"duplicate of trial {siblings[0].number}")
        study.tell(trial, state=TrialState.PRUNED)
    return bool(siblings)


def _abandoned(trial: optuna.Trial) -> str:
    message = f"lost: trial {trial.number} was failed as stale (its heartbeats were late); its retry goes on"
    log.warning(message)
    return message


def _train_rung(run: Running, trial, final: bool, owned: _Ownership, watch: _RungWatch) -> tuple[float, Dataset]:
    """The rung's training: an exploration slice and its score, or the final rung; (its score, its dataset)."""
    rung, candidate = trial.user_attrs["rung"], trial.user_attrs["candidate"]
    dataset = run.dataset
    folder = run.runs_root / f"candidate-{candidate:03d}"
    model_config, train_config = candidate_configs(
        trial.user_attrs["params"], run.config, candidate, len(dataset.vocab)
    )
    if train_config.init_from:  # from a saved model: the text as it reads it
        dataset = open_dataset(base_data_dir(train_config.data_dir, train_config.init_from))
    elif Path(train_config.data_dir) != dataset.data_dir:  # a tokenizer the space searches
        dataset = open_dataset(train_config.data_dir)
    dataset.check_block_size(model_config.block_size)
    if not final:
        return _exploration_rung(run.plan, rung, model_config, train_config, dataset, folder, owned, watch), dataset
    model_config, train_config = final_shape(run.plan, run.space, model_config, train_config, dataset, rung,
                                             fixed=set(run.config.overrides or {}))  # fmt: skip
    score = _final_rung(trial, run.plan, model_config, train_config, dataset, folder, run.final_dir, owned, rung, watch)
    return score, dataset


def paced_by_plan(plan: Plan, on_its_dataset: bool) -> bool:
    """Whether the first candidate's pace is one the plan read, so its run may correct it: the default's on the
    tournament's dataset, or a larger default's under its own key (a plan recorded before it had one: none)."""
    return bool(plan.grown.get("changes")) if plan.grown else on_its_dataset


def _record_rung(run: Running, trial, score: float, final: bool, watch: _RungWatch, started: float) -> bool:
    """Tell the study how the rung went; False when it was stopped (the next run queues it again)."""
    candidate = trial.user_attrs["candidate"]
    trial.set_user_attr("seconds", round(time.time() - started, 2))
    latest = ckpt.latest_checkpoint(run.final_dir if final else run.runs_root / f"candidate-{candidate:03d}")
    trial.set_user_attr("steps", latest.step if latest else 0)  # the candidate's training steps so far
    if math.isfinite(score) and latest is not None and not run.stop.is_set() and latest.step not in watch.reported:
        trial.report(score, latest.step)  # its score among its intermediate values, for optuna-dashboard
    if run.stop.is_set():  # a stopped rung is not a result; the next run queues it again (`_requeue_stopped`)
        trial.set_user_attr("reason", STOPPED_REASON)
        run.study.tell(trial, state=TrialState.FAIL)
        return False
    run.study.tell(trial, score)
    if final:
        write_study_best_params(run.study, run.config.storage)
    return True


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
        score_whole_split=False,  # the slice's score is `_score`'s sample; the whole split is the final rung's
    )


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
    cooldown = replace_known(  # a branch scored and thrown away: the dashboard follows the candidate itself
        train_config, {"max_minutes": slice_s * plan.score_fraction / 60, "cooldown_fraction": 1.0, "report_to": "none"}
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
    local workers only wait for it, and a share of the threads trains it slower."""
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
    ones), the space allows that context, the user did not fix it and the data hold it; else a larger batch:
    the same tokens a step, read further back, did better (RESULTS.md, Tuning within one budget). A plan
    without search (rung 0 is final) trains the default as it is."""
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
            "checkpoint_interval": max(20, int(30 / max(plan.final_step_s, 1e-3))),  # ~ every 30 s
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

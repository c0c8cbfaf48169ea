"""A classic study: each trial trains for a short budget, reports every evaluation and may be pruned; many
workers share one storage."""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch

from core.config import (
    ConfigError,
    ModelConfig,
    TrainConfig,
)
from core.data import Dataset
from core.model import flops_per_token
from core.trainer import EvalEvent, LossDiverged, TrainHooks, train
from core.tune.config import StudyConfig
from core.tune.results import last_step, trial_value, write_study_best_params
from core.tune.space import SearchSpace, apply_params
from core.tune.storage import create_study
from core.variants import open_dataset


@dataclass
class TrialEvent:
    """What a running study reports to its caller after each evaluation and each finished trial."""

    trial: int
    state: str  # RUNNING, COMPLETE, PRUNED, FAIL
    step: int = 0
    val_loss: float | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        value = f"{self.val_loss:.4f}" if self.val_loss is not None else "-"
        return f"trial {self.trial} {self.state.lower()} at step {self.step}, val {value}"


def trial_configs(
    params: dict[str, Any], config: StudyConfig, trial_number: int, vocab_size: int
) -> tuple[ModelConfig, TrainConfig]:
    """A trial's configs. Under a time budget it runs until the budget ends, whatever its speed; under a FLOPs
    budget for the steps that many FLOPs buy at its size. Either way it evaluates at equal fractions of the
    budget, so pruners compare trials at equal cost, as final training is judged."""
    base = TrainConfig(
        data_dir=config.data_dir,
        max_iters=10**9 if config.trial_seconds else config.trial_iters,
        max_minutes=config.trial_seconds / 60,
        eval_interval=config.eval_interval,
        eval_seconds=config.trial_seconds / config.evals_per_trial,
        eval_iters=config.eval_iters,
        sample_chars=0,
        eval_train=False,  # pruning and the objective read only the val loss
        seed=config.seed * 100_003 + trial_number,
        device=config.device,
        report_to=config.report_to,
        report_run=f"{config.study}/trial-{trial_number:03d}",
    )
    model_config, train_config = apply_params(params, ModelConfig(vocab_size=vocab_size), base)
    if config.trial_flops:
        tokens_per_step = train_config.batch_size * train_config.grad_accum * model_config.block_size
        step_flops = flops_per_token(model_config) * tokens_per_step
        interval = max(1, math.ceil(config.trial_flops / (step_flops * config.evals_per_trial)))
        train_config = dataclasses.replace(
            train_config, max_iters=interval * config.evals_per_trial, eval_interval=interval
        )
    return model_config, train_config


def make_objective(
    config: StudyConfig,
    space: SearchSpace,
    dataset: Dataset,
    stop: threading.Event,
    on_event: Callable[[TrialEvent], None] | None = None,
) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        params = space.suggest(trial)
        try:
            model_config, train_config = trial_configs(params, config, trial.number, len(dataset.vocab))
            model_config.validate()
            data = dataset if Path(train_config.data_dir) == dataset.data_dir else open_dataset(train_config.data_dir)
            data.check_block_size(model_config.block_size)
        except (ConfigError, ValueError) as err:
            trial.set_user_attr("reason", str(err))
            raise optuna.TrialPruned(str(err)) from None
        trial.set_user_attr("params", params)

        evals, last_eval_step = 0, 0

        def on_eval(event: EvalEvent) -> None:
            nonlocal evals, last_eval_step
            evals, last_eval_step = evals + 1, event.step
            trial.report(event.val_loss, evals if config.evals_at_fractions else event.step)
            if on_event:
                on_event(TrialEvent(trial.number, "RUNNING", event.step, event.val_loss, params))
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {event.step} (val {event.val_loss:.4f})")

        started = time.perf_counter()
        try:
            result = train(
                model_config,
                train_config,
                hooks=TrainHooks(on_eval=on_eval, should_stop=stop.is_set),
                dataset=data,
            )
        except LossDiverged as err:
            trial.set_user_attr("reason", f"diverged: {err}")
            raise optuna.TrialPruned("loss diverged") from None
        except torch.OutOfMemoryError:
            trial.set_user_attr("reason", "out of memory")
            raise optuna.TrialPruned("out of memory") from None
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
            trial.set_user_attr("steps", last_eval_step)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        trial.set_user_attr("tokens_per_s", round(result.tokens_per_s))
        trial.set_user_attr("best_step", result.best_step)
        if result.stop_reason == "stopped":
            trial.set_user_attr("reason", "stopped by the user")
            raise optuna.TrialPruned("stopped by the user")
        return result.val_loss

    return objective


def run_study(
    config: StudyConfig,
    space: SearchSpace,
    *,
    stop: threading.Event | None = None,
    on_event: Callable[[TrialEvent], None] | None = None,
    worker: int = 0,
) -> optuna.Study:
    """Run `config.trials` more trials in this process (other workers add their own); returns the study."""
    config.validate()
    space.validate()
    stop = stop or threading.Event()
    dataset = Dataset(config.data_dir)
    study = create_study(config, worker, config.make_pruner())
    study.set_user_attr("search_space", space.to_json())
    study.set_user_attr("data_dir", str(Path(config.data_dir).resolve()))

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if on_event:
            on_event(
                TrialEvent(
                    trial.number,
                    trial.state.name,
                    last_step(trial),
                    trial_value(trial),
                    trial.user_attrs.get("params", {}),
                )
            )
        write_study_best_params(study, config.storage)
        if stop.is_set():
            study.stop()

    objective = make_objective(config, space, dataset, stop, on_event)
    study.optimize(
        objective,
        n_trials=config.trials,
        timeout=config.timeout or None,
        callbacks=[after_trial],
        gc_after_trial=True,
    )
    gc.collect()
    return study


# Set for a worker given a share of this machine's cores: the threads the whole machine has, for work that
# runs alone while the other local workers wait (a tournament's final rung).
MACHINE_THREADS_ENV = "CHARGPT_MACHINE_THREADS"


def worker_env(worker: int, workers: int) -> dict[str, str]:
    """Environment for worker `worker` of `workers`: its own GPU when there are several, else a share of cores."""
    env = dict(os.environ)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus > 1:
        env["CUDA_VISIBLE_DEVICES"] = str(worker % gpus)
    else:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
        env[MACHINE_THREADS_ENV] = str(os.cpu_count() or 1)
    return env

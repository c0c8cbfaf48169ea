"""The default model's pace here, which every plan rests on: measured warm, kept per dataset and device,
corrected by what runs find."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.config import (
    replace_known,
)
from core.data import Dataset
from core.device import pick_device
from core.evaluate import split_loss
from core.fileio import atomic_write_text
from core.model import GPT
from core.trainer import TrainHooks, train
from core.tune.candidates import candidate_configs, default_params
from core.tune.config import TournamentConfig, TuningError
from core.tune.plan import PLAN_ATTR, Plan
from core.tune.storage import open_study

log = logging.getLogger(__name__)

SCORE_CHARS = 65_536  # validation characters scored per candidate: the same evenly spread windows for all


WARM_STEPS, TIMED_BLOCKS, BLOCK_STEPS = 5, 6, 5  # how the default model's pace is measured


def measure_step_s(config: TournamentConfig, dataset: Dataset, changes: dict[str, Any] | None = None) -> float:
    """Seconds a step of the default model (with `changes`, `_model_configs`) takes here: the median step of the
    quiet blocks among TIMED_BLOCKS blocks of BLOCK_STEPS steps timed after WARM_STEPS (allocations, the first
    kernels). Another process on the cores (the browser drawing the page that asked) only ever slows steps: a
    block over QUIET_MARGIN times the fastest block's pace was disturbed. The fastest block alone reads low
    against the run; the median of the quiet ones does not. Eagerly: where the run compiles, it does so because
    compiled steps are faster."""
    model_config, train_config = _model_configs(config, dataset, changes)
    steps = WARM_STEPS + TIMED_BLOCKS * BLOCK_STEPS + 1
    train_config = replace_known(train_config, {"max_iters": steps, "max_minutes": 0.0, "warmup_iters": 0,
                                                "compile": "off", "report_to": "none"})  # fmt: skip
    timings: list[float] = []
    train(model_config, train_config, dataset=dataset, hooks=TrainHooks(on_step=lambda e: timings.append(e.elapsed_s)))
    gaps = [b - a for a, b in zip(timings, timings[1:])][WARM_STEPS:]
    blocks = [gaps[i : i + BLOCK_STEPS] for i in range(0, len(gaps) - BLOCK_STEPS + 1, BLOCK_STEPS)]
    quickest = min(statistics.median(block) for block in blocks)
    return statistics.median(
        [gap for block in blocks if statistics.median(block) <= QUIET_MARGIN * quickest for gap in block]
    )


QUIET_MARGIN = 1.25


def _model_configs(config: TournamentConfig, dataset: Dataset, changes: dict[str, Any] | None):
    """The default candidate's configs with `changes`; a `vocab_size` among them sizes the model (the pace of a
    tokenizer not built yet, timed on this dataset's text) rather than choosing a dataset."""
    changes = dict(changes or {})
    vocab_size = changes.pop("vocab_size", None) or len(dataset.vocab)
    return candidate_configs(default_params(config.overrides) | changes, config, 0, vocab_size)


def measure_score_s(config: TournamentConfig, dataset: Dataset) -> float:
    """Seconds scoring the default model takes here (the end of every exploration slice)."""
    model_config, _ = _model_configs(config, dataset, None)
    model = GPT(model_config).to(pick_device(config.device))
    started = time.perf_counter()
    _score(model, dataset)
    return time.perf_counter() - started


@dataclass
class Speed:
    """What the plan of a budget rests on, measured with the default model on this device and dataset."""

    step_s: float  # seconds a training step
    score_s: float  # seconds scoring a candidate at the end of a slice


SPEED_FILE = ".tournament_speed.json"  # in the dataset folder: one measurement per device and default model


def measured_speed(
    config: TournamentConfig, dataset: Dataset, measure: bool = True, changes: dict[str, Any] | None = None
) -> Speed | None:
    """The default model's speed here (with `changes`, `_model_configs`), measured once per dataset, device and
    fixed fields and then read from the dataset folder, so that the minimum budget the page shows is the one
    Start applies; None when it is not known yet and `measure` is False (another job busy on the cores would
    make a measurement too slow)."""
    key, known = _speed_key(config, dataset, changes), _known_speeds(config)
    if isinstance(known.get(key), dict):
        with contextlib.suppress(TypeError):
            return Speed(**known[key])
    if not measure:
        return None
    # a changed default (a larger one for a long budget) trains without slices to score
    score_s = 0.0 if changes else measure_score_s(config, dataset)
    speed = Speed(measure_step_s(config, dataset, changes), score_s)
    _write_speed(config, key, speed)
    return speed


def record_observed_speed(
    config: TournamentConfig, dataset: Dataset, step_s: float, changes: dict[str, Any] | None = None
) -> None:
    """The default model's pace (with `changes`) as a run found it, over the measured one when they differ by
    more than OBSERVED_MARGIN: the next plan rests on what the machine did, not on a measurement the run
    disproved."""
    key, known = _speed_key(config, dataset, changes), _known_speeds(config)
    with contextlib.suppress(TypeError):
        speed = Speed(**known[key]) if isinstance(known.get(key), dict) else None
        if speed is not None and abs(step_s / speed.step_s - 1) > OBSERVED_MARGIN:
            log.info("the default model ran at %.0f ms/step, not the measured %.0f: the plans use it from now on",
                     step_s * 1000, speed.step_s * 1000)  # fmt: skip
            _write_speed(config, key, Speed(step_s, speed.score_s))


OBSERVED_MARGIN = 0.2


def _speed_key(config: TournamentConfig, dataset: Dataset, changes: dict[str, Any] | None = None) -> str:
    device = pick_device(config.device)
    # the threads `train` will use (core.device.configure), not whatever this process has set so far
    threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1) if device.type == "cpu" else 0
    estimator = "quiet-blocks"  # how measure_step_s reads a pace: a pace read another way is measured again
    key = [str(device), threads, len(dataset.vocab), config.overrides, estimator] + ([changes] if changes else [])
    return json.dumps(key, sort_keys=True, default=str)


def _known_speeds(config: TournamentConfig) -> dict[str, Any]:
    try:
        known = json.loads((Path(config.data_dir) / SPEED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _write_speed(config: TournamentConfig, key: str, speed: Speed) -> None:
    known = _known_speeds(config)
    with contextlib.suppress(OSError):  # a read-only dataset measures again next time
        atomic_write_text(
            Path(config.data_dir) / SPEED_FILE, json.dumps({**known, key: asdict(speed)}, indent=2) + "\n"
        )


def known_step_s(data_dir: str | Path) -> float | None:
    """The fastest pace of the default model measured on this dataset so far (any device), if any."""
    try:
        known = json.loads((Path(data_dir) / SPEED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    paces = [s.get("step_s") for s in known.values() if isinstance(s, dict) and s.get("step_s")]
    return min(paces) if paces else None


def recorded_plan(config: TournamentConfig) -> Plan | None:
    try:
        recorded = open_study(config.study, config.storage).user_attrs.get(PLAN_ATTR)
    except TuningError:
        return None
    return Plan.from_json(recorded) if recorded else None


def has_plan(config: TournamentConfig) -> bool:
    """Whether the study of `config` already holds a tournament (a re-run continues it)."""
    return recorded_plan(config) is not None


def _score(model, dataset: Dataset) -> float:
    """Nats per character on SCORE_CHARS of the validation split (as tokens, for a BPE)."""
    per_token = split_loss(model, dataset.tokens["val"], max_chars=SCORE_CHARS)
    return per_token * dataset.tokens_per_char["val"]

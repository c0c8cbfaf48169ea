"""Hyperparameter search with Optuna: search space, objective, storages, study lifecycle, best params.

    space = SearchSpace.for_device("cpu")
    study = run_study(TuneConfig(study="s1", trials=20), space)      # blocks; stop with a threading.Event
    params = best_params(open_study("s1"))                            # feeds `train --from-study s1`

Each trial trains with the core trainer for a short budget, reports the validation loss at every
evaluation and is pruned by Optuna's pruner. Storage is any Optuna storage URL; the default is SQLite in
studies/, which optuna-dashboard opens while the study runs.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import os
import re
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.storages._rdb import models as rdb_models
from optuna.storages._rdb.storage import _create_scoped_session

from core.bpe import MAX_VOCAB, MIN_VOCAB
from core.config import (
    DEFAULT_STORAGE,
    MUON_LR,
    ConfigError,
    ModelConfig,
    TrainConfig,
    parse_duration,
    parse_flops,
    replace_known,
)
from core.data import Dataset
from core.device import device_kind
from core.fileio import atomic_write_text, valid_name
from core.model import flops_per_token
from core.trainer import EvalEvent, LossDiverged, TrainHooks, train
from core.variants import AS_PREPARED, TOKENIZER_CHOICES, open_dataset, variant_dir

log = logging.getLogger(__name__)
# Heartbeats, the retry callback and the gRPC proxy are marked experimental in Optuna 5; they are used on purpose.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

STUDIES_DIR = Path(DEFAULT_STORAGE.removeprefix("sqlite:///")).parent
PRUNERS = ("percentile", "median", "asha", "hyperband", "none")


class TuningError(ValueError):
    """A bad search space, storage URL or study; the message says what to change."""


# --- search space ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    step: int = 1


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class Choice:
    options: tuple


Spec = IntRange | FloatRange | Choice | int | float | str | bool

# Fields that must be positive whatever their spec; the others must be >= 0.
_POSITIVE = {"lr", "n_layer", "n_head", "head_size", "batch_size", "block_size"}
_FRACTIONS = {"dropout", "warmup_fraction", "min_lr_ratio"}
_CATEGORICAL = {"optimizer", "pos_encoding", "norm", "mlp", "qk_norm", "tokenizer"}


@dataclass
class SearchSpace:
    """What a trial may vary. Each field is a range, a choice, or a fixed value.

    Width is drawn as `n_head * head_size`, so an invalid n_embd/n_head pair is never sampled.
    JSON form (`--space space.json`): `[low, high]` is a range (integers if both are), `{"low": .., "high":
    .., "log": true}` a log range, `{"choices": [...]}` a choice, and a plain number a fixed value.
    """

    lr: Spec = FloatRange(3e-4, 3e-3, log=True)
    n_layer: Spec = IntRange(2, 4)
    n_head: Spec = Choice((2, 4))
    head_size: Spec = Choice((16, 32))
    dropout: Spec = FloatRange(0.0, 0.2)
    batch_size: Spec = Choice((8, 16, 32))
    block_size: Spec = Choice((32, 64, 128))
    weight_decay: Spec = FloatRange(0.0, 0.2)
    warmup_fraction: Spec = FloatRange(0.0, 0.1)
    min_lr_ratio: Spec = 0.1
    # The recipe's options (ModelConfig/TrainConfig fields): fixed to the default recipe unless a space file
    # gives choices, e.g. {"optimizer": {"choices": ["muon", "adamw"]}, "muon_lr": [0.01, 0.04]}.
    optimizer: Spec = "muon"
    muon_lr: Spec = MUON_LR
    pos_encoding: Spec = "rope"
    norm: Spec = "rmsnorm"
    mlp: Spec = "relu2"
    qk_norm: Spec = True
    # The tokenizer: the dataset as prepared unless a space file gives choices, e.g. {"tokenizer": {"choices":
    # ["char", "bpe"]}, "vocab_size": [256, 4096]}; each is cached under dataset/tokenized/ (core.variants).
    tokenizer: Spec = AS_PREPARED
    vocab_size: Spec = 2048

    @classmethod
    def for_device(cls, device: str = "auto") -> SearchSpace:
        """Defaults sized for the device: small models on CPU, wider and deeper ones on a GPU."""
        device = device_kind(device)
        if device.startswith("cuda"):
            return cls(
                n_layer=IntRange(4, 8),
                n_head=Choice((4, 6, 8)),
                head_size=Choice((32, 64)),
                batch_size=Choice((32, 64)),
                block_size=Choice((128, 256)),
            )
        return cls()

    @classmethod
    def for_budget(cls, device: str = "auto") -> SearchSpace:
        """The space of a budgeted tournament: around the default model and up to a few times its size, since
        candidates that survive are trained for minutes, where bigger models and lower rates win. Warmup is
        by steps (a continued candidate must not warm up again), so warmup_fraction is fixed at 0."""
        device = device_kind(device)
        common = {"dropout": 0.0, "weight_decay": 0.1, "warmup_fraction": 0.0}
        if device.startswith("cuda"):
            return cls(
                **common,
                n_layer=IntRange(4, 8),
                n_head=Choice((4, 6, 8)),
                head_size=Choice((32, 64)),
                batch_size=Choice((32, 64)),
                block_size=Choice((128, 256)),
                lr=FloatRange(3e-4, 3e-3, log=True),
                muon_lr=FloatRange(0.01, 0.04, log=True),
            )
        return cls(
            **common,
            n_layer=IntRange(3, 6),
            n_head=Choice((4,)),
            head_size=Choice((32, 48, 64)),
            batch_size=Choice((12, 16, 24)),
            block_size=Choice((64, 128, 256)),
            lr=FloatRange(5e-4, 3e-3, log=True),
            muon_lr=FloatRange(0.004, 0.04, log=True),  # 0.005 beat 0.01 and 0.02 at 4 minutes (docs/tuning.md)
        )

    def validate(self) -> SearchSpace:
        for f in dataclasses.fields(self):
            spec = getattr(self, f.name)
            values: list[float] = []
            if isinstance(spec, (IntRange, FloatRange)):
                if spec.low > spec.high:
                    raise TuningError(f"search space {f.name}: low ({spec.low}) is greater than high ({spec.high})")
                if isinstance(spec, FloatRange) and spec.log and spec.low <= 0:
                    raise TuningError(f"search space {f.name}: a log range needs low > 0, got {spec.low}")
                values = [spec.low, spec.high]
            elif isinstance(spec, Choice):
                if not spec.options:
                    raise TuningError(f"search space {f.name}: the list of choices is empty")
                values = list(spec.options)
            elif isinstance(spec, (int, float)) and not isinstance(spec, bool):
                values = [spec]
            elif not isinstance(spec, (str, bool)):
                raise TuningError(f"search space {f.name}: cannot use {spec!r}")
            if f.name in _CATEGORICAL or isinstance(spec, (str, bool)):
                values = []  # names and switches: their ModelConfig/TrainConfig validation checks them
            for value in values:
                if f.name in _POSITIVE and not value > 0:
                    raise TuningError(f"search space {f.name}: values must be > 0, got {value}")
                if value < 0:
                    raise TuningError(f"search space {f.name}: values must be >= 0, got {value}")
                if f.name in _FRACTIONS and value >= 1:
                    raise TuningError(f"search space {f.name}: values must be < 1, got {value}")
                if f.name == "vocab_size" and not (isinstance(value, int) and MIN_VOCAB <= value <= MAX_VOCAB):
                    raise TuningError(f"search space vocab_size: values must be integers in [{MIN_VOCAB}, "
                                      f"{MAX_VOCAB}], got {value}")  # fmt: skip
        tokenizers = self.tokenizer.options if isinstance(self.tokenizer, Choice) else (self.tokenizer,)
        unknown = [t for t in tokenizers if t not in TOKENIZER_CHOICES]
        if unknown:
            raise TuningError(f"search space tokenizer: {unknown[0]!r} is none of {', '.join(TOKENIZER_CHOICES)}")
        return self

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            spec = getattr(self, f.name)
            if isinstance(spec, IntRange):
                out[f.name] = [spec.low, spec.high] if spec.step == 1 else dataclasses.asdict(spec)
            elif isinstance(spec, FloatRange):
                out[f.name] = {"low": spec.low, "high": spec.high, "log": spec.log}
            elif isinstance(spec, Choice):
                out[f.name] = {"choices": list(spec.options)}
            else:
                out[f.name] = spec
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], base: SearchSpace | None = None) -> SearchSpace:
        """Fields missing from `data` keep the values of `base` (default: the CPU defaults)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise TuningError(f"unknown search space field(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return dataclasses.replace(base or cls(), **{k: _parse_spec(k, v) for k, v in data.items()}).validate()

    @classmethod
    def load(cls, path: str | Path, base: SearchSpace | None = None) -> SearchSpace:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as err:
            raise TuningError(f"cannot read search space {path}: {err.strerror}") from None
        except ValueError as err:
            raise TuningError(f"{path} is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise TuningError(f"{path} must hold a JSON object of field: range")
        return cls.from_json(data, base)

    def allows(self, name: str, value: Any) -> bool:
        """Whether field `name` of this space can take `value`."""
        spec = getattr(self, name)
        if isinstance(spec, (IntRange, FloatRange)):
            return spec.low <= value <= spec.high and (
                isinstance(spec, FloatRange) or (value - spec.low) % spec.step == 0
            )
        if isinstance(spec, Choice):
            return value in spec.options
        return value == spec

    def fixing(self, values: dict[str, Any]) -> SearchSpace:
        """This space with the fields the user fixed (`values`: model and training fields) no longer searched,
        so trials neither draw nor record them. A fixed width fixes the head size where the head count is
        fixed too."""
        names = {f.name for f in dataclasses.fields(self)}
        fixed = {k: v for k, v in values.items() if k in names}
        heads = fixed.get("n_head", self.n_head)
        if isinstance(heads, Choice) and len(heads.options) == 1:
            heads = heads.options[0]
        if "n_embd" in values and isinstance(heads, int) and not isinstance(heads, bool):
            fixed["head_size"] = values["n_embd"] // heads
        return dataclasses.replace(self, **fixed)

    @staticmethod
    def in_space_terms(params: dict[str, Any]) -> dict[str, Any]:
        """`params` with the width as the space draws it: `head_size`, beside n_embd and n_head."""
        return params | {"head_size": params["n_embd"] // params["n_head"]}

    def searched_values(self, params: dict[str, Any]) -> dict[str, Any] | None:
        """The values of the searched fields in a full set of `params` (what a trial of this space records),
        or None when one lies outside the space."""
        values = self.in_space_terms(params)
        searched = [
            f.name
            for f in dataclasses.fields(self)
            if isinstance(spec := getattr(self, f.name), (IntRange, FloatRange))
            or (isinstance(spec, Choice) and len(spec.options) > 1)
        ]
        if not all(name in values and self.allows(name, values[name]) for name in searched):
            return None
        return {name: values[name] for name in searched}

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Draw one set of parameters; fixed fields are recorded but not searched."""
        params = {f.name: _suggest(trial, f.name, getattr(self, f.name)) for f in dataclasses.fields(self)}
        params["n_embd"] = params["n_head"] * params["head_size"]
        return params


def _parse_spec(name: str, value: Any) -> Spec:
    if name in _CATEGORICAL and isinstance(value, (str, bool)):
        return value
    if isinstance(value, bool):
        raise TuningError(f"search space {name}: {value!r} is not a number")
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        low, high = value
        if isinstance(low, int) and isinstance(high, int):
            return IntRange(low, high)
        return FloatRange(float(low), float(high), log=name == "lr")
    if isinstance(value, dict) and "choices" in value:
        return Choice(tuple(value["choices"]))
    if isinstance(value, dict) and {"low", "high"} <= value.keys():
        if isinstance(value["low"], int) and isinstance(value["high"], int) and not value.get("log"):
            return IntRange(value["low"], value["high"], int(value.get("step", 1)))
        return FloatRange(float(value["low"]), float(value["high"]), bool(value.get("log", False)))
    raise TuningError(
        f'search space {name}: cannot read {value!r}; use [low, high], {{"low": .., "high": .., "log": true}}, '
        '{"choices": [...]} or a single number'
    )


def _suggest(trial: optuna.Trial, name: str, spec: Spec) -> Any:
    if isinstance(spec, IntRange):
        return spec.low if spec.low == spec.high else trial.suggest_int(name, spec.low, spec.high, step=spec.step)
    if isinstance(spec, FloatRange):
        return spec.low if spec.low == spec.high else trial.suggest_float(name, spec.low, spec.high, log=spec.log)
    if isinstance(spec, Choice):
        return spec.options[0] if len(spec.options) == 1 else trial.suggest_categorical(name, list(spec.options))
    return spec


def apply_params(
    params: dict[str, Any], model_config: ModelConfig, train_config: TrainConfig, keep: set[str] = frozenset()
) -> tuple[ModelConfig, TrainConfig]:
    """Configs with the tuned `params` applied; fields named in `keep` (set by the user) are left alone.

    `warmup_fraction` applies to the run's own budget (steps or minutes); `min_lr_ratio` becomes `min_lr`;
    `tokenizer` and `vocab_size` choose the dataset (`core.variants`), not a config field.
    """
    values = {k: v for k, v in params.items() if k not in keep}
    tokenizer, vocab_size = values.pop("tokenizer", AS_PREPARED), values.pop("vocab_size", 0)
    if tokenizer != AS_PREPARED:  # the run's dataset (the user's --data-dir too) under that tokenizer
        values["data_dir"] = str(variant_dir(train_config.data_dir, tokenizer, vocab_size))
    if "warmup_iters" in keep:
        values.pop("warmup_fraction", None)
    if "min_lr_ratio" in values and "min_lr" not in keep:
        values["min_lr"] = values["min_lr_ratio"] * values.get("lr", train_config.lr)
    return replace_known(model_config, values), replace_known(train_config, values)


# --- storage ---------------------------------------------------------------------------------------


def check_study_name(name: str) -> str:
    if not valid_name(name):
        raise TuningError(f"invalid study name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return name


def sqlite_file(url: str) -> Path | None:
    """The database file of a `sqlite:///PATH` URL; None for other storages and in-memory SQLite."""
    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else ""
    return Path(path) if path and path != ":memory:" else None


def make_storage(
    url: str = DEFAULT_STORAGE, *, heartbeat: int = 10, writes: bool = True
) -> optuna.storages.BaseStorage:
    """An Optuna storage for `url`.

    On RDB storages a running trial beats every `heartbeat` seconds (0 = off); a trial silent for three
    beats (its worker was killed) is marked FAIL and queued again, up to twice.
    """
    if url.startswith("sqlite") and ":memory:" in url:
        raise TuningError(
            "an in-memory SQLite storage ends with its process, and a study must outlive it (workers, the "
            f"dashboard and train --from-study read it later); use a file: {DEFAULT_STORAGE}"
        )
    if database := sqlite_file(url):
        database.parent.mkdir(parents=True, exist_ok=True)
        if writes and not (os.access(database if database.exists() else database.parent, os.W_OK)):
            raise TuningError(f"the study database {database} is read-only; make it (and its folder) writable")
    if url.startswith(("sqlite://", "postgresql", "mysql", "mariadb", "oracle", "mssql")):
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
        else:
            kwargs["engine_kwargs"] = {"pool_pre_ping": True, "connect_args": _connect_timeout(url)}
        if heartbeat:
            kwargs.update(
                heartbeat_interval=heartbeat,
                grace_period=3 * heartbeat,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2),
            )
        try:
            return (HeartbeatRDBStorage if heartbeat else ClaimOnceRDBStorage)(url, **kwargs)
        except ImportError as err:
            raise TuningError(
                f"the database driver for {url.split(':')[0]} is not installed ({err.name or _first_line(err)}); "
                "pip install it (e.g. pymysql for mysql+pymysql://)"
            ) from None
        except Exception as err:  # SQLAlchemy raises many kinds; all mean "cannot use this database"
            raise TuningError(f"cannot open storage {_redact(url)}: {_first_line(err)}") from None
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(str(path))
        return optuna.storages.JournalStorage(backend)
    if url.startswith("grpc://"):
        host, _, port = url.removeprefix("grpc://").rpartition(":")
        if not host or not port.isdigit():
            raise TuningError(f"grpc storage needs grpc://HOST:PORT, got {url!r}")
        return optuna.storages.GrpcStorageProxy(host=host, port=int(port))
    raise TuningError(
        f"unknown storage {url!r}; use sqlite:///PATH, postgresql://USER:PASS@HOST/DB, mysql+pymysql://..., "
        "journal:PATH or grpc://HOST:PORT"
    )


class ClaimOnceRDBStorage(optuna.storages.RDBStorage):
    """RDBStorage on which two workers cannot both pop one waiting (enqueued) trial.

    Optuna claims a waiting trial by reading its state and then writing RUNNING, relying on SELECT ... FOR
    UPDATE, which SQLite ignores: two workers asking at once both read WAITING and both ran the trial (2-12
    of 200 enqueued trials went to both of two processes here; a tournament's candidate trained twice into
    one folder). The claim here is one conditional UPDATE, atomic on every database."""

    def set_trial_state_values(self, trial_id: int, state: optuna.trial.TrialState, values: Any = None) -> bool:
        if state != optuna.trial.TrialState.RUNNING or values is not None:
            return super().set_trial_state_values(trial_id, state, values)
        model = rdb_models.TrialModel
        with _create_scoped_session(self.scoped_session) as session:
            claimed = (
                session.query(model)
                .filter(model.trial_id == trial_id, model.state == optuna.trial.TrialState.WAITING)
                .update(
                    {model.state: optuna.trial.TrialState.RUNNING,
                     model._datetime_start_utc: datetime.now(UTC).replace(tzinfo=None)},  # naive UTC, as stored
                    synchronize_session=False,
                )
            )  # fmt: skip
        return claimed == 1  # 0: another worker claimed it first, or it finished


class HeartbeatRDBStorage(ClaimOnceRDBStorage):
    """RDBStorage that also fails a running trial whose worker died before the trial's first heartbeat.

    Optuna judges only trials that have beaten once, so a worker killed between creating a trial (which
    includes the sampler's work) and its heartbeat thread's first beat left that trial RUNNING for ever. A
    live worker beats within a second of a trial's start; a trial with no beat `unbeaten_after` seconds
    after it is dead. The start is stamped by the worker's clock and "now" by this one, hence the margin.
    """

    unbeaten_after = timedelta(minutes=5)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = super()._get_stale_trial_ids(study_id)
        too_old = datetime.now(UTC).replace(tzinfo=None) - self.unbeaten_after  # stored as naive UTC
        with _create_scoped_session(self.scoped_session) as session:
            unbeaten = (
                session.query(rdb_models.TrialModel.trial_id)
                .filter(rdb_models.TrialModel.study_id == study_id)
                .filter(rdb_models.TrialModel.state == optuna.trial.TrialState.RUNNING)
                .filter(rdb_models.TrialModel._datetime_start_utc < too_old)
                .filter(~rdb_models.TrialModel.heartbeats.any())
            )
            return stale + [trial_id for (trial_id,) in unbeaten.all()]


def _connect_timeout(url: str) -> dict[str, Any]:
    return {"connect_timeout": 10} if url.startswith("postgresql") else {}


def _redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


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


def open_study(name: str, storage: str = DEFAULT_STORAGE) -> optuna.Study:
    """An existing study, or a clear error listing the studies the storage has."""
    check_study_name(name)
    backend = make_storage(storage, heartbeat=0, writes=False)
    try:
        return optuna.load_study(study_name=name, storage=backend)
    except KeyError:
        known = ", ".join(s.study_name for s in optuna.get_all_study_summaries(backend)) or "none"
        raise TuningError(f"no study named {name!r} in {_redact(storage)} (studies: {known})") from None


# --- running a study -------------------------------------------------------------------------------


@dataclass
class TuneConfig:
    study: str = field(default="default", metadata={"help": "study name"})
    storage: str = field(default=DEFAULT_STORAGE, metadata={"help": "Optuna storage URL"})
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
    seed: int = field(default=0, metadata={"help": "study seed: sampler and per-trial seeds derive from it"})
    data_dir: str = field(default="dataset", metadata={"help": "prepared dataset folder"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda[:N]"})
    heartbeat: int = field(default=10, metadata={"help": "seconds between trial heartbeats (RDB storages)"})
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
    overrides: dict = field(
        default_factory=dict,
        metadata={"help": "model and training fields the user fixed: every candidate uses them", "cli": False},
    )
    runs_dir: str = field(
        default="studies/runs",
        metadata={"help": "--budget: candidates' checkpoints, under RUNS_DIR/STUDY (shared by all workers)"},
    )

    def validate(self) -> TuneConfig:
        check_study_name(self.study)
        if self.trials <= 0:
            raise TuningError(f"trials must be > 0, got {self.trials}")
        if min(self.trial_iters, self.eval_interval, self.eval_iters, self.evals_per_trial) <= 0:
            raise TuningError("trial_iters, eval_interval, eval_iters and evals_per_trial must be > 0")
        if self.timeout < 0 or self.trial_seconds < 0 or self.trial_flops < 0:
            raise TuningError("timeout, trial_seconds and trial_flops must be >= 0")
        if self.budget < 0 or not math.isfinite(self.budget):
            raise TuningError(f"budget must be a positive duration such as 20m, got {self.budget}")
        if not 1 <= self.search_rungs <= 3:
            raise TuningError(f"search_rungs must be 1, 2 or 3, got {self.search_rungs}")
        if self.eta < 2 or not 0 < self.final_share < 1:
            raise TuningError(f"eta must be >= 2 and final_share in (0, 1), got {self.eta} and {self.final_share}")
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


def create_study(config: TuneConfig, worker: int = 0) -> optuna.Study:
    try:
        study = optuna.create_study(
            study_name=check_study_name(config.study),
            storage=make_storage(config.storage, heartbeat=config.heartbeat),
            pruner=config.make_pruner(),
            direction="minimize",
            load_if_exists=True,
        )
    except TuningError:
        raise
    except Exception as err:
        raise TuningError(
            f"cannot create study {config.study!r} in {_redact(config.storage)}: {_first_line(err)}"
        ) from None
    # The seed also follows the trials already there: a sampler seeded alike on every call would propose the
    # same startup trials again when a study is continued.
    earlier = len(study.get_trials(deepcopy=False))
    seed = config.seed + 1000 * worker + 7919 * earlier
    study.sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
    return study


def trial_configs(
    params: dict[str, Any], config: TuneConfig, trial_number: int, vocab_size: int
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
    config: TuneConfig,
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
    config: TuneConfig,
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
    study = create_study(config, worker)
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


# --- results ---------------------------------------------------------------------------------------


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
    folder = database.parent if database else STUDIES_DIR
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

"""Optuna storages (SQLite, PostgreSQL, journal files, gRPC) with heartbeats and claim-once trials; opening
and creating studies."""

from __future__ import annotations

import os
import re
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
from optuna.storages._rdb import models as rdb_models
from optuna.storages._rdb.storage import _create_scoped_session

from core.config import (
    DEFAULT_STORAGE,
)
from core.tune.config import TuneConfig, TuningError, check_study_name

# Heartbeats, the retry callback and the gRPC proxy are marked experimental in Optuna 5; they are used on purpose.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


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


def open_study(name: str, storage: str = DEFAULT_STORAGE) -> optuna.Study:
    """An existing study, or a clear error listing the studies the storage has."""
    check_study_name(name)
    backend = make_storage(storage, heartbeat=0, writes=False)
    try:
        return optuna.load_study(study_name=name, storage=backend)
    except KeyError:
        known = ", ".join(s.study_name for s in optuna.get_all_study_summaries(backend)) or "none"
        raise TuningError(f"no study named {name!r} in {_redact(storage)} (studies: {known})") from None


def create_study(config: TuneConfig, worker: int = 0, pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """The study, made or continued, with a sampler seeded for this worker; `pruner` for a study of trials."""
    try:
        study = optuna.create_study(
            study_name=check_study_name(config.study),
            storage=make_storage(config.storage, heartbeat=config.heartbeat),
            pruner=pruner or optuna.pruners.NopPruner(),
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

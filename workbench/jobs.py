"""Background jobs for the workbench: a core function run in a thread, its state kept on the server.

    jobs = JobManager()
    job = jobs.start("train", "training 'tiny'", lambda job: train(..., hooks=...))   # JobBusy if one runs
    jobs.get("train").snapshot()     # status, progress, message, events, sample, error
    jobs.stop("train")               # sets job.stop; the core function ends cleanly at its next step

One job of each kind ("prepare", "tune", "train") runs at a time. The page polls `get(kind)` with a
`gr.Timer`, so reloading or closing it changes nothing on the server. An exception in a job becomes its
`error` text; it never reaches the server.

With a `journal` file, the manager records the jobs that are running; a job still recorded when the next
server starts (the last one was killed, lost power, or shut down mid-job) comes back as INTERRUPTED with
its `info`, so the page can offer to resume it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.fileio import atomic_write_text

log = logging.getLogger(__name__)

KINDS = ("prepare", "tune", "train")
RUNNING, STOPPING, DONE, STOPPED, FAILED = "running", "stopping", "done", "stopped", "failed"
INTERRUPTED = "interrupted"  # recorded as running by a server that is gone
MAX_EVENTS = 20_000


class JobBusy(RuntimeError):
    """A job of this kind is already running; the message says which."""


@dataclass
class Job:
    kind: str
    title: str
    info: dict[str, Any] = field(default_factory=dict)
    status: str = RUNNING
    progress: float = 0.0
    message: str = "starting"
    error: str = ""
    sample: str = ""
    result: Any = None
    events: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    finished: float | None = None
    version: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def active(self) -> bool:
        return self.status in (RUNNING, STOPPING)

    @property
    def elapsed(self) -> float:
        return (self.finished or time.time()) - self.started

    def update(self, progress: float | None = None, message: str | None = None, sample: str | None = None) -> None:
        with self.lock:
            if progress is not None:
                self.progress = min(1.0, max(0.0, progress))
            if message is not None:
                self.message = message
            if sample is not None:
                self.sample = sample
            self.version += 1

    def add_event(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.events.append(event)
            if len(self.events) > MAX_EVENTS:  # keep the start and thin the middle
                del self.events[1 : MAX_EVENTS // 2 : 2]
            self.version += 1

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy for the page (the worker thread keeps writing to the job)."""
        with self.lock:
            return {
                "kind": self.kind,
                "title": self.title,
                "info": dict(self.info),
                "status": self.status,
                "progress": self.progress,
                "message": self.message,
                "error": self.error,
                "sample": self.sample,
                "events": list(self.events),
                "elapsed": self.elapsed,
                "version": self.version,
                "active": self.active,
            }


class JobManager:
    """Owns the job threads; at most one active job per kind."""

    def __init__(self, journal: Path | None = None) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._journal = Path(journal) if journal else None
        self._closing = False
        for kind, record in self._read_journal().items():
            self._jobs[kind] = Job(
                kind=kind,
                title=record.get("title", kind),
                info=record.get("info", {}),
                status=INTERRUPTED,
                message="the server stopped while it ran",
                started=record.get("started", time.time()),
                finished=record.get("started", time.time()),
            )

    def _read_journal(self) -> dict[str, dict[str, Any]]:
        if self._journal is None:
            return {}
        try:
            records = json.loads(self._journal.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # none yet, or unreadable: nothing to bring back
            return {}
        if not isinstance(records, dict):
            return {}
        return {kind: record for kind, record in records.items() if kind in KINDS and isinstance(record, dict)}

    def _write_journal(self, ending: dict[str, str] | None = None) -> None:
        """Record the running and interrupted jobs (called with self._lock held).

        `ending` maps the kind of a job that is finishing to the status it is about to get.
        """
        if self._journal is None:
            return
        ending = ending or {}
        records = {
            job.kind: {"title": job.title, "info": job.info, "started": job.started}
            for job in self._jobs.values()
            if ending.get(job.kind, job.status) in (RUNNING, STOPPING, INTERRUPTED)
        }
        try:
            atomic_write_text(self._journal, json.dumps(records, default=str))
        except OSError as err:  # the job itself matters more than its record
            log.warning("cannot write the job journal %s: %s", self._journal, err)

    def get(self, kind: str) -> Job | None:
        return self._jobs.get(kind)

    def active(self, kind: str) -> Job | None:
        job = self._jobs.get(kind)
        return job if job is not None and job.active else None

    def start(
        self, kind: str, title: str, fn: Callable[[Job], Any], *, before: Callable[[], None] | None = None, **info: Any
    ) -> Job:
        """Run `fn(job)` in a thread. Raises JobBusy when a job of `kind` is still running.

        `before` runs under the manager's lock once no job of `kind` runs (e.g. clearing a model folder to
        overwrite it), so that check and change are one step for concurrent requests; if it raises, nothing starts.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown job kind {kind!r}; use one of {', '.join(KINDS)}")
        with self._lock:
            running = self.active(kind)
            if running is not None:
                raise JobBusy(
                    f"A {kind} job is already running ({running.title}, {running.elapsed:.0f}s); "
                    "stop it first or wait for it to finish."
                )
            if before is not None:
                before()
            job = Job(kind=kind, title=title, info=info)
            job.thread = threading.Thread(target=self._run, args=(job, fn), name=f"workbench-{kind}", daemon=True)
            self._jobs[kind] = job
            self._write_journal()
            job.thread.start()
        log.info("started %s job: %s", kind, title)
        return job

    def _run(self, job: Job, fn: Callable[[Job], Any]) -> None:
        error, result = None, None
        try:
            result = fn(job)
        except ValueError as err:  # a user's mistake (TuningError, DataError, ConfigError...): its message is enough
            log.error("%s job failed: %s: %s", job.kind, job.title, err)
            error = err
        except BaseException as err:  # noqa: BLE001 - a job must never take the server down
            log.exception("%s job failed: %s", job.kind, job.title)
            error = err
        if error is not None:
            status, message = FAILED, "failed"
        elif self._closing and job.stop.is_set():  # ended by the server going down: resumable
            status, message = INTERRUPTED, "the server stopped while it ran"
        else:
            status, message = (STOPPED if job.stop.is_set() else DONE), job.message
        with self._lock:  # the journal first: whoever sees the job end also sees its record gone
            self._write_journal(ending={job.kind: status})
        with job.lock:  # status last: code that polls `active` without the lock sees a finished job whole
            job.result, job.message, job.finished = result, message, time.time()
            if error is not None:
                job.error = error_text(error)
            if status == DONE:
                job.progress = 1.0
            job.status = status
            job.version += 1

    def require_dataset(self, data_dir) -> None:
        """A run needs a prepared dataset that no prepare job is rewriting: the one check of every tab."""
        from core.data import DataError, require_dataset

        require_dataset(data_dir)
        if self.active("prepare"):
            raise DataError("a dataset is being prepared; start when it is done")

    def stop(self, kind: str) -> str:
        """Ask the running job of `kind` to stop cleanly; returns a message for the page."""
        job = self.active(kind)
        if job is None:
            return f"No {kind} job is running."
        job.stop.set()
        with job.lock:
            if job.status == RUNNING:
                job.status = STOPPING
                job.message = "stopping at the next step"
                job.version += 1
        return f"Stopping {job.title} at the next step (it saves first)."

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop every job and wait for them (used when the server exits)."""
        self._closing = True
        jobs = [job for job in self._jobs.values() if job.active]
        for job in jobs:
            job.stop.set()
        deadline = time.monotonic() + timeout
        for job in jobs:
            if job.thread is not None:
                job.thread.join(max(0.0, deadline - time.monotonic()))


def error_text(err: BaseException) -> str:
    """The message a user sees: our own errors speak for themselves, others get their type."""
    from core.checkpoint import ModelError
    from core.config import ConfigError
    from core.data import DataError

    own = (ModelError, ConfigError, DataError)
    try:
        from core.tune.config import TuningError

        own = (*own, TuningError)
    except ImportError:  # pragma: no cover - optuna missing
        pass
    text = str(err).strip()
    if isinstance(err, own) and text:
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__

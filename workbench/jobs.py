"""Background jobs for the workbench: a core function run in a thread, its state kept on the server.

    jobs = JobManager()
    job = jobs.start("train", "training 'tiny'", lambda job: train(..., hooks=...))   # JobBusy if one runs
    jobs.get("train").snapshot()     # status, progress, message, events, sample, error
    jobs.stop("train")               # sets job.stop; the core function ends cleanly at its next step

One job of each kind ("prepare", "tune", "train") runs at a time. The page polls `get(kind)` with a
`gr.Timer`, so reloading or closing it changes nothing on the server. An exception in a job becomes its
`error` text; it never reaches the server.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

KINDS = ("prepare", "tune", "train")
RUNNING, STOPPING, DONE, STOPPED, FAILED = "running", "stopping", "done", "stopped", "failed"
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

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def get(self, kind: str) -> Job | None:
        return self._jobs.get(kind)

    def active(self, kind: str) -> Job | None:
        job = self._jobs.get(kind)
        return job if job is not None and job.active else None

    def start(self, kind: str, title: str, fn: Callable[[Job], Any], **info: Any) -> Job:
        """Run `fn(job)` in a thread. Raises JobBusy when a job of `kind` is still running."""
        if kind not in KINDS:
            raise ValueError(f"unknown job kind {kind!r}; use one of {', '.join(KINDS)}")
        with self._lock:
            running = self.active(kind)
            if running is not None:
                raise JobBusy(
                    f"A {kind} job is already running ({running.title}, {running.elapsed:.0f}s); "
                    "stop it first or wait for it to finish."
                )
            job = Job(kind=kind, title=title, info=info)
            job.thread = threading.Thread(target=self._run, args=(job, fn), name=f"workbench-{kind}", daemon=True)
            self._jobs[kind] = job
            job.thread.start()
        log.info("started %s job: %s", kind, title)
        return job

    def _run(self, job: Job, fn: Callable[[Job], Any]) -> None:
        try:
            result = fn(job)
        except BaseException as err:  # noqa: BLE001 - a job must never take the server down
            log.exception("%s job failed: %s", job.kind, job.title)
            with job.lock:
                job.error = error_text(err)
                job.status = FAILED
                job.message = "failed"
        else:
            with job.lock:
                job.result = result
                job.status = STOPPED if job.stop.is_set() else DONE
                job.progress = 1.0 if job.status == DONE else job.progress
        finally:
            with job.lock:
                job.finished = time.time()
                job.version += 1

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
        from core.tuning import TuningError

        own = (*own, TuningError)
    except ImportError:  # pragma: no cover - optuna missing
        pass
    text = str(err).strip()
    if isinstance(err, own) and text:
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__

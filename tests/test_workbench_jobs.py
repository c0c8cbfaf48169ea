"""The workbench's job manager: one job per kind, clean stop, errors captured, never raised."""

from __future__ import annotations

import threading
import time

import pytest

from core.data import DataError
from workbench.jobs import DONE, FAILED, STOPPED, JobBusy, JobManager


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.01)


def test_one_job_per_kind_and_a_clean_stop():
    jobs = JobManager()
    started = threading.Event()

    def work(job):
        started.set()
        step = 0
        while not job.stop.is_set():
            step += 1
            job.add_event({"step": step})
            job.update(progress=min(1.0, step / 1000), message=f"step {step}")
            time.sleep(0.005)
        return step

    job = jobs.start("train", "training tiny", work, model="tiny")
    started.wait(5)
    with pytest.raises(JobBusy, match="already running.*training tiny"):
        jobs.start("train", "training other", work)
    other = jobs.start("tune", "study s", lambda job: "done")  # another kind runs alongside
    wait_until(lambda: other.status == DONE)
    assert other.result == "done" and other.progress == 1.0

    assert "Stopping training tiny" in jobs.stop("train")
    wait_until(lambda: not job.active)
    snap = job.snapshot()
    assert snap["status"] == STOPPED and snap["info"] == {"model": "tiny"}
    assert job.result == len(snap["events"]) > 0
    assert jobs.stop("train") == "No train job is running."
    again = jobs.start("train", "training again", lambda job: 1)  # a finished job frees its kind
    wait_until(lambda: again.status == DONE)


def test_errors_become_the_jobs_error_text():
    jobs = JobManager()

    def bad_data(job):
        raise DataError("corpus.txt is not valid UTF-8 at byte 3")

    def crash(job):
        return {}["missing"]

    first = jobs.start("prepare", "preparing", bad_data)
    wait_until(lambda: not first.active)
    assert first.status == FAILED and first.error == "corpus.txt is not valid UTF-8 at byte 3"
    second = jobs.start("prepare", "preparing again", crash)
    wait_until(lambda: not second.active)
    assert second.status == FAILED and second.error.startswith("KeyError")
    with pytest.raises(ValueError, match="unknown job kind"):
        jobs.start("bake", "x", crash)


def test_shutdown_stops_running_jobs():
    jobs = JobManager()
    job = jobs.start("tune", "forever", lambda job: job.stop.wait(30))
    jobs.shutdown(timeout=5)
    assert job.status == STOPPED and job.finished is not None

"""The workbench's job manager: one job per kind, clean stop, errors captured, never raised."""

from __future__ import annotations

import threading
import time

import optuna
import pytest

from core.data import DataError
from workbench.jobs import DONE, FAILED, INTERRUPTED, STOPPED, JobBusy, JobManager


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
    assert job.status == INTERRUPTED and job.finished is not None  # the next server offers to resume it


def test_a_job_running_when_the_server_died_comes_back_interrupted(tmp_path):
    journal = tmp_path / ".workbench" / "jobs.json"
    first_server = JobManager(journal)
    running = first_server.start("train", "training tiny", lambda job: job.stop.wait(30), model="tiny", max_iters=80)
    finished = first_server.start("prepare", "preparing", lambda job: None)
    wait_until(lambda: not finished.active)

    # the first server is killed here (its thread never ends cleanly); the next one reads the journal
    second_server = JobManager(journal)
    job = second_server.get("train")
    assert job.status == INTERRUPTED and not job.active
    assert job.title == "training tiny" and job.info == {"model": "tiny", "max_iters": 80}
    assert second_server.get("prepare") is None  # it ended before the crash
    resumed = second_server.start("train", "training tiny (resumed)", lambda job: None)
    wait_until(lambda: not resumed.active)
    assert JobManager(journal).get("train") is None  # a job that ended is no longer recorded
    running.stop.set()


def test_a_clean_shutdown_leaves_its_jobs_resumable(tmp_path):
    journal = tmp_path / "jobs.json"
    jobs = JobManager(journal)
    job = jobs.start("tune", "study s", lambda job: job.stop.wait(30), study="s")
    jobs.shutdown(timeout=5)
    assert job.status == INTERRUPTED
    assert JobManager(journal).get("tune").info == {"study": "s"}


def test_an_unreadable_journal_is_ignored(tmp_path):
    journal = tmp_path / "jobs.json"
    journal.write_text("{torn")
    assert JobManager(journal).get("train") is None


def test_the_trials_table_shows_what_a_candidate_trains_not_the_draw_its_user_flags_replaced():
    from workbench.controllers.tune import trial_rows

    drawn = {"n_layer": 5, "head_size": 32, "lr": 0.002}
    trains = {"n_layer": 1, "n_head": 2, "n_embd": 16, "lr": 0.002, "batch_size": 4}  # the user fixed the shape
    trial = optuna.trial.create_trial(
        params=drawn,
        distributions={
            "n_layer": optuna.distributions.IntDistribution(3, 6),
            "head_size": optuna.distributions.CategoricalDistribution((32, 48)),
            "lr": optuna.distributions.FloatDistribution(5e-4, 3e-3, log=True),
        },
        value=1.5,
        user_attrs={"params": trains, "rung": 0, "candidate": 1},
    )
    default = optuna.trial.create_trial(
        value=1.6, user_attrs={"params": trains | {"head_size": 48}, "rung": 0, "candidate": 0}
    )  # drew nothing; a draw's head size may linger beside the user's width
    assert trial_rows([trial])[0][5] == "head_size=8 lr=0.002 n_layer=1"
    assert trial_rows([default])[0][5] == "batch_size=4 head_size=8 lr=0.002 n_embd=16 n_head=2 n_layer=1"

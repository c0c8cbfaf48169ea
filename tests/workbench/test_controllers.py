"""The tabs' controllers without a page: what Start, the plan and the tick say, tested as plain calls."""

from __future__ import annotations

import json
import time

import optuna
import pytest

from workbench.controllers.train import TrainController
from workbench.controllers.tune import TuneController, job_progress, summary_line, trial_rows
from workbench.jobs import JobManager
from workbench.project import Project
from workbench.studies import StudyReader

TINY = json.dumps({"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "batch_size": 4})


@pytest.fixture
def project(tmp_path, dataset_dir):
    dataset_dir.rename(tmp_path / "dataset")
    return Project(tmp_path)


def tune_controller(project: Project) -> TuneController:
    return TuneController(project, JobManager(), StudyReader(project.storage))


def test_the_plan_and_the_minimums_are_said_before_start_and_a_short_budget_gets_its_number(project):
    control = tune_controller(project)
    form = {"study": "s", "model": "best", "fixed": TINY, "minutes": 3}
    text = control.plan_text(form)
    assert "to train the default model here" in text and "a search needs" in text and "**Plan:**" in text
    assert "candidates train" in text or "no search" in text
    assert "give at least" in control.plan_text(form | {"minutes": 0.05})  # 3 s: below one run, with its number
    assert "no search" in control.plan_text(form | {"minutes": 0.5})  # room to train, not to search: the default
    assert "searches" not in control.plan_text(form | {"fixed": "{oops"}) and "not valid JSON" in control.plan_text(
        form | {"fixed": "{oops"}
    )


def test_a_tournament_s_bar_moves_with_the_clock_between_its_events():
    now = time.time()
    event = {"kind": "step", "rung": 0, "candidate": 1, "trial": 1, "step": 120, "loss": 2.5, "time_left_s": 100.0,
             "at": now, "alive": 3}  # fmt: skip
    snap = {"active": True, "status": "running", "title": "tournament t", "elapsed": 80.0, "progress": 0.0,
            "message": "", "events": [event], "info": {"mode": "budget", "tune": {"budget": 180.0}}}  # fmt: skip
    first, text = job_progress(snap, now)
    later, later_text = job_progress(snap, now + 10)
    assert "candidate 1 at step 120, train loss 2.500" in text and "1:40 left" in text and "1:30 left" in later_text
    assert later > first


def test_a_stopped_rung_reads_stopped_and_a_running_one_shows_its_latest_step(tmp_path):
    study = optuna.create_study()
    running = study.ask()
    stopped = study.ask()
    stopped.set_user_attr("reason", "stopped by the user")
    study.tell(stopped, state=optuna.trial.TrialState.FAIL)
    rows = {row[0]: row for row in trial_rows(study.trials, live={running.number: 345})}
    assert rows[stopped.number][1] == "STOPPED" and rows[running.number][1] == "RUNNING"
    assert rows[running.number][3] == 345
    assert "1 running, 1 stopped" in summary_line(study.trials)


def test_a_taken_model_name_offers_a_free_one_and_no_server_path(project):
    (project.models_dir / "best").mkdir(parents=True)
    (project.models_dir / "best" / "config.json").write_text("{}")
    started = tune_controller(project).start_budget({"study": "s", "model": "best", "fixed": TINY, "minutes": 1})
    assert started.free_name == "best-2" and "Replace a saved model" in started.message
    assert str(project.root) not in started.message and started.study is None
    message = TrainController(project, JobManager(), StudyReader(project.storage)).start(
        "best", False, None, (1, 2, 16, 16, 0, 4, 1e-3, 0, 5, 10, 0, 5, 2, 0)
    )
    assert "models/best already holds a model" in message and "best-2 is free" in message


def test_train_and_val_keep_their_colours_on_every_chart_and_counts_read_as_words():
    from workbench.controllers.tune import fmt_minutes, plural
    from workbench.views import LOSS_COLOURS, loss_figure

    evals = [{"step": 10, "train_loss": 2.0, "val_loss": 2.1}]
    for figure in (loss_figure(evals), loss_figure(evals, steps=[{"step": 1, "loss": 3.0}])):
        colours = {trace.name: trace.line.color for trace in figure.data if trace.name in LOSS_COLOURS}
        assert colours == LOSS_COLOURS
    assert plural(1, "trial") == "1 trial" and plural(3, "trial") == "3 trials"
    assert fmt_minutes(60) == "60 seconds" and fmt_minutes(180) == "3 minutes" and fmt_minutes(3600) == "60 minutes"


def test_the_minimums_are_not_measured_beside_a_running_job(project):
    import threading

    control = tune_controller(project)
    release = threading.Event()
    control.jobs.start("train", "training busy", lambda job: release.wait(30))
    try:
        text = control.plan_text({"study": "s", "model": "best", "fixed": TINY, "minutes": 3})
        assert "when no job is running" in text
        assert not (project.data_dir / ".tournament_speed.json").exists()  # nothing slow was cached
    finally:
        release.set()
    control.jobs.get("train").thread.join(5)
    assert "**Plan:**" in control.plan_text({"study": "s", "model": "best", "fixed": TINY, "minutes": 3})


def test_the_chat_tab_shows_a_models_card_and_exports_a_zip_of_its_checked_onnx(project):
    import zipfile

    from core import checkpoint as ckpt
    from core.config import ModelConfig
    from core.data import Dataset
    from core.model import GPT
    from workbench.controllers.chat import ChatController, ChatError

    vocab = Dataset(project.data_dir).vocab
    config = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=len(vocab))
    ckpt.save_model(project.models_dir / "m", ckpt.weights_for_saving(GPT(config)), config, vocab, {})
    control = ChatController(project)
    assert control.card("m").startswith("# m\n") and "python app.py export --model m" in control.card("m")
    assert control.card("ghost").startswith("No card:") and control.card(None) == "No model chosen."
    archive, message = control.export("m")
    assert "Checked in onnxruntime" in message and "models/m/export" in message and str(project.root) not in message
    assert sorted(zipfile.ZipFile(archive).namelist()) == ["README.md", "model.onnx", "vocab.txt"]
    with pytest.raises(ChatError, match="no saved model named 'ghost' \\(saved models: m\\)"):
        control.export("ghost")


def test_the_dataset_tab_prepares_an_upload_under_its_own_name_and_refuses_while_training(tmp_path):
    from tests.helpers import TEXT
    from workbench.controllers.dataset import UPLOAD, DatasetController, corpus_overview

    project, jobs = Project(tmp_path), JobManager()
    control = DatasetController(project, jobs)
    upload = tmp_path / "incoming" / "my_letters.txt"
    upload.parent.mkdir()
    upload.write_text(TEXT.rstrip("\n") + "\x0b", encoding="utf-8")  # no last line end; a character with no glyph
    assert "Started" in control.start(UPLOAD, [str(upload)], "", 0.1, "strict")
    jobs.get("prepare").thread.join(60)
    overview, sample = corpus_overview(project)
    assert "my_letters.txt" in overview and "uploads/" not in overview and sample
    assert "with 1 line end added" in overview and "U+000B" in overview
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    assert "empty.txt is empty" in control.start(UPLOAD, [str(tmp_path / "empty.txt")], "", 0.1, "strict")
    jobs.start("train", "training m", lambda job: time.sleep(2))
    assert "is using the dataset" in control.start(UPLOAD, [str(upload)], "", 0.1, "strict")

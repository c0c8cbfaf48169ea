"""--report-to (core.tracking): a tracked run's numbers in TensorBoard's event files and in trackio's store are
metrics.jsonl's, a tune run files each trial under its study, and a tracker not installed is said plainly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from core import tracking
from core.tracking import TrackingError, check_report_to, run_names
from tests.helpers import APP, APP_ENV, TINY_MODEL_FLAGS, TINY_SPACE, run_app

RUN = ["--max-iters", "30", "--eval-interval", "10", "--eval-iters", "2", "--sample-chars", "20", "--device", "cpu",
       *TINY_MODEL_FLAGS]  # fmt: skip


def metrics(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.fixture
def project(tmp_path, corpus_file):
    assert run_app("prepare", str(corpus_file), cwd=tmp_path).returncode == 0
    return tmp_path


def test_a_run_reported_to_tensorboard_holds_its_metrics(project):
    pytest.importorskip("tensorboard")
    done = run_app("train", "--name", "t", "--report-to", "tensorboard", *RUN, cwd=project)
    assert done.returncode == 0, done.stderr
    records = metrics(project / "models" / "t")
    scalars = tensorboard_scalars(project / "tracking" / "tensorboard" / "train" / "t")
    for key in ("train_loss", "val_loss", "best_val_loss", "lr", "tokens_per_s", "elapsed_s"):
        expected = [(r["step"], r[key]) for r in records]
        assert [s for s, _ in scalars[key]] == [s for s, _ in expected]
        assert [v for _, v in scalars[key]] == pytest.approx([v for _, v in expected], rel=1e-6)  # float32 events


def test_a_run_reported_to_trackio_holds_its_metrics(project):
    pytest.importorskip("trackio")
    env = {**APP_ENV, "TRACKIO_DIR": str(project / "store")}
    done = subprocess.run([*APP, "train", "--name", "t", "--report-to", "trackio", *RUN], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    read = subprocess.run(
        [sys.executable, "-c", "import json; from trackio.sqlite_storage import SQLiteStorage as S; "
         f"print(json.dumps(S.get_logs({tracking.PROJECT!r}, 'train/t'), default=str))"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert read.returncode == 0, read.stderr
    logged = {row["step"]: row for row in json.loads(read.stdout)}
    records = metrics(project / "models" / "t")
    assert sorted(logged) == [r["step"] for r in records]
    for record in records:
        for key in ("train_loss", "val_loss", "lr", "tokens_per_s", "elapsed_s"):
            assert logged[record["step"]][key] == pytest.approx(record[key])


def test_tune_files_each_trial_under_its_study(project):
    pytest.importorskip("tensorboard")
    (project / "space.json").write_text(json.dumps(TINY_SPACE))
    done = run_app("tune", "--study", "s", "--trials", "2", "--trial-iters", "12", "--eval-interval", "6",
                   "--eval-iters", "1", "--report-to", "tensorboard", "--device", "cpu", "--space", "space.json",
                   cwd=project)  # fmt: skip
    assert done.returncode == 0, done.stderr
    runs = sorted(p.name for p in (project / "tracking" / "tensorboard" / "s").iterdir())
    assert runs == ["trial-000", "trial-001"]
    assert tensorboard_scalars(project / "tracking" / "tensorboard" / "s" / "trial-000")["val_loss"]


def test_a_tracker_asked_for_and_missing_is_said_plainly(monkeypatch, project):
    with pytest.raises(TrackingError, match="report_to must be one of none, tensorboard, trackio, got 'wandb'"):
        check_report_to("wandb")
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TrackingError, match="needs the trackio package: pip install -r requirements-tracking.txt"):
        check_report_to("trackio")
    check_report_to("none")
    bad = run_app("train", "--name", "t", "--report-to", "wandb", *RUN, cwd=project)
    assert bad.returncode != 0 and "report_to must be one of none, tensorboard, trackio, got 'wandb'" in bad.stderr
    assert not (project / "models" / "t").exists()
    assert run_names("s/candidate-003", None) == ("s", "candidate-003")
    assert run_names("", project / "models" / "m") == ("train", "m")


def test_a_resumed_run_replaces_what_tensorboard_held_past_its_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    first = tracking.TensorBoardTracker(tmp_path, {})
    for step in range(1, 31):
        first.log({"train_loss": 1.0}, step)
    first.finish("")
    resumed = tracking.TensorBoardTracker(tmp_path, {}, step=20)  # its checkpoint was step 20
    for step in range(21, 26):
        resumed.log({"train_loss": 0.5}, step)
    resumed.finish("")
    steps = [s for s, _ in tensorboard_scalars(tmp_path)["train_loss"]]
    assert steps == list(range(1, 26))


def test_a_tracker_that_fails_to_finish_does_not_fail_the_saved_run(
    tmp_path, monkeypatch, caplog, tiny_model_config, tiny_train_config
):
    import dataclasses

    from core import trainer

    class Broken:
        def log(self, record, step):
            pass

        def finish(self, sample):
            raise OSError("No space left on device")

    monkeypatch.setattr(trainer, "open_tracker", lambda *args: Broken())
    config = dataclasses.replace(tiny_train_config, max_iters=4, report_to="tensorboard")
    result = trainer.train(tiny_model_config, config, out_dir=tmp_path / "m")
    assert result.iters == 4 and (tmp_path / "m" / "model.safetensors").is_file()
    assert "could not finish the --report-to tensorboard run: No space left on device" in caplog.text

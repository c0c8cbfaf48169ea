"""The workbench over its HTTP API (gradio_client), launched in-process on a free port in a temp project."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from core.data import prepare  # noqa: E402
from tests.helpers import TEXT, TINY_SPACE, free_port  # noqa: E402

# name, overwrite, n_layer, n_head, n_embd, block_size, dropout, batch_size, lr, weight_decay, warmup_iters,
# max_iters, max_minutes, eval_interval, eval_iters, sample_chars
TINY_TRAIN = [1, 2, 16, 16, 0.0, 8, 3e-3, 0.0, 5, 60, 0, 20, 4, 40]


SKIPPED = {"__type__": "update"}  # gr.skip() as the client receives it


def is_update(value) -> bool:
    """gr.skip() reaches the client as an update dict: nothing changed."""
    return isinstance(value, dict) and value.get("__type__") == "update"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from workbench.app import launch

    root = tmp_path_factory.mktemp("project")
    (root / "corpora").mkdir()
    (root / "corpora" / "verse.txt").write_text(TEXT, encoding="utf-8")
    prepare([root / "corpora" / "verse.txt"], root / "dataset")
    previous = Path.cwd()
    os.chdir(root)  # core.tune.results writes studies/<name>.best.json relative to the working folder
    port = free_port()
    demo, jobs, board = launch("127.0.0.1", port, root=root, block=False)
    try:
        yield SimpleNamespace(
            root=root, jobs=jobs, board=board, client=Client(f"http://127.0.0.1:{port}/", verbose=False)
        )
    finally:
        jobs.shutdown()
        demo.close()
        if board:
            board.close()
        os.chdir(previous)


@contextmanager
def restarted_workbench(root: Path, journal: dict) -> Iterator[Client]:
    """A second workbench on `root`, started as after a crash that left `journal` in .workbench/jobs.json."""
    from workbench.app import launch

    (root / ".workbench").mkdir(exist_ok=True)
    (root / ".workbench" / "jobs.json").write_text(json.dumps(journal))
    port = free_port()
    demo, jobs, _ = launch("127.0.0.1", port, root=root, dashboard=False, block=False)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        jobs.shutdown()
        demo.close()


def poll(client: Client, api_name: str, done, *args, timeout: float = 90.0):
    """Call a refresh endpoint until `done(outputs)`; the outputs as a page shows them: each the last value
    sent (a tick skips what has not changed)."""
    deadline = time.monotonic() + timeout
    shown = None
    while time.monotonic() < deadline:
        outputs = client.predict(*args, api_name=api_name)
        shown = [old if new == SKIPPED else new for new, old in zip(outputs, shown or outputs)]
        if not all(is_update(v) for v in shown) and done(shown):
            return shown
        time.sleep(0.5)
    raise AssertionError(f"{api_name} did not finish in {timeout}s; last outputs: {shown}")


def test_a_study_runs_trials_that_appear_and_finish_and_a_second_start_is_refused(app):
    args = ["tiny", 3, 20, 0, "none", 10, 2, 0, 0, json.dumps(TINY_SPACE)]
    message, view = app.client.predict(*args, api_name="/tune_start")
    assert "Started study tiny" in message and view["value"] == "tiny"
    message, _ = app.client.predict(*args, api_name="/tune_start")
    assert "already running" in message and "study tiny" in message

    outputs = poll(app.client, "/tune_refresh", lambda o: "finished" in str(o[1]), "tiny")
    bar, status, summary, table, history, curves, importance, _ = outputs
    assert "3 complete" in summary
    rows = table["data"]
    assert [row[0] for row in rows] == [2, 1, 0] and all(row[1] == "COMPLETE" for row in rows)
    assert all(isinstance(row[2], float) for row in rows) and "lr=" in rows[0][5]
    assert history["type"] == "plotly" and curves["type"] == "plotly" and importance["type"] == "plotly"
    assert (app.root / "studies" / "tiny.best.json").is_file()
    # the dashboard beside it reads the same storage
    import urllib.request

    with urllib.request.urlopen(app.board.url.replace("/dashboard/", "/api/studies"), timeout=10) as response:
        assert "tiny" in response.read().decode()


def test_bad_tuning_input_is_an_error_message(app):
    args = ["bad", 3, 20, 0, "none", 10, 2, 0, 0]
    message, _ = app.client.predict(*args, json.dumps({"n_layer": [4, 2]}), api_name="/tune_start")
    assert "low (4) is greater than high (2)" in message
    message, _ = app.client.predict(*args, "{not json", api_name="/tune_start")
    assert "not valid JSON" in message
    message, _ = app.client.predict("../x", *args[1:], "{}", api_name="/tune_start")
    assert "invalid study name" in message


def test_a_flops_budget_and_pruner_settings_reach_the_study(app):
    import optuna

    args = ["flops", 2, 20, 0, "none", 10, 2, 0, 0, json.dumps(TINY_SPACE)]
    message, _ = app.client.predict(*args, "lots", 3, 33.3, 3, api_name="/tune_start")
    assert "cannot read FLOPs &#x27;lots&#x27;" in message
    message, _ = app.client.predict(*args, "0.3G", 3, 0, 3, api_name="/tune_start")
    assert "pruner percentile must be in (0, 100)" in message
    message, _ = app.client.predict(*args, "0.3G", 3, 33.3, 3, api_name="/tune_start")
    assert "Started study flops" in message
    poll(app.client, "/tune_refresh", lambda o: "finished" in str(o[1]), "flops")
    study = optuna.load_study(study_name="flops", storage=f"sqlite:///{app.root / 'studies' / 'gpt_tuning.db'}")
    assert [sorted(t.intermediate_values) for t in study.trials] == [[1, 2, 3]] * 2  # evaluated at equal FLOPs


def test_a_study_interrupted_before_the_flops_setting_existed_resumes(app):
    # a journal written by a workbench whose Start took ten inputs
    old_args = ["older", 2, 20, 0, "none", 10, 2, 0, 0, json.dumps(TINY_SPACE)]
    record = {"title": "study older", "info": {"study": "older", "args": old_args, "target_trials": 2}}
    with restarted_workbench(app.root, {"tune": record}) as client:
        message, _ = client.predict(api_name="/tune_resume")
        assert "Started study older: 2 trials" in message
        outputs = poll(client, "/tune_refresh", lambda o: "finished" in str(o[1]), "older")
        assert "2 complete" in outputs[2] and sorted(r[3] for r in outputs[3]["data"]) == [20, 20]


def test_training_shows_growing_metrics_then_chat_streams_a_reply(app):
    message = app.client.predict("tiny", False, *TINY_TRAIN, api_name="/train_start")
    assert "Started training tiny" in message
    refused = app.client.predict("other", False, *TINY_TRAIN, api_name="/train_start")
    assert "already running" in refused

    seen_steps = []

    def finished(outputs) -> bool:
        bar = outputs[0]
        if "step " in bar and "/60" in bar:
            seen_steps.append(int(bar.split("step ")[1].split("/")[0]))
        return "finished" in str(outputs[1])

    outputs = poll(app.client, "/train_refresh", finished)
    assert "val loss" in outputs[1] and "whole validation split" in outputs[1]
    assert outputs[4]["value"] == "tiny"  # Saved models selects the model just trained
    assert "(whole validation split)" in outputs[7]  # and shows its details, as a resumed model's would refresh
    assert outputs[2]["type"] == "plotly" and isinstance(outputs[3], str) and outputs[3]
    metrics = (app.root / "models" / "tiny" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == [20, 40, 60]
    assert seen_steps == sorted(seen_steps)
    info, figure = app.client.predict("tiny", api_name="/model_details")
    assert "(whole validation split)" in info and figure["type"] == "plotly"

    again = app.client.predict("tiny", False, *TINY_TRAIN, api_name="/train_start")
    assert "already holds a model" in again
    bad = app.client.predict("wide", False, 1, 3, 16, *TINY_TRAIN[3:], api_name="/train_start")
    assert "must be a multiple of n_head" in bad

    job = app.client.submit("To be, or not", [], "tiny", 0.8, 0, 1.0, 1.0, 60, 1, api_name="/chat")
    final = job.result(timeout=60)
    texts = [o[0][-1]["content"][0]["text"] if o[0][-1]["content"] else "" for o in job.outputs()]
    assert len(texts) >= 2 and texts[0] == ""  # the reply streams in: an empty message first, then text
    assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:]))
    history = final[0]
    assert history[0]["role"] == "user" and history[-1]["role"] == "assistant"
    assert history[-1]["content"][0]["text"]
    with pytest.raises(AppError, match="no saved model named 'ghost'"):
        app.client.predict("hi", [], "ghost", 0.8, 0, 1.0, 1.0, 20, 1, api_name="/chat")
    with pytest.raises(AppError, match="invalid model name"):
        app.client.predict("hi", [], "../../etc", 0.8, 0, 1.0, 1.0, 20, 1, api_name="/chat")


def test_a_restarted_workbench_offers_to_resume_the_interrupted_training(app):
    # what a server killed while training 'tiny' leaves behind (the training test saved it at step 60)
    record = {"title": "training tiny", "info": {"model": "tiny", "max_iters": 80}, "started": time.time()}
    with restarted_workbench(app.root, {"train": record}) as client:
        bar, status, _plot, _sample, _saved, name, max_iters, _info, _details = client.predict(
            api_name="/train_refresh"
        )
        assert "interrupted" in bar and "Resume" in status and name == "tiny" and max_iters == 80
        message = client.predict(name, max_iters, 0, api_name="/train_resume")
        assert "Resuming tiny from step 60 to 80" in message
        poll(client, "/train_refresh", lambda o: "finished" in str(o[1]))
        metrics = (app.root / "models" / "tiny" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["step"] for line in metrics] == [20, 40, 60, 80]
        assert json.loads((app.root / ".workbench" / "jobs.json").read_text()) == {}


def test_prepare_refuses_paths_outside_the_project_and_bad_uploads(app, tmp_path):
    server = "Files or folders on the server"
    (app.root / "users.txt").write_text("me:secret\n")
    (app.root / "corpora" / ".env").write_text("TOKEN=secret\n")
    for path in ("../../etc/passwd", "/etc/passwd", "dataset/output_train.txt", "users.txt", ".git/config",
                 "corpora/.env", "corpora/../users.txt"):  # fmt: skip
        message = app.client.predict(server, None, path, 0.1, "strict", api_name="/prepare_start")
        assert "wb-error" in message, path
        assert "secret" not in message
    message = app.client.predict(server, None, "users.txt", 0.1, "strict", api_name="/prepare_start")
    assert "not in a corpus folder" in message
    message = app.client.predict(server, None, "corpora/.env", 0.1, "strict", api_name="/prepare_start")
    assert "hidden file" in message
    (app.root / "corpora" / ".env").unlink()
    (app.root / "corpora" / "escape.txt").symlink_to("/etc/hostname")
    message = app.client.predict(server, None, "corpora", 0.1, "strict", api_name="/prepare_start")
    assert "points outside the corpus folders" in message
    (app.root / "corpora" / "escape.txt").unlink()

    message = app.client.predict("Upload text files", None, "", 0.1, "strict", api_name="/prepare_start")
    assert "no file uploaded" in message
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    message = app.client.predict(
        "Upload text files", [handle_file(str(empty))], "", 0.1, "strict", api_name="/prepare_start"
    )
    assert "is empty" in message

    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"abc\x00\x01\x02" * 100)
    message = app.client.predict(
        "Upload text files", [handle_file(str(binary))], "", 0.1, "strict", api_name="/prepare_start"
    )
    assert "Started" in message
    deadline = time.monotonic() + 30
    while app.jobs.get("prepare").active and time.monotonic() < deadline:
        time.sleep(0.1)
    job = app.jobs.get("prepare")
    assert job.status == "failed" and "looks binary" in job.error
    stored = list((app.root / "uploads").iterdir())
    assert stored and all(p.parent == app.root / "uploads" and "blob" in p.name for p in stored)
    assert (app.root / "dataset" / "vocab.txt").is_file()  # the failed prepare left the dataset alone


def test_the_workbench_shows_trials_from_workers_on_another_storage(app, tmp_path):
    import optuna

    from workbench.app import launch

    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    study = optuna.create_study(study_name="shared", storage=storage)  # as a worker elsewhere would
    for value in (2.5, 2.1):
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
        trial.report(value + 0.3, 10)
        study.tell(trial, value)
    port = free_port()
    demo, jobs, _ = launch("127.0.0.1", port, root=app.root, storage=storage, dashboard=False, block=False)
    try:
        outputs = Client(f"http://127.0.0.1:{port}/", verbose=False).predict("shared", api_name="/tune_refresh")
        summary, table = outputs[2], outputs[3]
        assert "2 trial(s): 2 complete" in summary and "best val loss 2.1000 (trial 1)" in summary
        assert [row[0] for row in table["data"]] == [1, 0]
    finally:
        jobs.shutdown()
        demo.close()


def test_a_budgeted_tournament_runs_from_the_tune_tab_and_saves_its_winner(app):
    fixed = {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "batch_size": 4}

    def start(study, minutes, fixed_text, overwrite=False):
        return app.client.predict(study, minutes, "winner", 0, fixed_text, True, overwrite,
                                  api_name="/tune_budget_start")  # fmt: skip

    assert "give the total budget" in start("race", 0, "{}")[0]
    assert "unknown: colour" in start("race", 0.75, '{"colour": 1}')[0]
    plan = app.client.predict("race", 0.75, "winner", 0, json.dumps(fixed), True, False, api_name="/tune_plan")
    assert "to train the default model here" in plan and "Plan:" in plan  # said before Start
    message, view, _ = start("race", 0.75, json.dumps(fixed))
    assert "Started tournament race" in message and view["value"] == "race"
    outputs = poll(app.client, "/tune_refresh", lambda o: "finished" in str(o[1]), "race", timeout=120)
    assert "saved models/winner" in outputs[1]
    notes = [row[6] for row in outputs[3]["data"]]
    assert any(note.startswith("rung 0") for note in notes) and any("continues trial" in note for note in notes)
    assert (app.root / "models" / "winner" / "rungs.json").is_file()
    # a taken name: no server path, overwrite offered, a free name proposed and filled in
    message, _, name = start("race2", 0.75, json.dumps(fixed))
    assert "models/winner already holds a model" in message and str(app.root) not in message
    assert "Replace a saved model" in message and name["value"] == "winner-2"
    assert "finished" in start("race", 0.75, json.dumps(fixed))[0]  # a finished tournament is not silently re-run
    message, _, _ = start("race2", 0.75, json.dumps(fixed), overwrite=True)
    assert "Started tournament race2" in message
    app.client.predict(api_name="/tune_stop")
    poll(app.client, "/tune_refresh", lambda o: "stopped" in str(o[1]), "race2", timeout=120)


def test_saved_models_compare_side_by_side(app):
    import shutil

    fixture = Path(__file__).parents[1] / "fixtures" / "classic_tiny"
    for name in ("left", "right"):
        shutil.copytree(fixture, app.root / "models" / name, dirs_exist_ok=True)
    message, *_ = app.client.predict(["left"], "To be", 3, api_name="/compare_models")
    assert "two or more" in message
    message, plot, table, texts = app.client.predict(["left", "right"], "To be", 3, api_name="/compare_models")
    assert "Compared left, right" in message and plot["type"] == "plotly"
    assert table["headers"] == ["field", "left", "right"]
    rows = {row[0]: row[1:] for row in table["value"]["data"]}
    assert rows["pos_encoding"] == ["learned", "learned"] and rows["n_embd"] == ["16", "16"]
    assert rows["optimizer"] == ["adamw", "adamw"]  # a model saved before the recipe existed reads as classic
    import re

    shown = re.findall(r"<b>(\w+)</b><pre>(.*?)</pre>", texts, re.S)  # line breaks kept, wrapped, not cut off
    assert [name for name, _ in shown] == ["left", "right"]
    assert shown[0][1] == shown[1][1]  # same weights, same seed: the same continuation


def test_best_parameters_are_shown_rounded_and_run_exactly(app):
    import optuna

    storage = f"sqlite:///{app.root / 'studies' / 'gpt_tuning.db'}"
    study = optuna.create_study(study_name="exact", storage=storage)
    trial = study.ask()
    params = {"lr": 0.0014052678947839507, "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16}
    trial.set_user_attr("params", params)
    study.tell(trial, 2.0)
    outputs = app.client.predict("exact", 60, api_name="/train_use_best")
    assert outputs[6]["value"] == 0.001405  # the lr field: four significant digits
    values = [*TINY_TRAIN[:6], outputs[6]["value"], *TINY_TRAIN[7:]]
    assert "Started training exact" in app.client.predict("exact", False, *values, api_name="/train_start")
    poll(app.client, "/train_refresh", lambda o: "finished" in str(o[1]))
    config = json.loads((app.root / "models" / "exact" / "config.json").read_text())
    assert config["train"]["lr"] == params["lr"] and config["source"]["study"] == "exact"


def test_concurrent_overwrite_starts_give_one_run_and_already_running_for_the_rest(app):
    from concurrent.futures import ThreadPoolExecutor

    assert "Started training dup" in app.client.predict("dup", False, *TINY_TRAIN, api_name="/train_start")
    poll(app.client, "/train_refresh", lambda o: "finished" in str(o[1]))
    port = app.client.src.rstrip("/").rsplit(":", 1)[1]
    clients = [Client(f"http://127.0.0.1:{port}/", verbose=False) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda c: c.predict("dup", True, *TINY_TRAIN, api_name="/train_start"), clients))
    started = [a for a in answers if "Started training dup" in a]
    assert len(started) == 1, answers
    assert all("already running" in a for a in answers if a not in started), answers
    poll(app.client, "/train_refresh", lambda o: "finished" in str(o[1]))
    assert (app.root / "models" / "dup" / "model.safetensors").is_file()

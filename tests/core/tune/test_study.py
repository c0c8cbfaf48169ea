from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import optuna
import pytest

from core.config import ConfigError, ModelConfig, TrainConfig, parse_duration, parse_flops
from core.model import flops_per_token
from core.tune.config import StudyConfig, TuningError
from core.tune.results import best_params, best_params_path, last_step, list_studies
from core.tune.space import Choice, FloatRange, IntRange, SearchSpace, apply_params
from core.tune.storage import make_storage, open_study
from core.tune.study import run_study, trial_configs
from tests.helpers import APP, APP_ENV, run_app

TINY_SPACE = SearchSpace(
    lr=FloatRange(1e-5, 1e-2, log=True),
    n_layer=IntRange(1, 2),
    n_head=Choice((2,)),
    head_size=Choice((8, 16)),
    dropout=0.0,
    batch_size=Choice((4, 8)),
    block_size=Choice((16, 32)),
    weight_decay=FloatRange(0.0, 0.1),
    warmup_fraction=0.05,
)


def tune_config(tmp_path: Path, dataset_dir: Path, **overrides) -> StudyConfig:
    values = dict(
        study="t",
        storage=f"sqlite:///{tmp_path}/studies.db",
        trials=6,
        trial_iters=30,
        eval_interval=10,
        eval_iters=2,
        data_dir=str(dataset_dir),
        device="cpu",
        heartbeat=1,
    )
    return StudyConfig(**(values | overrides))


def test_trials_complete_and_prune_and_the_study_resumes(tmp_path, dataset_dir):
    events = []
    config = tune_config(tmp_path, dataset_dir, trials=6)
    study = run_study(config, TINY_SPACE, on_event=events.append)
    states = [t.state for t in study.trials]
    assert len(states) == 6
    assert states.count(optuna.trial.TrialState.COMPLETE) >= 3
    assert states.count(optuna.trial.TrialState.PRUNED) >= 1
    assert {e.state for e in events} >= {"RUNNING", "COMPLETE", "PRUNED"}
    best = best_params(study)
    assert best["params"]["n_embd"] == best["params"]["n_head"] * best["params"]["head_size"]
    assert best["val_loss"] == min(t.value for t in study.trials if t.value is not None)
    assert json.loads((tmp_path / "t.best.json").read_text())["trial"] == best["trial"]  # beside the database
    again = run_study(tune_config(tmp_path, dataset_dir, trials=2), TINY_SPACE)
    assert len(again.trials) == 8  # re-running continues the same study
    summary = list_studies(config.storage)[0]
    assert summary.name == "t" and summary.complete + summary.pruned == 8


def test_a_continued_study_samples_new_trials(tmp_path, dataset_dir):
    config = tune_config(tmp_path, dataset_dir, trials=2, trial_iters=10, eval_interval=10, pruner="none")
    run_study(config, TINY_SPACE)
    study = run_study(config, TINY_SPACE)
    params = [json.dumps(t.params, sort_keys=True) for t in study.trials]
    assert len(params) == 4 and len(set(params)) == 4  # not the first call's startup trials again


@pytest.mark.parametrize("pruner", ["median", "asha", "hyperband"])
def test_every_pruner_prunes_a_study(tmp_path, dataset_dir, pruner):
    study = run_study(tune_config(tmp_path, dataset_dir, trials=6, pruner=pruner), TINY_SPACE)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) >= 1
    assert states.count(optuna.trial.TrialState.COMPLETE) >= 1


def test_stop_event_ends_the_study_and_keeps_finished_trials(tmp_path, dataset_dir):
    stop = threading.Event()
    finished = []

    def on_event(event):
        if event.state != "RUNNING":
            finished.append(event)
            stop.set()

    study = run_study(tune_config(tmp_path, dataset_dir, trials=20), TINY_SPACE, stop=stop, on_event=on_event)
    assert len(study.trials) == 1 and len(finished) == 1


def test_search_space_json_round_trip_and_fixed_values(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps({"lr": [1e-4, 1e-3], "n_layer": [2, 3], "n_head": {"choices": [2, 4]}, "dropout": 0.1}))
    space = SearchSpace.load(path)
    assert space.lr == FloatRange(1e-4, 1e-3, log=True)
    assert space.n_layer == IntRange(2, 3) and space.n_head == Choice((2, 4)) and space.dropout == 0.1
    assert SearchSpace.from_json(space.to_json()) == space
    trial = optuna.create_study().ask()
    params = space.suggest(trial)
    assert params["dropout"] == 0.1 and "dropout" not in trial.params


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"lr": [1e-2, 1e-4]}, "greater than high"),
        ({"n_head": {"choices": []}}, "empty"),
        ({"batch_size": [0, 4]}, "must be > 0"),
        ({"dropout": [0.0, 1.5]}, "must be < 1"),
        ({"width": [1, 2]}, "unknown search space field"),
        ({"lr": "fast"}, "cannot read"),
    ],
)
def test_bad_search_spaces_are_rejected(data, message):
    with pytest.raises(TuningError, match=message):
        SearchSpace.from_json(data)


def test_bad_tuning_inputs(tmp_path, dataset_dir):
    with pytest.raises(TuningError, match="trials must be > 0"):
        tune_config(tmp_path, dataset_dir, trials=0).validate()
    with pytest.raises(TuningError, match="unknown storage"):
        make_storage("redis-ish://nowhere")
    with pytest.raises(TuningError, match="cannot open storage|cannot create study"):
        run_study(tune_config(tmp_path, dataset_dir, storage="postgresql://u:secret@127.0.0.1:1/db"), TINY_SPACE)
    with pytest.raises(TuningError, match="evals_per_trial must be > 0"):
        tune_config(tmp_path, dataset_dir, trial_seconds=10, evals_per_trial=0).validate()
    with pytest.raises(TuningError, match="seconds or in FLOPs, not both"):
        tune_config(tmp_path, dataset_dir, trial_seconds=10, trial_flops=1e9).validate()
    with pytest.raises(TuningError, match="trial_flops must be >= 0"):
        tune_config(tmp_path, dataset_dir, trial_flops=-1.0).validate()
    with pytest.raises(TuningError, match="unknown pruner"):
        tune_config(tmp_path, dataset_dir, pruner="sometimes").validate()
    with pytest.raises(TuningError, match=r"percentile must be in \(0, 100\), got 0"):
        tune_config(tmp_path, dataset_dir, pruner_percentile=0).validate()
    with pytest.raises(TuningError, match="startup trials must be >= 0"):
        tune_config(tmp_path, dataset_dir, pruner_startup_trials=-1).validate()
    with pytest.raises(TuningError, match="no study named 'nope'"):
        open_study("nope", f"sqlite:///{tmp_path}/studies.db")


@pytest.mark.parametrize(("percentile", "startup", "pruned"), [(100 / 3, 2, [True, False]), (25, 3, [False, True])])
def test_pruner_settings_decide_which_trials_stop(percentile, startup, pruned):
    """No trial is pruned until `startup` trials have finished; after trials scored 1, 2 and 3 at step 1, one
    scoring 1.6 is in their best third but not in their best quarter."""
    config = StudyConfig(trial_iters=10, eval_interval=1, pruner_percentile=percentile, pruner_startup_trials=startup)
    study = optuna.create_study(pruner=config.make_pruner())
    decisions = []
    for value in (1.0, 2.0, 3.0, 1.6):
        trial = study.ask()
        trial.report(value, 1)
        if len(study.trials) > 2:
            decisions.append(trial.should_prune())
        study.tell(trial, value)
    assert decisions == pruned


def test_best_params_go_beside_a_sqlite_database_else_to_studies():
    assert best_params_path("s1") == Path("studies/s1.best.json")
    assert best_params_path("s1", "sqlite:////data/tune/x.db") == Path("/data/tune/s1.best.json")
    assert best_params_path("s1", "postgresql://u:p@host/db") == Path("studies/s1.best.json")


def test_params_become_configs_for_the_final_budget():
    params = {"lr": 2e-3, "n_head": 4, "n_embd": 64, "warmup_fraction": 0.1, "min_lr_ratio": 0.1, "batch_size": 8}
    model, train = apply_params(params, ModelConfig(), TrainConfig(max_iters=1000), keep={"batch_size"})
    assert model.n_embd == 64 and model.n_head == 4
    assert train.warmup_fraction == 0.1 and train.min_lr == pytest.approx(2e-4) and train.batch_size == 12
    _, train = apply_params(params, ModelConfig(), TrainConfig(warmup_iters=7), keep={"warmup_iters"})
    assert train.warmup_iters == 7 and train.warmup_fraction == 0  # the user's warmup wins


def test_trials_with_a_time_budget_report_at_equal_fractions_of_it(tmp_path, dataset_dir):
    config = tune_config(tmp_path, dataset_dir, trials=3, trial_seconds=1.5, evals_per_trial=3, pruner="none")
    study = run_study(config, TINY_SPACE)
    for trial in study.trials:
        assert trial.state.name == "COMPLETE"
        assert sorted(trial.intermediate_values) == [1, 2, 3]  # pruners compare trials at equal seconds
        assert trial.user_attrs["steps"] > config.trial_iters  # the step budget does not apply
    pruned = optuna.trial.create_trial(
        state=optuna.trial.TrialState.PRUNED, intermediate_values={1: 2.5, 2: 2.4}, user_attrs={"steps": 57}
    )
    assert last_step(pruned) == 57  # what the CLI and the workbench show: a training step, not an eval number
    seconds = sorted(trial.user_attrs["seconds"] for trial in study.trials)
    assert seconds[0] >= 1.5 and seconds[1] < 2.2  # the first trial in a process also pays torch's warm-up


def test_a_flops_budget_buys_fewer_steps_for_a_bigger_model():
    config = StudyConfig(trial_flops=2e10, evals_per_trial=4)
    small = {"n_layer": 1, "n_head": 2, "n_embd": 32, "batch_size": 8, "block_size": 32}
    budgets = {}
    for name, params in {"small": small, "big": small | {"n_layer": 4, "n_embd": 128}}.items():
        model, train = trial_configs(params, config, trial_number=0, vocab_size=80)
        step_flops = flops_per_token(model) * train.batch_size * model.block_size
        assert train.max_iters == 4 * train.eval_interval  # evaluations at equal fractions of the budget
        assert 0 <= train.max_iters * step_flops - config.trial_flops < 4 * step_flops  # the budget, rounded up
        budgets[name] = train.max_iters
    assert budgets["big"] * 10 < budgets["small"]


def test_trials_with_a_flops_budget_report_at_equal_fractions_and_repeat_exactly(tmp_path, dataset_dir):
    def values(study: str) -> list[dict]:
        config = tune_config(
            tmp_path, dataset_dir, study=study, trials=3, trial_flops=3e8, evals_per_trial=3, pruner="none"
        )
        return [t.intermediate_values for t in run_study(config, TINY_SPACE).trials]

    first = values("a")
    assert all(sorted(curve) == [1, 2, 3] for curve in first)  # pruners compare trials at equal FLOPs
    assert values("b") == first  # unlike a time budget, a FLOPs budget does not follow the machine's speed


TINY_TUNE = ["--trial-iters", "20", "--eval-interval", "10", "--eval-iters", "2", "--device", "cpu", "--heartbeat", "1"]


@pytest.fixture
def space_file(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps(TINY_SPACE.to_json()))
    return path


def test_tune_then_train_from_the_study(tmp_path, dataset_dir, space_file):
    data = ["--data-dir", str(dataset_dir)]
    result = run_app(
        "tune", "--study", "s1", "--trials", "3", "--space", str(space_file), *TINY_TUNE, *data, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    best = json.loads((tmp_path / "studies" / "s1.best.json").read_text())
    listing = run_app("studies", cwd=tmp_path)
    assert "s1" in listing.stdout and "complete" in listing.stdout
    trained = run_app(
        "train",
        "--from-study",
        "s1",
        "--name",
        "final",
        "--max-iters",
        "15",
        "--eval-interval",
        "5",
        *data,
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr
    folder = tmp_path / "models" / "final"
    config = json.loads((folder / "config.json").read_text())
    assert config["source"] == {"study": "s1", "trial": best["trial"], "val_loss": best["val_loss"]}
    assert config["model"]["n_embd"] == best["params"]["n_embd"]
    assert config["train"]["max_iters"] == 15  # the final budget, not the trials'
    assert json.loads((folder / "best_params.json").read_text())["params"] == best["params"]


def test_two_workers_share_one_study(tmp_path, dataset_dir, space_file):
    result = run_app(
        "tune",
        "--study",
        "w",
        "--trials",
        "4",
        "--workers",
        "2",
        "--space",
        str(space_file),
        "--data-dir",
        str(dataset_dir),
        *TINY_TUNE,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    study = open_study("w", "sqlite:///studies/gpt_tuning.db".replace("studies/", f"{tmp_path}/studies/"))
    assert len(study.trials) == 4
    assert all(t.state != optuna.trial.TrialState.FAIL for t in study.trials)
    assert len({t.number for t in study.trials}) == 4


def test_killed_worker_trial_is_failed_and_retried(tmp_path, dataset_dir, space_file):
    storage = f"sqlite:///{tmp_path}/kill.db"
    slow = [
        "--trial-iters",
        "100000",
        "--eval-interval",
        "50",
        "--eval-iters",
        "1",
        "--device",
        "cpu",
        "--heartbeat",
        "1",
    ]
    one_trial = ["tune", "--study", "k", "--storage", storage, "--trials", "1", "--space", str(space_file)]
    one_trial += ["--data-dir", str(dataset_dir)]
    worker = subprocess.Popen(
        [*APP, *one_trial, *slow],
        cwd=tmp_path,
        env=APP_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.5)
        try:
            trials = open_study("k", storage).trials
        except TuningError:
            continue
        # mid-trial: its parameters drawn and its heartbeat thread beating (a trial killed before its first
        # beat is failed only minutes later: the next test)
        if trials and trials[0].state == optuna.trial.TrialState.RUNNING and trials[0].params:
            time.sleep(1.5)
            break
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    time.sleep(4)  # > grace period (3 heartbeats of 1 s)
    result = run_app(*one_trial, *TINY_TUNE, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trials = open_study("k", storage).trials
    assert trials[0].state == optuna.trial.TrialState.FAIL
    retried = [t for t in trials[1:] if t.system_attrs.get("failed_trial") == 0 or t.params == trials[0].params]
    assert retried and retried[0].state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]


def test_trial_whose_worker_died_before_its_first_heartbeat_is_failed_and_retried(tmp_path, monkeypatch):
    from datetime import timedelta

    from core.tune.storage import HeartbeatRDBStorage

    storage = make_storage(f"sqlite:///{tmp_path}/unbeaten.db", heartbeat=1)
    assert isinstance(storage, HeartbeatRDBStorage)
    study = optuna.create_study(study_name="u", storage=storage)
    dead = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})  # created; its worker never beat
    live = study.ask()
    storage.record_heartbeat(live._trial_id)

    optuna.storages.fail_stale_trials(study)  # younger than the margin: could still be starting
    assert study.trials[dead.number].state == optuna.trial.TrialState.RUNNING

    monkeypatch.setattr(HeartbeatRDBStorage, "unbeaten_after", timedelta(0))
    optuna.storages.fail_stale_trials(study)
    trials = study.trials
    assert trials[dead.number].state == optuna.trial.TrialState.FAIL
    assert trials[live.number].state == optuna.trial.TrialState.RUNNING  # it beats: not judged by its start
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert retry and retry[0].state == optuna.trial.TrialState.WAITING and retry[0].params == dead.params


def _pop_all_waiting(url: str, start: float, claimed) -> None:
    study = optuna.load_study(study_name="q", storage=make_storage(url, heartbeat=0))
    while time.time() < start:  # both workers ask from the same instant
        pass
    numbers = []
    while study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        trial = study.ask()
        numbers.append(trial.number)
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # the other worker told first
            study.tell(trial, 0.0)
    claimed.put(numbers)


def test_two_workers_never_both_run_one_enqueued_trial(tmp_path):
    # SQLite ignores the SELECT ... FOR UPDATE that Optuna's claim relies on: with its RDBStorage, 2-12 of 200
    # enqueued trials went to both of two processes asking in a loop (3 runs of 3)
    import multiprocessing

    url = f"sqlite:///{tmp_path}/queue.db"
    study = optuna.create_study(study_name="q", storage=make_storage(url, heartbeat=0))
    for i in range(150):
        study.enqueue_trial({}, user_attrs={"job": i})
    context = multiprocessing.get_context("fork")
    claimed = context.Queue()
    start = time.time() + 1.0
    workers = [context.Process(target=_pop_all_waiting, args=(url, start, claimed)) for _ in range(2)]
    for worker in workers:
        worker.start()
    first, second = claimed.get(timeout=120), claimed.get(timeout=120)
    for worker in workers:
        worker.join()
    assert set(first) & set(second) == set()
    jobs = [t.user_attrs.get("job") for t in study.trials if "job" in t.user_attrs]
    assert sorted(jobs) == list(range(150)) and len(first) + len(second) >= 150


def test_durations_read_like_a_person_writes_them():
    assert parse_duration("20m") == 1200 and parse_duration("90") == 90 and parse_duration("1.5h") == 5400
    with pytest.raises(ConfigError, match="20x"):
        parse_duration("20x")


def test_flops_read_with_or_without_a_unit():
    assert parse_flops("5e11") == 5e11 and parse_flops("500G") == 5e11 and parse_flops("0.5t") == 5e11
    assert parse_flops("2P") == 2e15
    for bad in ("lots", "-1T", "nan"):
        with pytest.raises(ConfigError, match="FLOPs"):
            parse_flops(bad)

"""`tune --budget`: a tournament of candidates continued from their checkpoints, within one wall-time budget."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import threading
import time

import optuna
import pytest
import torch
from optuna.trial import TrialState

from core import checkpoint as ckpt
from core.data import Dataset
from core.trainer import TrainHooks, train
from core.tune.candidates import candidate_configs, default_params, first_candidates
from core.tune.config import TournamentConfig, TuningError
from core.tune.plan import END_MARGIN_S, SLICE_OVERHEAD_S, Plan, budget_minimums, plan_tournament
from core.tune.record import STOPPED_REASON, _claim_waiting, _requeue_stopped, _rung_trials, prepare_tournament
from core.tune.rungs import Running, _continue, _machine_threads, _run_rung, final_shape, run_tournament
from core.tune.space import Choice, SearchSpace
from core.tune.storage import make_storage, open_study
from core.tune.study import MACHINE_THREADS_ENV, worker_env
from tests.helpers import APP, APP_ENV, TINY_MODEL_FLAGS, run_app

BUDGET_S = 30


def budget_command(
    tmp_path, dataset_dir, *extra: str, budget: str = f"{BUDGET_S}s", search_rungs: int = 1
) -> list[str]:
    """A tiny tournament; `search_rungs` 1 since such budgets hold one rung."""
    return [
        "tune", f"--budget={budget}", "--study", "race", "--storage", f"sqlite:///{tmp_path}/race.db",
        "--data-dir", str(dataset_dir), "--name", "winner", "--runs-dir", str(tmp_path / "runs"),
        "--heartbeat", "1", "--final-share", "0.5", "--search-rungs", str(search_rungs), *TINY_MODEL_FLAGS, *extra,
    ]  # fmt: skip


def rung_trials(tmp_path) -> list[optuna.trial.FrozenTrial]:
    return [t for t in open_study("race", f"sqlite:///{tmp_path}/race.db").trials if "rung" in t.user_attrs]


def wait_for_running(tmp_path, first_candidate: int = 0, timeout_s: float = 120) -> optuna.trial.FrozenTrial:
    """The first RUNNING rung of a candidate >= `first_candidate` of the tournament a worker is running."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        time.sleep(0.3)
        try:
            running = [t for t in rung_trials(tmp_path) if t.state == optuna.trial.TrialState.RUNNING]
        except Exception:  # noqa: BLE001 - the database is being created
            continue
        if running and running[0].user_attrs.get("candidate", 0) >= first_candidate:
            return running[0]
    raise AssertionError(f"no rung of a candidate >= {first_candidate} ran within {timeout_s:.0f}s")


def test_the_plan_spends_the_budget_on_rungs_that_shrink_by_eta():
    plan = plan_tournament(1800, step_s=0.1)
    counts = [r.candidates for r in plan.rungs]
    assert counts == sorted(counts, reverse=True) and counts[-1] == 1 and counts[0] >= 3
    explored = sum(r.candidates * r.seconds for r in plan.rungs[:-1])
    assert explored <= 0.3 * 1800  # the final rung keeps at least final_share (0.7) of the budget
    assert plan.rungs[0].seconds >= 150 * 0.1  # every first slice trains at least 150 steps
    two = plan_tournament(1800, step_s=0.1, workers=2)
    assert sum(r.candidates * r.seconds for r in two.rungs[:-1]) > explored  # two workers explore more
    # ... in rounds of two slices at once: an odd rung's last round leaves a worker idle, within the same share
    rounds = sum(math.ceil(r.candidates / 2) * (r.seconds + SLICE_OVERHEAD_S) for r in two.rungs[:-1])
    assert rounds == pytest.approx(0.3 * (1800 - END_MARGIN_S))
    # what a slice spends besides training (scoring above all, measured) comes out of its training time
    costly = plan_tournament(1800, step_s=0.1, slice_overhead_s=4.0)
    assert [r.candidates for r in costly.rungs] == counts
    assert [a.seconds - b.seconds for a, b in zip(plan.rungs[:-1], costly.rungs[:-1])] == pytest.approx(
        [3.0] * (len(counts) - 1)
    )


def test_the_first_rung_is_the_default_then_its_neighbours_in_the_space_then_a_seeded_draw():
    space = SearchSpace.for_budget("cpu")
    candidates = first_candidates(space, 9, seed=0)
    params = [p for p, _ in candidates]
    assert len(params) == 9 and params[0] == default_params()
    shapes = [(p["n_layer"], p["block_size"], p["muon_lr"]) for p in params]
    assert shapes[1:5] == [(3, 128, 0.01), (3, 128, 0.005), (3, 128, 0.02), (4, 128, 0.02)]  # the measured best first
    assert len({json.dumps(p, sort_keys=True) for p in params}) == 9
    for p, values in candidates[1:]:  # the values recorded for the dashboard give back the candidate
        drawn = space.suggest(optuna.trial.FixedTrial(values))
        assert {k: drawn[k] for k in p.keys() & drawn.keys()} == {k: p[k] for k in p.keys() & drawn.keys()}
    assert first_candidates(space, 9, seed=0) == candidates
    other = first_candidates(space, 9, seed=1)
    assert other[:7] == candidates[:7] and other[7:] != candidates[7:]  # only the drawn ones follow the seed
    # a space that fixes the context (a user's space file) gets no neighbour outside it
    narrow = first_candidates(dataclasses.replace(space, block_size=64), 9, seed=0)
    assert {p["block_size"] for p, _ in narrow} == {64} and len(narrow) == 9
    # the user's flags win: neighbours they turn back into the default are not repeated
    flagged = first_candidates(space, 4, seed=0, overrides={"block_size": 64, "n_layer": 4})
    assert [p["block_size"] for p, _ in flagged] == [64] * 4
    assert len({json.dumps(p, sort_keys=True) for p, _ in flagged}) == 4


def test_candidates_warm_up_over_the_default_s_tokens_unless_the_user_sets_warmup():
    def warmup(change, overrides=None):
        config = TournamentConfig(overrides=overrides or {})
        return candidate_configs(default_params(overrides) | change, config, 1, 65)[1].warmup_iters

    assert warmup({}) == 100
    assert warmup({"block_size": 256}) == 25 and warmup({"block_size": 128, "batch_size": 24}) == 25
    assert warmup({"block_size": 256}, {"warmup_iters": 40}) == 40


def test_a_budget_with_room_for_one_rung_only_trains_the_default_unless_told_to_search():
    short = plan_tournament(600, step_s=0.08)  # 10 minutes at the default model's speed on 2 cores
    assert not short.searches and [(r.candidates, r.seconds) for r in short.rungs] == [(1, 0.0)]
    needed = budget_minimums(0.08).search_s
    assert f"needs at least {needed:.0f}s" in short.note  # the number is said, not only used
    assert plan_tournament(needed, step_s=0.08).searches  # the budget it names is enough for two rungs
    assert (
        len(plan_tournament(needed, step_s=0.08).rungs) == 3 and not plan_tournament(needed - 5, step_s=0.08).searches
    )
    forced = plan_tournament(600, step_s=0.08, search_rungs=1)
    assert forced.searches and [r.candidates for r in forced.rungs] == [3, 1]


def test_the_final_rung_doubles_the_context_where_the_model_can_read_it_else_the_batch(dataset_dir):
    dataset, space, plan = Dataset(dataset_dir), SearchSpace.for_budget("cpu"), plan_tournament(1800, step_s=0.1)
    model, run = candidate_configs(default_params() | {"block_size": 64}, TournamentConfig(), 1, len(dataset.vocab))
    batch = run.batch_size

    def shape(plan=plan, model=model, space=space, rung=2, fixed=frozenset()):
        model_config, train_config = final_shape(plan, space, model, run, dataset, rung, fixed)
        return model_config.block_size, train_config.batch_size

    assert shape() == (128, batch)  # rotary positions: a longer context, the same batch
    assert shape(model=dataclasses.replace(model, pos_encoding="learned")) == (64, 2 * batch)  # no table for 65+
    assert shape(space=dataclasses.replace(space, block_size=Choice((64,)))) == (64, 2 * batch)  # beyond the space
    assert shape(fixed={"block_size"}) == (64, 2 * batch)  # the user's --block-size stands
    huge = dataclasses.replace(space, block_size=Choice((64, 2 * len(dataset.tokens["val"]))))
    assert shape(model=dataclasses.replace(model, block_size=len(dataset.tokens["val"])),
                 space=huge)[1] == 2 * batch  # the data cannot hold it  # fmt: skip
    assert shape(rung=0) == (64, batch)  # no search: the default as it is
    # a plan recorded by earlier code goes on as it began
    recorded = {k: v for k, v in plan.to_json().items() if k not in ("final_token_scale", "final_longer_context")}
    assert shape(plan=Plan.from_json(recorded | {"final_batch_scale": 2})) == (64, 2 * batch)
    assert shape(plan=Plan.from_json(recorded)) == (64, batch)


def test_a_rotary_survivor_continues_at_twice_its_context_from_where_it_was(tmp_path, tiny_model_config,
                                                                          tiny_train_config):  # fmt: skip
    short = dataclasses.replace(tiny_model_config, pos_encoding="rope", block_size=16)
    before: list[float] = []
    train(short, tiny_train_config, out_dir=tmp_path / "m", hooks=TrainHooks(on_step=lambda e: before.append(e.loss)))
    after: list[float] = []
    longer = dataclasses.replace(short, block_size=32)
    result = train(longer, dataclasses.replace(tiny_train_config, max_iters=64), out_dir=tmp_path / "m", resume=True,
                   hooks=TrainHooks(on_step=lambda e: after.append(e.loss)))  # fmt: skip
    assert result.iters == 64 and len(after) == 4
    vocab = len(Dataset(tiny_train_config.data_dir).vocab)
    assert max(after) < sum(before[-5:]) / 5 + 0.2 < math.log(vocab) - 0.5  # continued, not a fresh start
    assert ckpt.load_model(tmp_path / "m").model.config.block_size == 32


def test_a_default_only_plan_trains_and_saves_the_default(tmp_path, dataset_dir):
    result = run_app(*budget_command(tmp_path, dataset_dir, budget="20s", search_rungs=2), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no search" in result.stderr and "--search-rungs 1 searches even a short budget" in result.stderr
    trials = rung_trials(tmp_path)
    assert len(trials) == 1 and trials[0].state.name == "COMPLETE" and trials[0].user_attrs["candidate"] == 0
    record = json.loads((tmp_path / "models" / "winner" / "rungs.json").read_text())
    assert [r["rung"] for r in record["rungs"]] == [0]
    metrics = (tmp_path / "models" / "winner" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(metrics[-1])["val_loss"] < json.loads(metrics[0])["val_loss"]


@pytest.mark.parametrize("budget", [0, -5, math.inf, 20])
def test_a_budget_that_cannot_train_the_default_is_refused(budget):
    with pytest.raises(TuningError, match="budget"):
        plan_tournament(budget, step_s=0.1)


def test_a_budget_under_one_rung_trains_the_default_and_under_one_run_names_its_minimum():
    least = budget_minimums(0.1)  # 150 steps of 0.1 s, the slice's overhead and the end margin
    assert least.run_s == 21 and least.search_s > 600
    plan = plan_tournament(least.run_s, step_s=0.1)  # far from a rung of 3 candidates: the default, as promised
    assert not plan.searches and "no search" in plan.note and f"{least.search_s:.0f}s" in plan.note
    with pytest.raises(TuningError, match=f"give at least {least.run_s:.0f}s"):
        plan_tournament(least.run_s - 1, step_s=0.1)


def test_the_cli_refuses_a_zero_negative_or_too_small_budget(tmp_path, dataset_dir):
    for budget, message in (("0", "the budget must be a positive duration"), ("-5m", "must be >= 0"),
                            ("8s", "too short to train even the default model")):  # fmt: skip
        result = run_app(*budget_command(tmp_path, dataset_dir, budget=budget), cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr


def test_the_survivor_is_continued_saved_and_the_budget_kept(tmp_path, dataset_dir):
    started = time.perf_counter()
    result = run_app(*budget_command(tmp_path, dataset_dir), cwd=tmp_path)
    wall = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    # the tournament's own clock (rungs.json) within 5% of the budget; the process adds its imports
    folder = tmp_path / "models" / "winner"
    record = json.loads((folder / "rungs.json").read_text())
    finished = (folder / "model.safetensors").stat().st_mtime
    assert finished - record["plan"]["started"] <= BUDGET_S * 1.05
    assert wall <= BUDGET_S * 1.05 + 15
    for name in ("config.json", "best_params.json", "model.safetensors", "rungs.json"):
        assert (folder / name).is_file()
    rungs = record["rungs"]
    assert [r["rung"] for r in rungs] == list(range(len(rungs))) and len(rungs) >= 2
    # promotion continues the candidate: its first evaluation in the final rung is near its last before it,
    # far below a fresh model's loss (about ln(vocab))
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    before, after = metrics[0], metrics[1]
    vocab = len((folder / "vocab.txt").read_text(encoding="utf-8").splitlines())
    assert after["step"] > before["step"]
    assert after["val_loss"] < before["val_loss"] + 0.15
    assert after["val_loss"] < math.log(vocab) - 0.5
    trials = rung_trials(tmp_path)
    assert trials[0].user_attrs["params"]["n_layer"] == 1  # the default candidate, with the user's flags
    final = [t for t in trials if t.user_attrs["rung"] == len(rungs) - 1]
    assert final[0].user_attrs["parent"] is not None
    best = json.loads((folder / "best_params.json").read_text())
    assert best["trial"] == final[0].number
    # the final rung trains at twice the survivor's batch (its context is the user's), and says so
    saved_batch = json.loads((folder / "config.json").read_text())["train"]["batch_size"]
    assert saved_batch == best["final_batch_size"] == 2 * final[0].user_attrs["params"]["batch_size"]
    assert not (tmp_path / "runs" / "race").exists()  # candidates' checkpoints are cleared at the end
    # every rung's score is among its trial's intermediate values (optuna-dashboard's chart), the final rung's
    # evaluations too
    assert all(t.intermediate_values for t in trials if t.state == TrialState.COMPLETE)
    assert len(final[0].intermediate_values) >= 2
    again = run_app("train", "--from-study", "race", "--storage", f"sqlite:///{tmp_path}/race.db", "--name", "again",
                    "--data-dir", str(dataset_dir), "--max-iters", "5", "--eval-iters", "1", cwd=tmp_path)  # fmt: skip
    assert again.returncode == 0, again.stderr


def test_a_killed_worker_is_recovered_from_its_checkpoint_and_the_study_finishes(tmp_path, dataset_dir):
    command = budget_command(tmp_path, dataset_dir, budget="40s")
    worker = subprocess.Popen([*APP, *command], cwd=tmp_path, env=APP_ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    wait_for_running(tmp_path, first_candidate=1)  # after a first candidate
    time.sleep(0.5)  # mid-rung
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    result = run_app(*command, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "continuing" in result.stderr
    trials = rung_trials(tmp_path)
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed, "the killed rung is failed by its heartbeat"
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == failed[0].number]
    assert retried and retried[0].state == optuna.trial.TrialState.COMPLETE
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    assert (tmp_path / "models" / "winner" / "model.safetensors").is_file()


def test_a_worker_whose_trial_was_failed_as_stale_stops_it_and_its_retry_finishes_the_study(tmp_path, dataset_dir):
    # what another worker's fail_stale_trials does to a trial whose heartbeats came late: FAIL, then a retry
    worker = subprocess.Popen([*APP, *budget_command(tmp_path, dataset_dir)], cwd=tmp_path, env=APP_ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    storage = f"sqlite:///{tmp_path}/race.db"
    running = wait_for_running(tmp_path)
    time.sleep(1.0)  # mid-slice
    study = optuna.load_study(study_name="race", storage=make_storage(storage, heartbeat=0))
    lost = study._storage.get_trial(running._trial_id)
    study._storage.set_trial_state_values(lost._trial_id, optuna.trial.TrialState.FAIL)
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)(study, study._storage.get_trial(lost._trial_id))
    _, stderr = worker.communicate(timeout=120)
    assert worker.returncode == 0, stderr
    assert f"lost: trial {lost.number} was failed as stale" in stderr
    trials = open_study("race", storage).trials
    assert "seconds" not in trials[lost.number].user_attrs  # it reported nothing after losing the trial
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == lost.number]
    assert retried and retried[0].state == optuna.trial.TrialState.COMPLETE
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    assert (tmp_path / "models" / "winner" / "model.safetensors").is_file()


def test_two_workers_share_a_budgeted_study(tmp_path, dataset_dir):
    result = run_app(*budget_command(tmp_path, dataset_dir, "--workers", "2"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trials = rung_trials(tmp_path)
    assert {t.user_attrs.get("worker") for t in trials} == {0, 1}
    # both workers may promote a finished rung at once; the second promotion of a candidate is pruned unrun
    duplicates = [t for t in trials if t.user_attrs.get("reason", "").startswith("duplicate of")]
    assert all(t.state == optuna.trial.TrialState.PRUNED and "seconds" not in t.user_attrs for t in duplicates)
    # each rung of a candidate ran once: no worker popped a trial the other was running, none was retried
    runs = [(t.user_attrs["rung"], t.user_attrs["candidate"]) for t in trials if t not in duplicates]
    assert len(runs) == len(set(runs)) and not [t for t in trials if "failed_trial" in t.system_attrs]
    everything = open_study("race", f"sqlite:///{tmp_path}/race.db").trials
    assert not [t for t in everything if t.state == optuna.trial.TrialState.FAIL]  # no trial made and thrown away
    per_rung: dict[int, set] = {}
    for t in trials:
        if t.state == optuna.trial.TrialState.COMPLETE:
            per_rung.setdefault(t.user_attrs["rung"], set()).add(t.user_attrs["candidate"])
    assert len(per_rung[max(per_rung)]) == 1  # one survivor, trained once
    assert (tmp_path / "models" / "winner" / "model.safetensors").is_file()
    if (os.cpu_count() or 1) > 1:  # each worker had half of the cores; the final rung, run alone, takes them all
        assert f"final rung on {os.cpu_count()} threads" in result.stderr


def test_a_second_promotion_of_a_candidate_is_pruned_unrun_and_the_first_counts():
    study = optuna.create_study()
    for _ in range(2):  # two workers promoted the same finished rung at once
        study.enqueue_trial({}, user_attrs={"rung": 1, "candidate": 3, "params": {}})
    first, second = _claim_waiting(study), _claim_waiting(study)
    idle = threading.Event()
    running = Running(study, None, None, None, None, None, None, idle, lambda event: None, worker=1)
    _run_rung(running, second)
    pruned = study.trials[second.number]
    assert pruned.state == optuna.trial.TrialState.PRUNED and pruned.user_attrs["worker"] == 1
    assert pruned.user_attrs["reason"] == f"duplicate of trial {first.number}"
    assert [t.number for t in _rung_trials(study, 1)] == [first.number]


def test_the_final_rung_takes_the_machine_s_threads_only_from_a_share_of_them(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv(MACHINE_THREADS_ENV, str(before + 1))
    with _machine_threads():
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
    monkeypatch.delenv(MACHINE_THREADS_ENV)  # not a worker of `--workers N`: what the user set stays
    with _machine_threads():
        assert torch.get_num_threads() == before
    if not torch.cuda.is_available():
        assert worker_env(0, 2)[MACHINE_THREADS_ENV] == str(os.cpu_count() or 1)


def test_fields_the_user_fixed_are_not_drawn_or_recorded_by_the_candidates(tmp_path, dataset_dir):
    """What optuna-dashboard shows of a candidate is what it trains: the user's fixed fields are no search."""
    space = SearchSpace.for_budget("cpu")
    fixed = {"n_layer": 1, "n_embd": 16, "block_size": 32}
    narrowed = space.fixing(fixed)
    assert (narrowed.n_layer, narrowed.head_size, narrowed.block_size) == (1, 4, 32)
    assert narrowed.lr == space.lr and space.n_layer != 1  # the rest is searched as before; the space is unchanged
    drawn = narrowed.suggest(optuna.trial.FixedTrial({"lr": 1e-3, "batch_size": 12, "muon_lr": 0.01}))
    assert (drawn["n_layer"], drawn["n_embd"], drawn["block_size"]) == (1, 16, 32)
    config = TournamentConfig(
        study="fixed", storage=f"sqlite:///{tmp_path}/s.db", data_dir=str(dataset_dir), budget=60.0, overrides=fixed
    )
    study, plan = prepare_tournament(config, space)
    waiting = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.WAITING]
    assert len(waiting) == plan.rungs[0].candidates
    for trial in waiting:  # what each will record as its params when a worker takes it
        assert not {"n_layer", "head_size", "block_size"} & trial.system_attrs["fixed_params"].keys()
        assert {k: trial.user_attrs["params"][k] for k in fixed} == fixed


def test_a_rung_reports_its_steps_and_a_stopped_rung_waits_for_the_next_run(tmp_path, dataset_dir):
    tiny = {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "batch_size": 4}
    config = TournamentConfig(study="live", storage=f"sqlite:///{tmp_path}/live.db", budget=60, data_dir=str(dataset_dir),
                        runs_dir=str(tmp_path / "runs"), search_rungs=1, final_share=0.5, overrides=tiny)  # fmt: skip
    stop, events = threading.Event(), []

    def on_event(event):
        events.append(event)
        if sum(e.kind == "step" for e in events) >= 3:
            stop.set()

    space = SearchSpace.for_budget("cpu")
    assert run_tournament(config, space, name="w", models_dir=tmp_path / "models", stop=stop, on_event=on_event) is None
    steps = [e for e in events if e.kind == "step"]
    assert steps[-1].step > steps[0].step and steps[-1].time_left_s < steps[0].time_left_s - 2
    assert all(math.isfinite(e.loss) for e in steps) and "at step" in steps[0].text()
    study = open_study("live", config.storage)
    stopped = [t for t in study.trials if t.user_attrs.get("reason") == STOPPED_REASON]
    assert len(stopped) == 1 and stopped[0].state == TrialState.FAIL
    same = {k: stopped[0].user_attrs[k] for k in ("candidate", "rung")}

    def retries():
        return [t for t in open_study("live", config.storage).trials if t.state == TrialState.WAITING
                and {k: t.user_attrs.get(k) for k in same} == same]  # fmt: skip

    assert not retries()  # nothing queued at stop: no stray WAITING trial
    _requeue_stopped(study)
    _requeue_stopped(study)  # once only
    assert len(retries()) == 1


def test_an_exploration_slice_saves_its_candidate_without_scoring_the_whole_split(
    tmp_path, tiny_model_config, tiny_train_config, monkeypatch
):
    # scoring the whole validation split twice a slice cost more than a short slice trained (RESULTS.md)
    import core.trainer

    scored = []
    real = core.trainer.score_kept_weights
    monkeypatch.setattr(core.trainer, "score_kept_weights", lambda *a, **k: scored.append(1) or real(*a, **k))
    short = dataclasses.replace(tiny_train_config, max_iters=4)
    dataset = Dataset(tiny_train_config.data_dir)
    result = _continue(tmp_path / "candidate", tiny_model_config, short, dataset, TrainHooks())
    assert scored == [] and result.whole_val_loss is None
    assert ckpt.latest_checkpoint(tmp_path / "candidate") is not None  # the next rung continues it
    kept = train(tiny_model_config, short, out_dir=tmp_path / "model")  # a saved model is still scored
    assert scored == [1] and math.isfinite(kept.whole_val_loss)

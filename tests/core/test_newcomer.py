"""What a newcomer met (issue 42): minimums from the speed the run will have, a short search that searches, one
validation figure per model, a time budget across resumes, and words that say what they count."""

from __future__ import annotations

import json
import logging
import time
import warnings

import optuna
import pytest

from core import checkpoint as ckpt
from core.autocompile import COMPILING
from core.card import CARD
from core.config import ModelConfig, TrainConfig
from core.data import Dataset, prepare
from core.evaluate import evaluate
from core.trainer import StepEvent, TrainHooks, train
from core.tune import speed
from core.tune.config import TournamentConfig
from core.tune.plan import MIN_STEPS, budget_minimums, plan_tournament
from core.tune.record import RungEvent
from core.tune.rungs import _RungWatch
from core.tune.speed import Speed, measure_step_s, measured_speed, record_observed_speed
from tests.helpers import run_app
from workbench.controllers.train import progress_text, saved_summary


def fake_train(gaps: list[float]):
    """A `train` that reports steps `gaps` seconds apart, as a machine with stalls would."""

    def run(model_config, train_config, *, hooks, **_):
        elapsed = 0.0
        hooks.on_step(StepEvent(1, 0, 2.0, 1e-3, 0.0, elapsed))
        for step, gap in enumerate(gaps, start=2):
            elapsed += gap
            hooks.on_step(StepEvent(step, 0, 2.0, 1e-3, 0.0, elapsed))

    return run


def test_the_pace_is_read_after_warm_up_and_past_a_burst_of_stalls(monkeypatch, dataset_dir):
    """Another process on the cores only slows steps: stalls must not set the plan (a newcomer's page measured
    1232 ms a step, the run then went at 170-190; on CI, 243 ms while Chromium filled the form, the run 95)."""
    slow_start = [1.0] * speed.WARM_STEPS  # allocations, first kernels
    stalled = [1.2] * speed.BLOCK_STEPS  # a burst while the server was busy
    busy = [0.45, 0.5, 0.48, 0.52, 0.47] * (speed.TIMED_BLOCKS - 2)  # the browser drawing the page that asked
    quiet = [0.18, 0.19, 0.18, 0.20, 0.19]  # one quiet block is the machine's pace
    monkeypatch.setattr(speed, "train", fake_train(slow_start + stalled + busy[:10] + quiet + busy[10:]))
    config = TournamentConfig(study="s", data_dir=str(dataset_dir), budget=240)
    assert measure_step_s(config, Dataset(dataset_dir)) == pytest.approx(0.19)


def test_the_minimums_do_not_move_with_the_budget_or_the_short_search_box():
    plans = [plan_tournament(b, 0.19, search_rungs=r, slice_overhead_s=1.6) for b in (180, 240, 600) for r in (1, 2)]
    least = budget_minimums(0.19, slice_overhead_s=1.6)
    notes = [p.note for p in plans if not p.searches]
    assert notes and all(f"needs at least {least.search_s:.0f}s (a short search {least.short_search_s:.0f}s)" in n
                         for n in notes)  # fmt: skip
    assert least.short_search_s < 240 < least.search_s


def test_search_even_if_short_searches_a_four_minute_budget_and_says_how_short():
    plain = plan_tournament(240, 0.19, slice_overhead_s=1.6)  # the AVX2 newcomer's pace
    short = plan_tournament(240, 0.19, search_rungs=1, slice_overhead_s=1.6)
    assert not plain.searches
    assert short.searches and short.rungs[0].candidates > 1
    assert f"fewer than the {MIN_STEPS} that judge one reliably" in short.summary()
    two = plan_tournament(75, 0.19, search_rungs=1, slice_overhead_s=1.6)  # room for two candidates, not three
    assert [r.candidates for r in two.rungs] == [2, 1]
    assert not plan_tournament(40, 0.19, search_rungs=1, slice_overhead_s=1.6).searches


def test_a_pace_the_run_disproves_is_replaced_and_one_it_confirms_is_kept(dataset_dir):
    config = TournamentConfig(study="s", data_dir=str(dataset_dir), budget=240)
    dataset = Dataset(dataset_dir)
    speed._write_speed(config, speed._speed_key(config, dataset), Speed(1.232, 0.5))
    record_observed_speed(config, dataset, 1.2)  # within the margin: kept
    assert measured_speed(config, dataset, measure=False).step_s == 1.232
    record_observed_speed(config, dataset, 0.18)
    assert measured_speed(config, dataset, measure=False) == Speed(0.18, 0.5)


def test_a_compile_shows_as_a_phase_in_both_tabs():
    event = RungEvent("step", 0, 2, 5, message=COMPILING)
    assert event.text() == f"rung 0: candidate 2: {COMPILING}"
    step = {"kind": "step", "step": 10, "max_iters": 100, "loss": 2.5, "tokens_per_s": 900.0, "elapsed_s": 3.0,
            "run_s": 3.0}  # fmt: skip
    snap = {"events": [step, {"kind": "status", "message": COMPILING}], "title": "t", "message": "", "progress": 0.1,
            "info": {"max_minutes": 2}, "status": "running"}  # fmt: skip
    _, text = progress_text(snap)
    assert COMPILING in text and "train loss 2.500" in text


def test_a_resumed_rung_reports_each_step_once_without_optunas_warning():
    study = optuna.create_study()
    trial = study.ask()
    trial.report(2.0, 40)
    plan = plan_tournament(2000, 0.1)
    watch = _RungWatch(trial, 0, 0, plan, lambda event: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step in (40, 60):
            watch.on_eval(type("E", (), {"step": step, "val_loss": 1.5})())
    assert study.trials[0].intermediate_values == {40: 2.0, 60: 1.5}


def tiny_run(dataset_dir, **train_fields) -> tuple[ModelConfig, TrainConfig]:
    model = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16)
    fields = {"max_iters": 40, "eval_interval": 20, "eval_iters": 2, "batch_size": 4, **train_fields}
    return model, TrainConfig(data_dir=str(dataset_dir), **fields)


@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_the_card_the_final_line_and_evaluate_say_one_validation_figure(tmp_path, corpus_file, tokenizer):
    prepare([corpus_file], tmp_path / "data", tokenizer=tokenizer, vocab_size=300)
    result = train(*tiny_run(tmp_path / "data"), out_dir=tmp_path / "models" / "m")
    loaded = ckpt.load_model("m", tmp_path / "models")
    scored = evaluate(loaded, data_dir=tmp_path / "data")
    summary = loaded.info["summary"]
    assert abs(summary["val_loss"] - scored.nats_per_char) < 1e-3 and result.whole_val_loss == summary["val_loss"]
    assert f"final val_loss={summary['val_loss']:.4f}" in result.final_line()
    assert summary["val_chars"] == scored.chars
    card = (tmp_path / "models" / "m" / CARD).read_text(encoding="utf-8")
    assert f"**{summary['val_loss']:.4f} nats per character**" in card and "whole validation split" in card
    line = saved_summary(summary, tokenizer)
    assert f"{summary['val_loss']:.4f}" in line and ("tokens seen" if tokenizer == "bpe" else "characters seen") in line


def test_max_minutes_is_the_runs_budget_across_resumes(tmp_path, dataset_dir):
    model, config = tiny_run(dataset_dir, max_iters=0, max_minutes=0.05, eval_interval=10**6)
    out = tmp_path / "m"
    began = time.perf_counter()
    first = train(model, config, out_dir=out, hooks=TrainHooks(should_stop=lambda: time.perf_counter() - began > 1))
    assert first.stop_reason == "stopped"  # after a third of its 3 s
    spent = json.loads((out / "config.json").read_text())["summary"]["seconds"]
    assert spent >= 1.0
    seen: list[float] = []
    again = train(model, config, out_dir=out, resume=True, hooks=TrainHooks(on_step=lambda e: seen.append(e.run_s)))
    assert again.stop_reason == "time_budget" and seen and seen[0] >= spent - 0.1  # the clock goes on from there
    total = json.loads((out / "config.json").read_text())["summary"]["seconds"]
    assert total < 3.0 + 2.0  # the 3 s budget once, not again after the resume (plus scoring and saving)


def test_prepare_says_tokens_a_character_for_a_bpe(tmp_path, corpus_file):
    stats = prepare([corpus_file], tmp_path / "bpe", tokenizer="bpe", vocab_size=300)
    assert f"{stats.tokens / stats.chars:.2f} tokens a character" in stats.summary()
    assert "characters a token" not in stats.summary() and "(0 MB/s)" not in stats.summary()


def test_library_chatter_is_off_unless_verbose(tmp_path, corpus_file):
    from cli.main import main

    assert main(["prepare", str(corpus_file), "--data-dir", str(tmp_path / "d")]) == 0
    assert logging.getLogger("onnxscript").level == logging.WARNING


def test_a_user_mistake_in_a_job_is_logged_in_one_line(caplog):
    from core.tune.config import TuningError
    from workbench.jobs import JobManager

    jobs = JobManager()

    def fails(job):
        raise TuningError("a budget of 3s is too short")

    job = jobs.start("tune", "tournament t", fails)
    job.thread.join(10)
    failed = [r for r in caplog.records if "too short" in r.getMessage()]
    assert failed and all(r.exc_info is None for r in failed)


def test_evaluate_prints_no_empty_bar_before_its_progress(tmp_path, dataset_dir):
    model, config = tiny_run(dataset_dir)
    train(model, config, out_dir=tmp_path / "models" / "m")
    done = run_app("evaluate", "--model", "m", "--data-dir", str(dataset_dir), cwd=tmp_path)
    assert done.returncode == 0 and "0window" not in done.stderr


def test_a_tournaments_default_candidate_runs_at_the_pace_its_plan_measured(tmp_path, dataset_dir):
    """Where training has the cores, the plan's measured pace is the run's (the newcomer's page read 6.5x)."""
    from core.tune.rungs import run_tournament
    from core.tune.space import SearchSpace
    from core.tune.speed import recorded_plan

    fixed = {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 32, "batch_size": 8}
    config = TournamentConfig(study="pace", storage=f"sqlite:///{tmp_path / 'studies.db'}", budget=25, data_dir=str(dataset_dir),
                        runs_dir=str(tmp_path / "runs"), overrides=fixed)  # fmt: skip
    events: list[RungEvent] = []
    run_tournament(config, SearchSpace.for_budget("cpu"), name="pace", models_dir=tmp_path / "models",
                   on_event=events.append)  # fmt: skip
    planned = recorded_plan(config).step_s  # what the plan rested on (a run that disproves it replaces the cache)
    paces = [e.step_s for e in events if e.kind == "step" and e.candidate == 0 and e.step_s]
    # a factor of 2 either way: the newcomer's 6.5x fails it, while a shared CI machine's noise on 10 ms steps
    # (1.42x seen) does not; benchmarks/plan_pace.py holds the plan to its 30%
    ratio = sorted(paces)[len(paces) // 2] / planned if paces else 0.0
    assert 0.5 < ratio < 2, (planned, paces)

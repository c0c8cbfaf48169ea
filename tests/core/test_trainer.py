from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from core import checkpoint as ckpt
from core.config import ConfigError, TrainConfig
from core.schedule import lr_at
from core.trainer import LossDiverged, TrainHooks, train


def test_loss_goes_down(tiny_model_config, tiny_train_config):
    result = train(tiny_model_config, tiny_train_config)
    vocab_size = result_vocab_size(tiny_train_config)
    assert result.history[0]["val_loss"] < math.log(vocab_size)  # below uniform guessing
    assert result.history[0]["val_loss"] > result.history[-1]["val_loss"] + 0.2
    assert result.val_loss == min(h["val_loss"] for h in result.history)
    assert result.stop_reason == "max_iters" and result.iters == 60


def result_vocab_size(config: TrainConfig) -> int:
    from core.data import Dataset

    return len(Dataset(config.data_dir).vocab)


def test_val_only_evaluation_skips_the_train_split_and_changes_nothing_else(tiny_model_config, tiny_train_config):
    both = train(tiny_model_config, tiny_train_config)
    val_only = train(tiny_model_config, dataclasses.replace(tiny_train_config, eval_train=False))
    assert [h["val_loss"] for h in val_only.history] == pytest.approx([h["val_loss"] for h in both.history])
    assert all(math.isnan(h["train_loss"]) for h in val_only.history)
    assert math.isfinite(both.train_loss) and math.isnan(val_only.train_loss)


def test_lr_schedule_warms_up_then_decays_to_min():
    config = TrainConfig(lr=1.0, min_lr=0.1, warmup_iters=10, max_iters=100)
    lrs = [lr_at(step / 100, step, config) for step in range(101)]
    assert lrs[0] < lrs[5] < lrs[9] <= 1.0
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.1)


def test_warmup_fraction_matches_warmup_steps_and_fits_a_time_budget():
    by_steps = TrainConfig(lr=1.0, min_lr=0.1, warmup_iters=10, max_iters=100)
    by_fraction = dataclasses.replace(by_steps, warmup_iters=0, warmup_fraction=0.1)
    for step in range(101):
        assert lr_at(step / 100, step, by_fraction) == pytest.approx(lr_at(step / 100, step, by_steps))
    # under a time budget the step count is unknown: the warmup follows the elapsed fraction of the minutes
    timed = dataclasses.replace(by_fraction, max_iters=10**9)
    assert lr_at(0.05, 7, timed) == pytest.approx(0.5) and lr_at(0.1, 12, timed) == pytest.approx(1.0)


def test_evaluations_by_seconds_come_at_equal_fractions_of_a_time_budget(tiny_model_config, tiny_train_config):
    config = dataclasses.replace(tiny_train_config, max_iters=10**9, max_minutes=3 / 60, eval_seconds=0.6)
    result = train(tiny_model_config, config)
    assert result.stop_reason == "time_budget" and 2.9 < result.elapsed_s < 3.5
    assert len(result.history) == 5  # at 0.6, 1.2, 1.8 and 2.4 s, and when the budget ends
    for k, record in enumerate(result.history[:-1], start=1):
        assert 0.6 * k <= record["elapsed_s"] < 0.6 * k + 0.5
    with pytest.raises(ConfigError, match="eval_seconds"):
        dataclasses.replace(config, eval_seconds=-1).validate()
    with pytest.raises(ConfigError, match="warmup_fraction must be in"):
        dataclasses.replace(config, warmup_fraction=1.5).validate()


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path, tiny_model_config, tiny_train_config):
    config = dataclasses.replace(tiny_train_config, checkpoint_interval=10)
    model_config = dataclasses.replace(tiny_model_config, dropout=0.1)  # exercise the RNG state too
    full_losses: list[float] = []
    train(
        model_config, config, out_dir=tmp_path / "full", hooks=TrainHooks(on_step=lambda e: full_losses.append(e.loss))
    )

    first: list[float] = []
    stopped = train(
        model_config,
        config,
        out_dir=tmp_path / "split",
        hooks=TrainHooks(on_step=lambda e: first.append(e.loss), should_stop=lambda: len(first) >= 25),
    )
    assert stopped.stop_reason == "stopped" and stopped.iters == 25
    second: list[float] = []
    resumed = train(
        model_config,
        config,
        out_dir=tmp_path / "split",
        resume=True,
        hooks=TrainHooks(on_step=lambda e: second.append(e.loss)),
    )
    assert resumed.iters == 60
    assert first + second == pytest.approx(full_losses, abs=1e-6)
    metrics = [json.loads(line) for line in (tmp_path / "split" / ckpt.METRICS).read_text().splitlines()]
    assert [m["step"] for m in metrics] == [20, 25, 40, 60]


def test_early_stop_on_patience(tiny_model_config, tiny_train_config):
    config = dataclasses.replace(
        tiny_train_config,
        lr=1e-9,
        muon_lr=1e-9,
        warmup_iters=0,
        max_iters=200,
        eval_interval=5,
        patience=2,
        min_lr=0.0,
    )  # both optimizers' rates ~0: the model cannot improve, so patience must end the run
    result = train(tiny_model_config, config)
    assert result.stop_reason == "early_stop"
    assert result.iters < 200


def test_time_budget_stops_the_run(tiny_model_config, tiny_train_config):
    config = dataclasses.replace(tiny_train_config, max_iters=100_000, max_minutes=0.02)
    result = train(tiny_model_config, config)
    assert result.stop_reason == "time_budget"
    assert result.iters < 100_000 and math.isfinite(result.val_loss)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(
    tmp_path, tiny_model_config, tiny_train_config, monkeypatch
):
    config = dataclasses.replace(tiny_train_config, checkpoint_interval=10)
    steps = []

    def poison(event):
        steps.append(event.step)
        if event.step == 15:
            for p in torch.nn.Module.parameters(poison.model):
                p.data.fill_(float("nan"))

    original = torch.nn.Module.train

    def capture(self, mode=True):
        if hasattr(self, "blocks"):
            poison.model = self
        return original(self, mode)

    monkeypatch.setattr(torch.nn.Module, "train", capture)
    with pytest.raises(LossDiverged, match="not finite|became nan"):
        train(tiny_model_config, config, out_dir=tmp_path / "m", hooks=TrainHooks(on_step=poison))
    saved = ckpt.latest_checkpoint(tmp_path / "m")
    assert saved is not None and saved.step == 10
    assert all(torch.isfinite(t).all() for t in saved.weights.values())


def test_bad_train_config_is_rejected(tiny_model_config, tiny_train_config):
    for bad in (dict(batch_size=0), dict(lr=-1.0), dict(max_iters=0), dict(dtype="int8")):
        with pytest.raises(ConfigError):
            train(tiny_model_config, dataclasses.replace(tiny_train_config, **bad))

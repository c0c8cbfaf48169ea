"""What a budget gets (core.tune.budget): a larger default trained for all of a long budget on a BPE."""

from __future__ import annotations

import dataclasses

import pytest

from core.data import Dataset
from core.tune import budget as budgets
from core.tune import record
from core.tune import tokenizer as tokenizers
from core.tune.budget import GROWN_SHAPE, choose_plan
from core.tune.config import TournamentConfig, TuningError
from core.tune.record import prepare_tournament
from core.tune.space import IntRange, SearchSpace
from core.tune.speed import Speed, measured_speed


def config_for(tmp_path, dataset_dir, **fields) -> TournamentConfig:
    values = {"study": "grown", "storage": f"sqlite:///{tmp_path / 's.db'}", "budget": 1800, "data_dir": str(dataset_dir),
              "runs_dir": str(tmp_path / "runs")}  # fmt: skip
    return TournamentConfig(**(values | fields))


def grown_pace(dataset: Dataset, budget_s: float, passes: float) -> float:
    """The larger model's step at which `budget_s` reads a BPE of `dataset` `passes` times."""
    chars_per_step = 12 * GROWN_SHAPE["block_size"] * tokenizers.CHARS_PER_BPE_TOKEN
    return budget_s * chars_per_step / (passes * dataset.stats["train_chars"])


@pytest.fixture
def paces(monkeypatch):
    """The larger model's measured pace, set by the test; the calls that asked for it."""
    asked: list[dict] = []
    pace = {"step_s": 1.0}

    def measured(config, dataset, measure=True, changes=None):
        asked.append({"changes": changes, "measure": measure})
        return Speed(pace["step_s"], 0.5)

    monkeypatch.setattr(budgets, "measured_speed", measured)
    return pace, asked


def test_a_long_budget_on_a_bpe_trains_the_larger_default_for_all_of_it(tmp_path, dataset_dir, paces):
    pace, asked = paces
    dataset = Dataset(dataset_dir)
    config = config_for(tmp_path, dataset_dir)
    pace["step_s"] = grown_pace(dataset, config.budget, passes=6)
    default = Speed(config.budget / 300, 0.1)  # a pace that leaves room for a search
    plan, pick = choose_plan(config, dataset, default)
    assert not plan.searches and plan.grown["params"] == GROWN_SHAPE and plan.grown["step_s"] == pace["step_s"]
    assert plan.final_step_s == pace["step_s"]  # its checkpoints are spaced by its own pace
    assert pick.params == {"tokenizer": "bpe", "vocab_size": tokenizers.BPE_SIZE} and "6.0 times" in pick.why
    assert asked[-1]["changes"] == GROWN_SHAPE | {"vocab_size": tokenizers.BPE_SIZE}  # timed at the BPE's size
    plan.tokenizer = pick.to_json()
    assert "BPE 2048" in plan.summary() and "a larger model (6 layers of 256, context 256 tokens" in plan.summary()

    # read too few times (a shorter budget) or too many (overfits): the tournament as before
    for passes in (2, 12):
        pace["step_s"] = grown_pace(dataset, config.budget, passes=passes)
        plan, _ = choose_plan(config, dataset, default)
        assert not plan.grown and "larger model" not in plan.summary()
    # what the user fixed is kept: characters, a shape field, a base model; nothing is measured for them
    asked.clear()
    pace["step_s"] = grown_pace(dataset, config.budget, passes=6)
    for fixed in ({"tokenizer": "char"}, {"tokenizer": "prepared"}, {"overrides": {"n_layer": 4}},
                  {"overrides": {"block_size": 64}}):  # fmt: skip
        plan, _ = choose_plan(config_for(tmp_path, dataset_dir, **fixed), dataset, default)
        assert not plan.grown
    narrow = dataclasses.replace(SearchSpace.for_budget("cpu"), n_layer=IntRange(2, 4))  # a user's --space
    assert not choose_plan(config, dataset, default, space=narrow)[0].grown
    # nor where the default's pace says it reads the text too few times, or too many even at the slowest step its
    # arithmetic allows (a tiny text: it would overfit whatever its pace)
    slow, quick = (Speed(grown_pace(dataset, config.budget, passes=p), 0.1) for p in (3, 10_000))
    assert budgets.grown_default(config, dataset, slow) is None and asked == []
    assert budgets.grown_default(config, dataset, quick) is None and asked == []


def test_the_larger_default_is_the_tournaments_only_candidate(tmp_path, dataset_dir, paces, monkeypatch):
    pace, _ = paces
    dataset = Dataset(dataset_dir)
    monkeypatch.setattr(tokenizers, "BPE_SIZE", 300)  # a BPE this tiny text can build
    config = config_for(tmp_path, dataset_dir)
    pace["step_s"] = grown_pace(dataset, config.budget, passes=6)
    monkeypatch.setattr(record, "measured_speed", lambda *args, **kwargs: Speed(config.budget / 300, 0.1))
    study, plan = prepare_tournament(config, SearchSpace.for_budget("cpu"))
    assert plan.grown and [t.user_attrs["candidate"] for t in study.trials] == [0]
    params = study.trials[0].user_attrs["params"]
    assert {k: params[k] for k in GROWN_SHAPE} == GROWN_SHAPE and params["tokenizer"] == "bpe"
    assert params["vocab_size"] == 300 and "built in" in plan.summary()


def test_the_larger_models_pace_is_its_own_and_is_not_measured_while_a_job_runs(tmp_path, dataset_dir):
    dataset = Dataset(dataset_dir)
    config = config_for(tmp_path, dataset_dir, overrides={"batch_size": 2})
    small = {"n_layer": 1, "n_embd": 16, "n_head": 2, "block_size": 16, "vocab_size": 300}
    measured_speed(config, dataset)  # the default's, cached in the dataset folder
    assert measured_speed(config, dataset, measure=False, changes=small) is None  # not the default's pace
    other = measured_speed(config, dataset, changes=small)
    assert other.step_s > 0 and measured_speed(config, dataset, measure=False, changes=small) == other
    speed = measured_speed(config, dataset)
    chars_per_step = 2 * GROWN_SHAPE["block_size"] * tokenizers.CHARS_PER_BPE_TOKEN
    budget = 20 * dataset.stats["train_chars"] * speed.step_s / chars_per_step  # 20 passes at the default's pace
    grown = config_for(tmp_path, dataset_dir, budget=budget, overrides={"batch_size": 2})
    with pytest.raises(TuningError, match="measured on this machine when no job is running"):
        budgets.grown_default(grown, dataset, speed, measure=False)

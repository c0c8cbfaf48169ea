"""What a budget gets (core.tune.budget): a larger default trained for all of a long budget on a BPE."""

from __future__ import annotations

import dataclasses

import pytest

from core.data import Dataset
from core.tune import budget as budgets
from core.tune import record
from core.tune import tokenizer as tokenizers
from core.tune.budget import GROWN_RECIPE, GROWN_SHAPE, choose_plan, plan_for
from core.tune.candidates import candidate_configs
from core.tune.config import TournamentConfig
from core.tune.plan import Plan, Rung, make_plan
from core.tune.record import prepare_tournament
from core.tune.rungs import paced_by_plan
from core.tune.space import IntRange, SearchSpace
from core.tune.speed import Speed, measured_speed, record_observed_speed


def config_for(tmp_path, dataset_dir, **fields) -> TournamentConfig:
    values = {"study": "grown", "storage": f"sqlite:///{tmp_path / 's.db'}", "budget": 1800, "data_dir": str(dataset_dir),
              "runs_dir": str(tmp_path / "runs"), "device": "cpu"}  # fmt: skip
    return TournamentConfig(**(values | fields))


def grown_pace(dataset: Dataset, budget_s: float, passes: float) -> float:
    """The larger model's step at which `budget_s` reads a BPE of `dataset` `passes` times."""
    chars_per_step = 12 * GROWN_SHAPE["block_size"] * tokenizers.CHARS_PER_BPE_TOKEN
    return budget_s * chars_per_step / (passes * dataset.stats["train_chars"])


@pytest.fixture
def paces(monkeypatch):
    """The larger model's measured pace, set by the test; the calls that asked for it. A tiny text is read many
    times in a few steps, so the steps the larger model needs are few here too."""
    asked: list[dict] = []
    pace = {"step_s": 1.0}

    def measured(config, dataset, measure=True, changes=None):
        asked.append({"changes": changes, "measure": measure})
        return Speed(pace["step_s"], 0.0) if measure else None

    monkeypatch.setattr(budgets, "measured_speed", measured)
    monkeypatch.setattr(budgets, "GROWN_MIN_STEPS", 1)
    return pace, asked


def test_a_long_budget_on_a_bpe_trains_the_larger_default_for_all_of_it(tmp_path, dataset_dir, paces, monkeypatch):
    pace, asked = paces
    dataset = Dataset(dataset_dir)
    config = config_for(tmp_path, dataset_dir)
    pace["step_s"] = grown_pace(dataset, config.budget, passes=6)
    default = Speed(config.budget / 300, 0.1)  # a pace that leaves room for a search
    plan, pick = choose_plan(config, dataset, default)
    assert not plan.searches and plan.grown["params"] == GROWN_SHAPE | GROWN_RECIPE
    assert plan.grown["step_s"] == pace["step_s"]
    assert plan.final_step_s == pace["step_s"]  # its checkpoints are spaced by its own pace
    usual = plan_for(config, Speed(0.1, 0.1))
    assert usual.searches and usual.final_step_s == 0.1 * usual.final_token_scale  # the winner at a longer context
    assert plan_for(config_for(tmp_path, dataset_dir, budget=30), Speed(0.1, 0.1)).final_step_s == 0.1
    assert pick.params == {"tokenizer": "bpe", "vocab_size": tokenizers.BPE_SIZE} and "a few times" in pick.why
    assert asked[-1]["changes"] == GROWN_SHAPE | {"vocab_size": tokenizers.BPE_SIZE}  # timed at the BPE's size
    plan.tokenizer = pick.to_json()
    said = plan.summary()
    assert said.startswith("BPE 2048: a BPE has beaten") and "a larger model (6 layers of 256" in said
    assert "about 6.0 passes over the text, weight decay 0.04 of its matrices) trains for the whole budget" in said
    assert Plan.from_json(plan.to_json()).grown == plan.grown  # a restarted tournament goes on with it
    forced, forced_pick = choose_plan(config_for(tmp_path, dataset_dir, tokenizer="bpe"), dataset, default)
    assert forced.grown and forced_pick.why == "BPE 2048, as asked"

    # read too few times (a shorter budget) or too many (overfits): the tournament as before
    for passes in (2, 12):
        pace["step_s"] = grown_pace(dataset, config.budget, passes=passes)
        plan, _ = choose_plan(config, dataset, default)
        assert not plan.grown and "larger model" not in plan.summary()
    # too few steps: a tiny text read 6 times in a few dozen steps of it
    pace["step_s"] = grown_pace(dataset, config.budget, passes=6)
    monkeypatch.setattr(budgets, "GROWN_MIN_STEPS", 2_500)
    assert not choose_plan(config, dataset, default)[0].grown
    monkeypatch.setattr(budgets, "GROWN_MIN_STEPS", 1)
    # what the user fixed or asked for is kept, and nothing is measured for it: characters, a shape field, a
    # search even of a short budget, a GPU (where it was not measured), a narrower search space
    asked.clear()
    for fixed in ({"tokenizer": "char"}, {"tokenizer": "prepared"}, {"overrides": {"n_layer": 4}},
                  {"overrides": {"block_size": 64}}, {"search_rungs": 1}, {"device": "cuda"}):  # fmt: skip
        assert not budgets.grown_default(config_for(tmp_path, dataset_dir, **fixed), dataset, default), fixed
    narrow = dataclasses.replace(SearchSpace.for_budget("cpu"), n_layer=IntRange(2, 4))  # a user's --space
    assert not choose_plan(config, dataset, default, space=narrow)[0].grown
    # nor where the default's pace and the arithmetic say it reads the text too few times even at its fastest,
    # or too many even at its slowest (a tiny text: it would overfit whatever its pace)
    slow, quick = (Speed(grown_pace(dataset, config.budget, passes=p), 0.1) for p in (3, 10_000))
    assert budgets.grown_default(config, dataset, slow) is None and asked == []
    assert budgets.grown_default(config, dataset, quick) is None and asked == []
    # while another job runs its pace is not measured: the usual plan, not an error
    assert budgets.grown_default(config, dataset, default, measure=False) is None and not asked[-1]["measure"]


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
    _, train_config = candidate_configs(params, config, 0, params["vocab_size"])
    assert train_config.muon_weight_decay == GROWN_RECIPE["muon_weight_decay"]  # what its trainer gets
    mine = {"muon_lr": 0.03, "muon_weight_decay": 0.0}  # fields beside its shape: the user's own win
    study, plan = prepare_tournament(
        config_for(tmp_path, dataset_dir, study="mine", overrides=mine), SearchSpace.for_budget("cpu")
    )
    assert plan.grown and {k: study.trials[0].user_attrs["params"][k] for k in mine} == mine


def test_the_larger_models_pace_is_kept_apart_from_the_defaults(tmp_path, dataset_dir):
    dataset = Dataset(dataset_dir)
    config = config_for(tmp_path, dataset_dir, overrides={"batch_size": 2})
    small = {"n_layer": 1, "n_embd": 16, "n_head": 2, "block_size": 16, "vocab_size": 300}
    default = measured_speed(config, dataset)  # the default's, cached in the dataset folder
    assert measured_speed(config, dataset, measure=False, changes=small) is None  # not the default's pace
    other = measured_speed(config, dataset, changes=small)
    assert other.step_s > 0 and other.score_s == 0  # it runs no slices to score
    assert measured_speed(config, dataset, measure=False, changes=small) == other
    record_observed_speed(config, dataset, other.step_s * 2, small)  # what its run found corrects it alone
    assert measured_speed(config, dataset, measure=False, changes=small).step_s == other.step_s * 2
    assert measured_speed(config, dataset, measure=False) == default


def test_a_runs_pace_corrects_only_the_pace_its_plan_read():
    plan = Plan.from_json(make_plan(1800, 0.05, [Rung(1, 0.0)]).to_json())
    assert paced_by_plan(plan, True) and not paced_by_plan(plan, False)  # the default, on a tokenizer it tried
    plan.grown = {"params": GROWN_SHAPE, "step_s": 0.6, "changes": GROWN_SHAPE | {"vocab_size": 2048}}
    assert paced_by_plan(plan, False)  # the larger default on its BPE: under its own key
    plan.grown = {"params": GROWN_SHAPE, "step_s": 0.6}  # recorded before the key existed: not the default's pace
    assert not paced_by_plan(plan, True)

"""The tokenizer a tournament tries (core.tune.tokenizer): a BPE where the budget reads the text a few times."""

from __future__ import annotations

import json

import pytest

from core import checkpoint as ckpt
from core.data import Dataset, prepare
from core.evaluate import evaluate
from core.sampling import SamplingConfig, complete
from core.tune import tokenizer as tokenizers
from core.tune.config import TournamentConfig, TuningError
from core.tune.record import begin_tournament, prepare_tournament
from core.tune.rungs import run_tournament
from core.tune.space import SearchSpace
from core.tune.tokenizer import pick_tokenizer
from core.variants import AS_PREPARED
from tests.conftest import VERSE

TINY = {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "batch_size": 4}


def tournament(tmp_path, dataset_dir, **fields) -> TournamentConfig:
    values = {"study": "tok", "storage": f"sqlite:///{tmp_path / 's.db'}", "budget": 30, "data_dir": str(dataset_dir),
              "runs_dir": str(tmp_path / "runs"), "search_rungs": 1, "final_share": 0.5, "overrides": TINY}  # fmt: skip
    return TournamentConfig(**(values | fields))


def test_a_bpe_is_picked_where_the_budget_reads_the_text_a_few_times(tmp_path, dataset_dir, monkeypatch):
    dataset = Dataset(dataset_dir)
    config = tournament(tmp_path, dataset_dir, budget=600, overrides={})
    chars = dataset.stats["train_chars"]
    per_pass_s = chars / (12 * 64 * tokenizers.CHARS_PER_BPE_TOKEN)  # steps of the default model a pass takes
    few, some, many = (pick_tokenizer(config, dataset, 600 / (per_pass_s * passes)) for passes in (4, 12, 30))
    assert few.params == {"tokenizer": "bpe", "vocab_size": 2048} and few.searched and "4.0 times" in few.why
    assert some.params == {} and some.tried == 2048 and some.searched and "among the candidates" in some.why
    assert many.params == {} and not many.tried and "about 30 times" in many.why and "overfit" in many.why
    fixed = pick_tokenizer(TournamentConfig(**{**vars(config), "tokenizer": "char"}), dataset, 1.0)
    assert fixed.tokenizer == "char" and fixed.params == {"tokenizer": "char", "vocab_size": 0}
    forced = pick_tokenizer(TournamentConfig(**{**vars(config), "tokenizer": "bpe"}), dataset, 1.0)
    assert forced.tokenizer == "bpe" and not forced.searched  # asked for: every candidate uses it
    monkeypatch.setattr(tokenizers, "BUILD_CHARS_PER_S", 1e3)  # as slow to build as a huge corpus would be
    huge = pick_tokenizer(TournamentConfig(**{**vars(config), "budget": 1.0}), dataset, 1e-6)
    assert huge.params == {} and "building a BPE" in huge.why  # its build would eat the budget
    with pytest.raises(TuningError, match="tokenizer must be one of auto, char, prepared, bpe"):
        TournamentConfig(budget=60, tokenizer="words").validate()


def test_a_tournament_tries_a_bpe_beside_the_characters_unless_characters_are_fixed(tmp_path, dataset_dir, monkeypatch):
    monkeypatch.setattr(tokenizers, "MAX_BPE_PASSES", 1e12)  # this tiny text: as if the budget read it a few times
    monkeypatch.setattr(tokenizers, "BPE_SIZE", 300)
    monkeypatch.setattr(tokenizers, "MAX_BUILD_SHARE", 1.0)
    study, plan = prepare_tournament(tournament(tmp_path, dataset_dir, budget=120), SearchSpace.for_budget("cpu"))
    tried = [t.user_attrs["params"].get("tokenizer", AS_PREPARED) for t in study.trials]
    assert tried[0] == "bpe" and AS_PREPARED in tried  # the default with the BPE, the characters beside it
    assert "BPE 300" in plan.summary() and "built in" in plan.summary()  # what it cost, from the budget
    assert (dataset_dir / "tokenized" / "bpe-300" / "tokenizer.json").is_file()
    fixed = tournament(tmp_path, dataset_dir, study="chars", tokenizer="char", budget=120)
    study, plan = prepare_tournament(fixed, SearchSpace.for_budget("cpu"))
    assert {t.user_attrs["params"].get("tokenizer", AS_PREPARED) for t in study.trials} <= {"char", AS_PREPARED}
    assert "char, as asked" in plan.summary()
    monkeypatch.setattr(tokenizers, "MAX_BPE_PASSES", 0)  # where a BPE may overfit: characters, a BPE tried beside
    monkeypatch.setattr(tokenizers, "MAX_TRIED_PASSES", 1e12)
    study, plan = prepare_tournament(tournament(tmp_path, dataset_dir, study="tried", budget=120),
                                     SearchSpace.for_budget("cpu"))  # fmt: skip
    tried = [t.user_attrs["params"].get("tokenizer", AS_PREPARED) for t in study.trials]
    assert tried[:2] == [AS_PREPARED, "bpe"] and "among the candidates" in plan.summary()


def test_a_bpe_winner_chats_and_evaluates(tmp_path, monkeypatch):
    text = tmp_path / "verse.txt"
    text.write_text(VERSE * 60, encoding="utf-8")
    data_dir = tmp_path / "dataset"
    prepare([text], data_dir)
    monkeypatch.setattr(tokenizers, "BPE_SIZE", 300)
    config = tournament(tmp_path, data_dir, tokenizer="bpe", budget=25)
    begun = begin_tournament(config, None, "bpe-winner", tmp_path / "models")
    final = run_tournament(begun.config, begun.space, name="bpe-winner", models_dir=tmp_path / "models")
    loaded = ckpt.load_model(final)
    assert loaded.vocab.kind == "bpe" and json.loads((final / "config.json").read_text())["tokenizer"] == "bpe"
    assert complete(loaded.model, loaded.vocab, "To be", SamplingConfig(max_new_tokens=20, seed=0))
    assert 0 < evaluate(loaded, data_dir=data_dir).nats_per_char < 6  # the char dataset, read with its BPE

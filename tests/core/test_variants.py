"""A study that searches the tokenizer (core.variants, core.tune.study): each tokenizer's dataset is built once beside
the prepared one and reused, trials record losses per character, and the winner trains on its tokenizer."""

from __future__ import annotations

import dataclasses
import math

import optuna
import pytest

from core import checkpoint as ckpt
from core.data import DataError, Dataset, prepare
from core.evaluate import evaluate
from core.trainer import train
from core.tune.config import StudyConfig, TuningError
from core.tune.space import Choice, SearchSpace, apply_params
from core.tune.storage import create_study
from core.tune.study import run_study
from core.variants import TOKENIZED_DIR, open_dataset, variant_dir


def test_variant_dir_names_the_prepared_dataset_or_a_cached_variant(dataset_dir, tmp_path):
    assert variant_dir(dataset_dir, "prepared") == dataset_dir
    assert variant_dir(dataset_dir, "char") == dataset_dir  # prepared as characters already
    assert variant_dir(dataset_dir, "bpe", 300) == dataset_dir / TOKENIZED_DIR / "bpe-300"
    assert variant_dir(dataset_dir / TOKENIZED_DIR / "bpe-300", "bpe", 512) == dataset_dir / TOKENIZED_DIR / "bpe-512"
    with pytest.raises(DataError, match="between 256 and 65,535, got 100"):
        variant_dir(dataset_dir, "bpe", 100)
    with pytest.raises(DataError, match="unknown tokenizer 'wordpiece'"):
        variant_dir(dataset_dir, "wordpiece")
    bpe = tmp_path / "bpe"
    prepare([tmp_path / "corpus.txt"], bpe, tokenizer="bpe", vocab_size=300)
    assert variant_dir(bpe, "bpe", 300) == bpe and variant_dir(bpe, "char") == bpe / TOKENIZED_DIR / "char"


def test_a_variant_is_built_once_from_the_same_text_and_rebuilt_when_the_text_changes(dataset_dir):
    path = variant_dir(dataset_dir, "bpe", 300)
    dataset = open_dataset(path)
    assert dataset.vocab.kind == "bpe" and len(dataset.vocab) == 300
    for name in ("output_train.txt", "output_val.txt"):
        assert (path / name).read_bytes() == (dataset_dir / name).read_bytes()
    assert dataset.stats.get("sources")  # the card still names the sources
    built = (path / "output_train.bin").stat().st_mtime_ns
    open_dataset(path)
    assert (path / "output_train.bin").stat().st_mtime_ns == built  # reused, not re-tokenized
    prepare([dataset_dir.parent / "corpus.txt"], dataset_dir, val_fraction=0.2)  # new text, new split
    again = open_dataset(path)
    assert (path / "output_val.txt").read_bytes() == (dataset_dir / "output_val.txt").read_bytes()
    assert len(again.tokens["val"]) > len(dataset.tokens["val"])
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]


def test_a_search_space_checks_the_tokenizer_fields():
    with pytest.raises(TuningError, match="tokenizer: 'wordpiece' is none of prepared, char, bpe"):
        SearchSpace.from_json({"tokenizer": {"choices": ["char", "wordpiece"]}})
    with pytest.raises(TuningError, match=r"vocab_size: values must be integers in \[256, 65535\], got 100"):
        SearchSpace.from_json({"vocab_size": [100, 4096]})
    space = SearchSpace.from_json({"tokenizer": {"choices": ["char", "bpe"]}, "vocab_size": [256, 4096]})
    assert space.tokenizer == Choice(("char", "bpe"))


def test_a_study_over_tokenizers_records_losses_per_character_and_its_winner_trains_on_its_tokenizer(
    tmp_path, dataset_dir, tiny_model_config, tiny_train_config
):
    space = SearchSpace.from_json({
        "tokenizer": {"choices": ["char", "bpe"]}, "vocab_size": 300, "lr": 3e-3, "n_layer": 1,
        "n_head": {"choices": [2]}, "head_size": {"choices": [8]}, "dropout": 0, "batch_size": {"choices": [8]},
        "block_size": {"choices": [16]}, "weight_decay": 0, "warmup_fraction": 0,
    })  # fmt: skip
    config = StudyConfig(study="tokens", storage=f"sqlite:///{tmp_path / 't.db'}", trials=2, trial_iters=40,
                        data_dir=str(dataset_dir), pruner="none", device="cpu", eval_iters=4, eval_interval=20)  # fmt: skip
    study = create_study(config)
    study.enqueue_trial({"tokenizer": "char"})
    study.enqueue_trial({"tokenizer": "bpe"})
    study = run_study(config, space)
    trials = {t.params["tokenizer"]: t for t in study.get_trials(states=[optuna.trial.TrialState.COMPLETE])}
    assert set(trials) == {"char", "bpe"}
    chars = len(Dataset(dataset_dir).vocab)
    # untrained, a BPE of 300 tokens loses ln(300) = 5.7 nats a token; per character it is below a character
    # model's ln(vocabulary) bound, as the character trial's is
    assert all(0 < t.value < math.log(chars) + 0.3 for t in trials.values())
    assert (dataset_dir / TOKENIZED_DIR / "bpe-300" / "source.json").is_file()

    model_config, train_config = apply_params(trials["bpe"].params | {"tokenizer": "bpe", "vocab_size": 300},
                                              tiny_model_config, tiny_train_config)  # fmt: skip
    assert train_config.data_dir.endswith(f"{TOKENIZED_DIR}/bpe-300") and model_config.vocab_size == 0
    train(model_config, dataclasses.replace(train_config, max_iters=20), out_dir=tmp_path / "models" / "winner")
    loaded = ckpt.load_model("winner", tmp_path / "models")
    assert loaded.vocab.kind == "bpe" and len(loaded.vocab) == 300
    # evaluate finds the variant the model was trained on from the prepared dataset's folder
    assert evaluate(loaded, data_dir=dataset_dir).chars == len((dataset_dir / "output_val.txt").read_text())

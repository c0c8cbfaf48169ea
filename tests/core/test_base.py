"""Building on a saved model (core.base, `--init-from`): weights, a grown vocabulary, a base's BPE, bad input."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import replace

import numpy as np
import optuna
import pytest
import torch

from core import checkpoint as ckpt
from core.base import load_base, unseen_note, unseen_share
from core.bpe import TOKENIZER_JSON
from core.config import ConfigError, TrainConfig
from core.data import DataError, Dataset, prepare
from core.evaluate import evaluate
from core.runs import run_configs
from core.sampling import SamplingConfig, complete
from core.trainer import train
from core.tune.config import TournamentConfig
from core.tune.record import begin_tournament
from core.tune.results import best_params
from core.tune.rungs import run_tournament
from core.tune.space import SearchSpace
from core.variants import TOKENIZED_DIR
from tests.conftest import VERSE

RUSSIAN = "Жили-были дед да баба в 1812 году, и была у них курочка Ряба. Снесла курочка яичко, не простое.\n"


@pytest.fixture
def base_dir(tmp_path, dataset_dir, tiny_model_config, tiny_train_config):
    """A tiny model trained on the verse: the base."""
    out = tmp_path / "models" / "verse"
    config = dataclasses.replace(tiny_train_config, max_iters=150, lr=5e-3)
    train(tiny_model_config, config, out_dir=out)
    return out


def fine_tune(base_dir, data_dir, tmp_path, name="tuned", **flags):
    model_config, train_config = run_configs(
        flags={"init_from": str(base_dir), "data_dir": str(data_dir), "device": "cpu", "sample_chars": 0,
               "eval_iters": 4, "batch_size": 8, **flags},
        models_dir=tmp_path / "models",
    )  # fmt: skip
    out = tmp_path / "models" / name
    return train(model_config, train_config, out_dir=out), out


def test_a_run_from_a_base_starts_at_the_base_s_loss_not_at_chance(tmp_path, base_dir, dataset_dir):
    base_loss = json.loads((base_dir / "config.json").read_text())["summary"]["val_loss"]
    result, out = fine_tune(base_dir, dataset_dir, tmp_path, max_iters=1, lr=1e-9, muon_lr=1e-9, eval_interval=1)
    chance = math.log(len(Dataset(dataset_dir).vocab))
    assert base_loss < chance - 1
    assert result.whole_val_loss == pytest.approx(base_loss, abs=0.02)  # one step at a vanishing rate
    saved = json.loads((out / "config.json").read_text())
    assert saved["base"]["name"] == "verse" and saved["base"]["val_loss"] == pytest.approx(base_loss)
    assert saved["model"] == {**json.loads((base_dir / "config.json").read_text())["model"]}
    assert "verse" in (out / "README.md").read_text()


def test_new_characters_get_rows_and_are_written_after_training(tmp_path, base_dir):
    text = tmp_path / "russian.txt"
    text.write_text((VERSE + RUSSIAN * 3) * 30, encoding="utf-8")
    data_dir = tmp_path / "russian"
    prepare([text], data_dir)
    result, out = fine_tune(base_dir, data_dir, tmp_path, max_iters=200, lr=3e-3, eval_interval=100)
    base_vocab = load_base(base_dir).vocab.chars
    loaded = ckpt.load_model(out)
    new = set(RUSSIAN) - set(base_vocab)
    assert loaded.vocab.chars[: len(base_vocab)] == base_vocab and set(loaded.vocab.chars) == set(base_vocab) | new
    assert len(list((data_dir / TOKENIZED_DIR).iterdir())) == 1  # digits sort before the base's ':'
    torch.manual_seed(0)
    written = complete(loaded.model, loaded.vocab, "Жили", SamplingConfig(max_new_tokens=300, temperature=0.8))
    assert {c for c in written if c in new}, written  # the new letters are written, not only read
    assert evaluate(loaded, data_dir=data_dir).nats_per_char < math.log(len(loaded.vocab)) - 1


def test_a_bpe_base_reads_new_text_with_its_own_tokenizer(tmp_path, corpus_file, tiny_model_config):
    bpe_dir = tmp_path / "bpe"
    prepare([corpus_file], bpe_dir, tokenizer="bpe", vocab_size=300)
    base = tmp_path / "models" / "bpe-base"
    train(tiny_model_config, TrainConfig(data_dir=str(bpe_dir), max_iters=20, eval_interval=20, eval_iters=2,
                                         batch_size=4, sample_chars=0, device="cpu"), out_dir=base)  # fmt: skip
    other = tmp_path / "other.txt"
    other.write_text(VERSE.upper() * 30, encoding="utf-8")
    char_dir = tmp_path / "other-char"
    prepare([other], char_dir)
    with pytest.raises(
        DataError, match="prepared with characters, but bpe-base reads a BPE.*--tokenizer-from bpe-base"
    ):
        fine_tune(base, char_dir, tmp_path)
    from_base = tmp_path / "other-from-base"
    prepare([other], from_base, tokenizer_from=load_base(base).vocab)
    assert (from_base / TOKENIZER_JSON).read_text() == (base / TOKENIZER_JSON).read_text()  # none was trained
    retrained = tmp_path / "other-bpe"
    prepare([other], retrained, tokenizer="bpe", vocab_size=280)
    for data_dir in (from_base, retrained):  # a BPE dataset of another tokenizer is encoded with the base's
        result, out = fine_tune(base, data_dir, tmp_path, name=data_dir.name, max_iters=10, eval_interval=10)
        assert (out / TOKENIZER_JSON).read_text() == (base / TOKENIZER_JSON).read_text()
    assert (retrained / TOKENIZED_DIR).is_dir() and not (from_base / TOKENIZED_DIR).exists()


def test_bad_bases_and_conflicting_flags_are_refused(tmp_path, base_dir, dataset_dir, corpus_file):
    models = tmp_path / "models"
    cases = [
        ({"init_from": "nope"}, ckpt.ModelError, "cannot start from nope: no model named 'nope'"),
        ({"init_from": "verse", "n_layer": 4}, ConfigError, "--n-layer 4 would change the model verse gives"),
    ]
    for flags, error, message in cases:
        with pytest.raises(error, match=message):
            run_configs(flags={"data_dir": str(dataset_dir), **flags}, models_dir=models)
    with pytest.raises(ConfigError, match="--recipe classic would change the recipe of verse"):
        run_configs(recipe="classic", flags={"init_from": "verse", "data_dir": str(dataset_dir)}, models_dir=models)
    assert run_configs(flags={"init_from": "verse", "dropout": 0.1, "data_dir": str(dataset_dir)},
                       models_dir=models)[0].dropout == 0.1  # fmt: skip
    bpe_dir = tmp_path / "bpe"
    prepare([corpus_file], bpe_dir, tokenizer="bpe", vocab_size=300)
    with pytest.raises(DataError, match="prepared with a BPE, but verse reads characters"):
        run_configs(flags={"init_from": "verse", "data_dir": str(bpe_dir)}, models_dir=models)

    damaged = models / "damaged"
    damaged.mkdir()
    for name in ("config.json", "vocab.txt"):
        (damaged / name).write_bytes((base_dir / name).read_bytes())
    (damaged / "model.safetensors").write_bytes((base_dir / "model.safetensors").read_bytes()[:100])
    newer = models / "newer"
    newer.mkdir()
    for name in ("vocab.txt", "model.safetensors"):
        (newer / name).write_bytes((base_dir / name).read_bytes())
    config = json.loads((base_dir / "config.json").read_text())
    config["model"]["rope_scaling"] = 2.0  # a field a later version added
    (newer / "config.json").write_text(json.dumps(config))
    for name, message in (("damaged", "truncated or corrupt"), ("newer", "unknown ModelConfig field")):
        with pytest.raises(ckpt.ModelError, match=f"cannot start from {name}: .*{message}"):
            run_configs(flags={"init_from": name, "data_dir": str(dataset_dir)}, models_dir=models)


def test_resume_continues_a_run_only_from_its_own_base(tmp_path, base_dir, dataset_dir, tiny_model_config,
                                                       tiny_train_config):  # fmt: skip
    scratch = tmp_path / "models" / "scratch"
    train(tiny_model_config, dataclasses.replace(tiny_train_config, max_iters=20), out_dir=scratch)
    with pytest.raises(ConfigError, match="models/scratch was trained from scratch, so --resume continues it"):
        run_configs(scratch, flags={"init_from": "verse"}, resume=True, models_dir=tmp_path / "models")
    _, out = fine_tune(base_dir, dataset_dir, tmp_path, max_iters=20, eval_interval=10)
    model_config, train_config = run_configs(out, flags={"init_from": "verse", "max_iters": 30}, resume=True,
                                             models_dir=tmp_path / "models")  # fmt: skip
    result = train(model_config, train_config, out_dir=out, resume=True)
    assert result.iters == 30 and train_config.init_from == str(base_dir)
    base_dir.rename(tmp_path / "elsewhere")  # the base gone: the run's own folder holds what a resume needs
    model_config, train_config = run_configs(out, flags={"max_iters": 40}, resume=True, models_dir=tmp_path / "models")
    assert train(model_config, train_config, out_dir=out, resume=True).iters == 40
    assert json.loads((out / "config.json").read_text())["base"]["name"] == "verse"


def test_a_tournament_from_a_base_searches_its_fine_tuning_not_its_shape(tmp_path, base_dir, dataset_dir):
    config = TournamentConfig(study="ft", storage=f"sqlite:///{tmp_path / 's.db'}", budget=30, data_dir=str(dataset_dir),
                              runs_dir=str(tmp_path / "runs"), search_rungs=1, final_share=0.5,
                              overrides={"init_from": "verse", "batch_size": 4})  # fmt: skip
    with pytest.raises(ConfigError, match="--n-layer 3 would change the model verse gives"):
        begin_tournament(
            replace(config, overrides={"init_from": "verse", "n_layer": 3}), None, "x", tmp_path / "models"
        )
    begun = begin_tournament(config, None, "ft-best", tmp_path / "models")
    base = load_base(base_dir)
    assert begun.space.lr == SearchSpace.for_fine_tune().lr and begun.space.lr.high < SearchSpace.for_budget().lr.high
    final = run_tournament(begun.config, begun.space, name="ft-best", models_dir=tmp_path / "models")
    saved = json.loads((final / "config.json").read_text())
    assert saved["base"]["name"] == "verse" and saved["model"]["n_layer"] == base.model_config.n_layer
    study = optuna.load_study(study_name="ft", storage=config.storage)
    for trial in study.get_trials(deepcopy=False):
        params = trial.user_attrs["params"]
        assert (params["n_layer"], params["n_embd"], params["block_size"]) == (2, 32, 32)  # the base's shape
        assert params["init_from"] == str(base_dir) and params["batch_size"] == 4  # the user's fixed field too
    best = best_params(study)  # train --from-study ft: its winner's params start from the base too
    _, train_config = run_configs(flags={"data_dir": str(dataset_dir)}, tuned=best, models_dir=tmp_path / "models")
    assert train_config.init_from == str(base_dir)
    with pytest.raises(ConfigError, match="models/verse is the model the run starts from"):
        run_configs(base_dir, flags={"data_dir": str(dataset_dir)}, tuned=best, models_dir=tmp_path / "models")


def test_a_text_mostly_new_to_its_base_is_said_to_be():
    assert unseen_share(np.array([0, 1, 2, 80, 81], dtype=np.uint8), 80) == pytest.approx(0.4)
    assert "40% of this text is in characters verse has never seen" in unseen_note(0.4, "verse")
    assert unseen_note(0.1, "verse") == "" and unseen_share(np.zeros(0, dtype=np.uint8), 80) == 0.0

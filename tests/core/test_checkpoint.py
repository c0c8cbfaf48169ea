from __future__ import annotations

import json
import shutil

import pytest
import torch

from core import checkpoint as ckpt
from core.checkpoint import ModelError, load_model
from core.trainer import train


@pytest.fixture
def saved_model(tmp_path, tiny_model_config, tiny_train_config):
    import dataclasses

    config = dataclasses.replace(tiny_train_config, max_iters=20, eval_interval=10)
    models = tmp_path / "models"
    train(tiny_model_config, config, out_dir=models / "tiny")
    return models


def test_save_load_gives_identical_logits(saved_model):
    loaded = load_model("tiny", saved_model)
    again = load_model(saved_model / "tiny")
    idx = torch.randint(0, len(loaded.vocab), (2, 16))
    assert torch.equal(loaded.model(idx)[0], again.model(idx)[0])
    weights = ckpt._load_tensors(saved_model / "tiny" / ckpt.WEIGHTS)
    assert not any(k.startswith("_orig_mod.") for k in weights) and ckpt.TIED_KEY not in weights
    info = json.loads((saved_model / "tiny" / "config.json").read_text())
    assert info["summary"]["iters"] == 20 and info["model"]["vocab_size"] == len(loaded.vocab)


def test_an_untied_head_is_saved_and_loaded_with_the_model(tmp_path, tiny_model_config, tiny_train_config):
    import dataclasses

    untied = dataclasses.replace(tiny_model_config, tie_head=False)
    result = train(untied, dataclasses.replace(tiny_train_config, max_iters=10), out_dir=tmp_path / "m")
    assert ckpt.TIED_KEY in ckpt._load_tensors(tmp_path / "m" / ckpt.WEIGHTS)  # it used to be dropped as if tied
    loaded, again = load_model(tmp_path / "m"), load_model(tmp_path / "m")
    idx = torch.randint(0, len(loaded.vocab), (2, 16))
    assert torch.equal(loaded.model(idx)[0], again.model(idx)[0])
    assert result.val_loss < 5


def test_newest_model_is_the_default(saved_model):
    shutil.copytree(saved_model / "tiny", saved_model / "newer")
    (saved_model / "newer" / ckpt.WEIGHTS).touch()
    assert load_model(None, saved_model).name == "newer"


def test_truncated_weights_are_reported(saved_model):
    path = saved_model / "tiny" / ckpt.WEIGHTS
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ModelError, match="truncated or corrupt"):
        load_model("tiny", saved_model)


def test_config_that_does_not_match_the_weights(saved_model):
    path = saved_model / "tiny" / "config.json"
    info = json.loads(path.read_text())
    info["model"]["n_embd"] = 64
    path.write_text(json.dumps(info))
    with pytest.raises(ModelError, match="does not match its config.json"):
        load_model("tiny", saved_model)


def test_vocab_that_does_not_match(saved_model):
    (saved_model / "tiny" / "vocab.txt").write_text("a\nb\n")
    with pytest.raises(ModelError, match="different models"):
        load_model("tiny", saved_model)


@pytest.mark.parametrize("missing", ["config.json", "vocab.txt", "model.safetensors"])
def test_missing_files(saved_model, missing):
    (saved_model / "tiny" / missing).unlink()
    with pytest.raises(ModelError, match="not found|no model named"):
        load_model("tiny", saved_model)


def test_pickle_files_are_refused(tmp_path):
    folder = tmp_path / "models" / "old"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.pth").write_bytes(b"\x80\x04not really")
    with pytest.raises(ModelError, match="pickle"):
        load_model("old", tmp_path / "models")


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc", "a/b", "", "..", ".hidden"])
def test_model_names_cannot_escape_the_models_folder(tmp_path, name):
    with pytest.raises(ModelError):
        ckpt.model_dir(name, tmp_path)


def test_unknown_model_lists_the_known_ones(saved_model):
    with pytest.raises(ModelError, match="saved models: tiny"):
        load_model("nope", saved_model)


def test_damaged_checkpoint_is_skipped_for_the_previous_one(saved_model):
    folders = sorted((saved_model / "tiny" / "checkpoint").glob("step-*"))
    assert [f.name for f in folders] == ["step-00000010", "step-00000020"]
    (folders[-1] / "optimizer.safetensors").write_bytes(b"garbage")
    assert ckpt.latest_checkpoint(saved_model / "tiny").step == 10
    (folders[0] / "state.json").unlink()
    assert ckpt.latest_checkpoint(saved_model / "tiny") is None


def test_compiled_training_matches_eager_and_saves_plain_keys(tmp_path, tiny_model_config, tiny_train_config):
    import dataclasses

    config = dataclasses.replace(tiny_train_config, max_iters=10, eval_interval=10, dtype="float32")
    eager = train(tiny_model_config, config)
    compiled = train(tiny_model_config, dataclasses.replace(config, compile="on"), out_dir=tmp_path / "c")
    assert compiled.val_loss == pytest.approx(eager.val_loss, abs=1e-3)
    weights = ckpt._load_tensors(tmp_path / "c" / ckpt.WEIGHTS)
    assert weights and not any(k.startswith("_orig_mod.") for k in weights)
    assert load_model(tmp_path / "c").model.config.n_layer == tiny_model_config.n_layer

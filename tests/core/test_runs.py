"""Setting up a run (core.runs): configs layered in one order, a model folder claimed or refused by name."""

from __future__ import annotations

import pytest

from core.runs import ModelTaken, claim_model_dir, free_name, record_source, run_configs


def test_the_user_s_fields_win_over_a_study_s_which_win_over_the_recipe():
    tuned = {"params": {"lr": 0.004, "n_layer": 3}, "study": "s", "trial": 2, "val_loss": 1.5}
    model_config, train_config = run_configs(recipe="classic", flags={"n_layer": 5}, tuned=tuned)
    assert model_config.n_layer == 5 and train_config.lr == 0.004  # flag over study, study over recipe
    assert model_config.pos_encoding == "learned"  # the classic recipe's, untouched by either


def test_a_taken_model_folder_is_refused_with_a_free_name_and_cleared_only_to_overwrite(tmp_path):
    folder = tmp_path / "models" / "best"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"x")
    (tmp_path / "models" / "best-2").mkdir()
    (tmp_path / "models" / "best-2" / "config.json").write_text("{}")
    with pytest.raises(ModelTaken) as taken:
        claim_model_dir(folder, resume=False, overwrite=False)
    assert taken.value.free == "best-3" == free_name(folder)  # best-2 is taken too
    assert str(tmp_path) not in str(taken.value) and "models/best already holds a model" in str(taken.value)
    claim_model_dir(folder, resume=True, overwrite=False)  # resuming keeps it
    assert (folder / "model.safetensors").exists()
    claim_model_dir(folder, resume=False, overwrite=True)
    assert not folder.exists()


def test_a_study_s_record_is_kept_beside_the_model_and_summarised_for_its_config(tmp_path):
    record = {"params": {"lr": 0.01}, "study": "s", "trial": 4, "val_loss": 1.2}
    info = record_source(tmp_path / "m", record)
    assert info == {"source": {"study": "s", "trial": 4, "val_loss": 1.2}}
    assert (tmp_path / "m" / "best_params.json").is_file()
    assert record_source(tmp_path / "n", None) is None and not (tmp_path / "n").exists()

"""Defects a hostile probe found: each test fails without its fix."""

from __future__ import annotations

import pytest
from safetensors import SafetensorError

from core import checkpoint as ckpt
from core import fileio
from core.data import prepare
from core.sampling import SamplingConfig
from core.trainer import train
from core.tuning import TuningError, check_study_name


@pytest.mark.parametrize("name", ["nl\n", "ok\n\n", "a\nb", ".", ".."])
def test_names_with_a_newline_are_refused(name):
    with pytest.raises(ckpt.ModelError):
        ckpt.check_name(name)
    if name not in (".", ".."):
        with pytest.raises(TuningError):
            check_study_name(name)


@pytest.mark.parametrize("seed", [2**63, 2**80, -2])
def test_a_seed_out_of_range_gets_a_clear_error(seed):
    with pytest.raises(ValueError, match="seed must be -1"):
        SamplingConfig(seed=seed).validate()


def test_a_full_disk_gives_a_clear_error_and_keeps_the_checkpoint(
    tmp_path, monkeypatch, tiny_model_config, tiny_train_config
):
    out = tmp_path / "m"
    train(tiny_model_config, tiny_train_config, out_dir=out)
    real_save = ckpt.save_file

    def full_disk(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, message: No space left on device })")

    monkeypatch.setattr(ckpt, "save_file", full_disk)
    longer = tiny_train_config.__class__(**{**tiny_train_config.__dict__, "max_iters": 80})
    with pytest.raises(ckpt.ModelError, match="No space left on device.*checkpoint of step 60 is intact"):
        train(tiny_model_config, longer, out_dir=out, resume=True)
    monkeypatch.setattr(ckpt, "save_file", real_save)
    assert ckpt.latest_checkpoint(out).step == 60


def test_a_killed_prepare_leaves_no_temp_files_after_the_next_one(tmp_path, corpus_file):
    data_dir = tmp_path / "dataset"
    prepare([corpus_file], data_dir)
    leftover = data_dir / ".output_train.txt.abc123.tmp"  # as atomic_path names them
    leftover.write_bytes(b"x" * 1000)
    assert list(data_dir.glob(fileio.TEMP_GLOB))
    prepare([corpus_file], data_dir)
    assert not list(data_dir.glob(fileio.TEMP_GLOB))

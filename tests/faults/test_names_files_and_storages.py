"""Names, seeds, killed prepares, odd files and storages: each gets its clear error (every test here failed\nbefore its fix)."""

from __future__ import annotations

import re

import pytest

from core import checkpoint as ckpt
from core import fileio
from core.data import prepare
from core.sampling import SamplingConfig
from core.tune.config import TuningError, check_study_name


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


def test_a_killed_prepare_leaves_no_temp_files_after_the_next_one(tmp_path, corpus_file):
    data_dir = tmp_path / "dataset"
    prepare([corpus_file], data_dir)
    leftover = data_dir / ".output_train.txt.abc123.tmp"  # as atomic_path names them
    leftover.write_bytes(b"x" * 1000)
    assert list(data_dir.glob(fileio.TEMP_GLOB))
    prepare([corpus_file], data_dir)
    assert not list(data_dir.glob(fileio.TEMP_GLOB))


def test_prepare_says_what_a_device_a_fifo_or_a_broken_link_is(tmp_path):
    import os

    from core.data import DataError

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (tmp_path / "zero").symlink_to("/dev/zero")
    (tmp_path / "gone").symlink_to(tmp_path / "missing.txt")
    for path, message in (("/dev/zero", "is a character device"), (fifo, "is a FIFO"),
                          (tmp_path / "zero", "character device (through a symlink)"),
                          (tmp_path / "gone", "is a broken symlink"), (tmp_path / "nothing", "does not exist")):  # fmt: skip
        with pytest.raises(DataError, match=re.escape(message)):
            prepare([path], tmp_path / "out")


def test_storage_errors_say_what_is_wrong(tmp_path, monkeypatch):
    import os

    from core.tune import storage
    from core.tune.storage import make_storage

    with pytest.raises(TuningError, match="must outlive"):
        make_storage("sqlite:///:memory:")
    database = tmp_path / "ro.db"
    make_storage(f"sqlite:///{database}", heartbeat=0)
    real_access = os.access
    # root may write any file, so a read-only file is simulated the way a normal user meets it
    monkeypatch.setattr(storage.os, "access", lambda path, mode: False if path == database else real_access(path, mode))
    with pytest.raises(TuningError, match="is read-only"):
        make_storage(f"sqlite:///{database}")
    make_storage(f"sqlite:///{database}", heartbeat=0, writes=False)  # reading it is fine
    monkeypatch.undo()
    with pytest.raises(TuningError, match=r"not installed \((?!None).*pip install"):
        make_storage("mysql+pymysql://u:p@127.0.0.1:1/db")

"""Faults that must lose nothing, and hostile input that must get a clear error (core and CLI)."""

from __future__ import annotations

import dataclasses
import errno
import os
import random
import re
import signal
import subprocess
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import SafetensorError

from core import checkpoint as ckpt
from core.data import Dataset, prepare
from core.trainer import train
from core.vocab import Vocab
from tests.helpers import APP, APP_ENV, ROOT, TINY_MODEL_FLAGS


def test_kill_9_at_random_moments_then_resume_finishes(tmp_path, dataset_dir):
    """Checkpoint every step, so kills often land mid-write; every resume must start from a whole checkpoint."""
    base = [
        *APP,
        "train",
        "--name",
        "k",
        "--data-dir",
        str(dataset_dir),
        *TINY_MODEL_FLAGS,
        "--max-iters",
        "400",
        "--eval-interval",
        "50",
        "--eval-iters",
        "1",
        "--sample-chars",
        "0",
        "--checkpoint-interval",
        "1",
        "--device",
        "cpu",
    ]
    rng = random.Random(0)
    folder = tmp_path / "models" / "k"
    for attempt in range(4):
        command = base + (["--resume"] if attempt else [])
        proc = subprocess.Popen(
            command, cwd=tmp_path, env=APP_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.time() + 60
        while not ckpt._checkpoint_dirs(folder) and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.2, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = ckpt.latest_checkpoint(folder)
        assert state is not None, "no valid checkpoint survived the kill"
        # files are written whole or not at all (a temp file may be left beside them, cleared on resume)
        assert (folder / "vocab.txt").read_text(encoding="utf-8").endswith("\n")
        metrics = (folder / "metrics.jsonl").read_text(encoding="utf-8")
        assert metrics == "" or metrics.endswith("\n")
    finished = subprocess.run(
        base + ["--resume"], cwd=tmp_path, env=APP_ENV, capture_output=True, text=True, timeout=300
    )
    assert finished.returncode == 0, finished.stderr
    assert re.search(r"iters=400 ", finished.stdout)
    ckpt.load_model(folder)  # the saved model is whole
    leftovers = [p.name for p in folder.rglob(".*") if p.name.endswith(".tmp") or p.name.startswith(".tmp-")]
    assert not leftovers, f"what killed writes left behind was not cleared on resume: {leftovers}"


# A full disk as the OS reports it, and as safetensors does (its own error type, no OSError).
FULL_DISK = [
    lambda: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
    lambda: SafetensorError("Error while serializing: IoError(Os { code: 28, message: No space left on device })"),
]


@pytest.mark.parametrize("full_disk", FULL_DISK, ids=["oserror", "safetensors"])
def test_disk_full_while_saving_keeps_the_previous_checkpoint(
    tmp_path, tiny_model_config, tiny_train_config, monkeypatch, full_disk
):
    config = dataclasses.replace(tiny_train_config, checkpoint_interval=10, max_iters=30)
    real_save = ckpt.save_file
    calls = {"n": 0}

    def save_until_full(tensors, filename, metadata=None):
        if "checkpoint" in str(filename):
            calls["n"] += 1
            if calls["n"] > 4:  # the second checkpoint (4 files each) hits a full disk
                raise full_disk()
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(ckpt, "save_file", save_until_full)
    with pytest.raises(ckpt.ModelError, match="No space left on device.*step 10 is intact"):
        train(tiny_model_config, config, out_dir=tmp_path / "m")
    monkeypatch.setattr(ckpt, "save_file", real_save)
    assert ckpt.latest_checkpoint(tmp_path / "m").step == 10
    assert not list((tmp_path / "m" / "checkpoint").glob(".tmp-*"))


def test_no_unsafe_unpickling_anywhere_in_the_source():
    offenders = []
    sources = [path for folder in ("core", "cli", "workbench") for path in (ROOT / folder).rglob("*.py")]
    for path in [*sources, ROOT / "app.py"]:
        text = path.read_text(encoding="utf-8")
        if re.search(r"^\s*import pickle|pickle\.loads?\(", text, re.M):
            offenders.append(f"{path}: pickle")
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            if "weights_only=True" not in call:
                offenders.append(f"{path}: {call}")
    assert not offenders


def test_more_than_65535_distinct_characters(tmp_path):
    chars = [chr(c) for c in range(0x4E00, 0x30000) if chr(c).isprintable()][:66_000]
    assert len(chars) == 66_000
    path = tmp_path / "wide.txt"
    path.write_text("".join(chars) * 2, encoding="utf-8")
    stats = prepare([path], tmp_path / "ds")
    assert stats.vocab_size == len(chars) + 1  # and the newline that ends the file
    data = Dataset(tmp_path / "ds")
    assert data.tokens["train"].dtype.itemsize == 4
    val_text = (tmp_path / "ds" / "output_val.txt").read_text(encoding="utf-8")
    assert data.vocab.decode(data.tokens["val"].tolist()) == val_text


def test_one_huge_line_and_mixed_line_endings(tmp_path):
    path = tmp_path / "line.txt"
    path.write_bytes(b"word " * 2_000_000 + b"\r\nnext\rline\n")
    stats = prepare([path], tmp_path / "ds")
    assert stats.lines == 3 and "\r" not in Vocab.load(tmp_path / "ds" / "vocab.txt").chars


text_strategy = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r"), min_size=2, max_size=300
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=text_strategy)
def test_prepare_round_trips_arbitrary_unicode(tmp_path, text):
    if not text.strip():
        return  # whitespace-only input is refused, tested elsewhere
    path = tmp_path / "fuzz.txt"
    path.write_bytes(text.encode("utf-8"))
    prepare([path], tmp_path / "fuzz_ds")
    expected = text if text.endswith("\n") else text + "\n"
    data = Dataset(tmp_path / "fuzz_ds")
    joined = data.vocab.decode(data.tokens["train"].tolist()) + data.vocab.decode(data.tokens["val"].tolist())
    assert joined == expected.removeprefix("\ufeff")
    assert Vocab.load(tmp_path / "fuzz_ds" / "vocab.txt") == data.vocab


@settings(max_examples=100, deadline=None)
@given(chars=st.lists(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=50, unique=True))
def test_vocab_file_round_trips_any_characters(tmp_path_factory, chars):
    path = tmp_path_factory.mktemp("v") / "vocab.txt"
    Vocab(chars).save(path)
    assert Vocab.load(path).chars == chars

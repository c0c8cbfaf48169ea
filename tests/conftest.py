"""Shared fixtures: a tiny corpus, a prepared dataset and tiny configs; everything on CPU in seconds."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# what runs remember per machine (compile verdicts) goes to a cache of the tests' own, this process's and its
# subprocesses' (tests.helpers copies the environment)
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="chargpt-tests-cache-")

from core.config import ModelConfig, TrainConfig  # noqa: E402
from core.data import prepare  # noqa: E402

VERSE = (
    "To be, or not to be, that is the question:\n"
    "Whether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\n"
    "Or to take arms against a sea of troubles\n"
    "And by opposing end them. To die: to sleep;\n"
    "No more; and by a sleep to say we end\n"
    "The heart-ache and the thousand natural shocks\n"
    "That flesh is heir to, 'tis a consummation\n"
    "Devoutly to be wish'd.\n\n"
)


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(VERSE * 40, encoding="utf-8")
    return path


@pytest.fixture
def dataset_dir(tmp_path: Path, corpus_file: Path) -> Path:
    data_dir = tmp_path / "dataset"
    prepare([corpus_file], data_dir)
    return data_dir


@pytest.fixture
def tiny_model_config() -> ModelConfig:
    return ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, dropout=0.0)


@pytest.fixture
def tiny_train_config(dataset_dir: Path) -> TrainConfig:
    return TrainConfig(
        data_dir=str(dataset_dir),
        batch_size=8,
        max_iters=60,
        eval_interval=20,
        eval_iters=4,
        warmup_iters=5,
        lr=3e-3,
        sample_chars=0,
        device="cpu",
    )

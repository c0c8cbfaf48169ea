"""Loss per character (core.evaluate, `python app.py evaluate`): every token predicted once, counted right."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from core import checkpoint as ckpt
from core.data import DataError
from core.evaluate import evaluate, sliding_nll, split_loss
from tests.helpers import run_app

FIXTURE = Path(__file__).parents[1] / "fixtures" / "classic_tiny"


@pytest.fixture
def loaded(tmp_path) -> ckpt.LoadedModel:
    shutil.copytree(FIXTURE, tmp_path / "models" / "tiny")
    return ckpt.load_model("tiny", tmp_path / "models")


def brute_force(model, ids: list[int]) -> float:
    """Each token scored from the longest context that fits, one forward pass each."""
    block, total = model.config.block_size, 0.0
    with torch.no_grad():
        for t in range(1, len(ids)):
            context = torch.tensor([ids[max(0, t - block) : t]])
            logits, _ = model(context)
            total += F.cross_entropy(logits[0, -1:], torch.tensor([ids[t]])).item()
    return total


def test_every_token_is_predicted_once_and_stride_one_gives_each_its_longest_context(loaded):
    model, text = loaded.model, "To be, or not to be, that is the question:\nWhether 'tis nobler"
    ids = loaded.vocab.encode(text)
    nats, predicted = sliding_nll(model, ids, stride=1)
    assert predicted == len(ids) - 1
    assert nats == pytest.approx(brute_force(model, ids), rel=1e-4)
    for stride in (3, model.config.block_size // 2, model.config.block_size):
        assert sliding_nll(model, ids, stride=stride)[1] == len(ids) - 1


def test_a_context_wide_stride_equals_the_whole_split_loss_of_consecutive_windows(loaded):
    block = loaded.model.config.block_size
    ids = loaded.vocab.encode(("To be, or not to be, that is the question:\n" * 20)[: 10 * block + 1])
    import numpy as np

    nats, predicted = sliding_nll(loaded.model, np.array(ids), stride=block)
    assert nats / predicted == pytest.approx(split_loss(loaded.model, np.array(ids)), rel=1e-5)


def test_a_text_counts_its_characters_and_unknown_characters_are_named(loaded):
    result = evaluate(loaded, text="To be, or not to be")
    assert result.chars == 19 and result.predicted_chars == 18
    assert result.bits_per_char == pytest.approx(result.nats_per_char / math.log(2))
    with pytest.raises(DataError, match="never seen"):
        evaluate(loaded, text="To be \u2603")
    with pytest.raises(DataError, match="too short"):
        evaluate(loaded, text="T")


def test_the_command_prints_a_parsable_last_line(tmp_path, loaded):
    text = "To be, or not to be, that is the question:\n" * 5
    (tmp_path / "other.txt").write_text(text, encoding="utf-8")
    result = run_app("evaluate", "--model", "tiny", "--text", "other.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"evaluate nats_per_char=([\d.]+) bits_per_char=([\d.]+) chars=(\d+)", last)
    assert match and int(match[3]) == len(text)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    bad = run_app("evaluate", "--model", "tiny", "--text", "latin1.txt", cwd=tmp_path)
    assert bad.returncode == 2 and "not UTF-8" in bad.stderr

"""Faults and odd input the other test files do not cover: out-of-memory mid-run, a vocabulary that lacks a
character of the data, and chat messages no one should send (each gets its clear answer, never a crash)."""

from __future__ import annotations

import pytest
import torch

from cli.main import main
from core import checkpoint as ckpt
from core.chat import MAX_MESSAGE_CHARS, ChatSession
from core.data import DataError, Dataset, prepare
from core.model import GPT
from core.sampling import SamplingConfig
from core.trainer import train
from core.tune.study import run_study
from tests.core.tune.test_study import TINY_SPACE, tune_config
from tests.helpers import TINY_MODEL_FLAGS


def fail_forward_after(monkeypatch, calls: int) -> None:
    """Make the model's forward pass raise CUDA's out-of-memory error from its `calls`-th call on."""
    real_forward = GPT.forward
    count = {"n": 0}

    def forward(self, *args, **kwargs):
        count["n"] += 1
        if count["n"] >= calls:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(GPT, "forward", forward)


def test_out_of_memory_in_a_trial_prunes_it_and_the_study_goes_on(tmp_path, dataset_dir, monkeypatch):
    import core.tune.study

    calls = {"n": 0}

    def train_that_runs_out_of_memory_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return train(*args, **kwargs)

    monkeypatch.setattr(core.tune.study, "train", train_that_runs_out_of_memory_once)
    study = run_study(tune_config(tmp_path, dataset_dir, trials=3, pruner="none"), TINY_SPACE)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "PRUNED", "COMPLETE"]
    assert study.trials[1].user_attrs["reason"] == "out of memory"


def test_out_of_memory_in_cli_training_is_a_clear_error_and_the_checkpoint_stays(
    tmp_path, dataset_dir, monkeypatch, capsys
):
    models = tmp_path / "models"
    flags = ["--data-dir", str(dataset_dir), "--models-dir", str(models), *TINY_MODEL_FLAGS]
    flags += ["--eval-interval", "10", "--eval-iters", "2", "--device", "cpu"]
    assert main(["train", "--name", "m", "--max-iters", "20", *flags]) == 0
    saved = ckpt.latest_checkpoint(models / "m")
    assert saved is not None and saved.step == 20

    fail_forward_after(monkeypatch, calls=3)
    capsys.readouterr()
    assert main(["train", "--name", "m", "--max-iters", "40", "--resume", *flags]) == 3
    assert "out of memory; lower --batch-size" in capsys.readouterr().err
    assert ckpt.latest_checkpoint(models / "m").step == 20  # nothing half-written replaced it


def test_a_vocab_missing_a_character_of_the_data_names_it(tmp_path, corpus_file):
    data_dir = tmp_path / "dataset"
    prepare([corpus_file], data_dir)
    vocab = (data_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    (data_dir / "vocab.txt").write_text("\n".join(c for c in vocab if c != "q") + "\n", encoding="utf-8")
    for stale in data_dir.glob("*.bin"):
        stale.unlink()
    with pytest.raises(DataError, match=r"vocab.txt lacks 1 character\(s\) found in output_train.txt: 'q'"):
        Dataset(data_dir)


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    from tests.conftest import VERSE

    root = tmp_path_factory.mktemp("chat")
    (root / "corpus.txt").write_text(VERSE * 20, encoding="utf-8")
    prepare([root / "corpus.txt"], root / "dataset")
    from core.config import ModelConfig, TrainConfig

    train(
        ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, dropout=0.0),
        TrainConfig(data_dir=str(root / "dataset"), batch_size=4, max_iters=10, eval_interval=10, eval_iters=1),
        out_dir=root / "models" / "m",
    )
    return ckpt.load_model(root / "models" / "m", root / "models")


@pytest.mark.parametrize(
    "message, notice",
    [
        ("", None),
        ("\x00\x07\x1b[31m evil \x7f", "characters not in this model's vocabulary were dropped"),
        ("日本語 and emoji 🙂", "characters not in this model's vocabulary were dropped"),
        ("to be " * (MAX_MESSAGE_CHARS // 3), None),
        ("\n\n\n", None),
    ],
    ids=["empty", "control characters", "outside the vocab", "200k characters", "only newlines"],
)
def test_odd_chat_messages_get_a_reply_or_a_notice_never_a_crash(chat_model, message, notice):
    session = ChatSession(chat_model, SamplingConfig(max_new_tokens=20, seed=0))
    got = session.unknown_notice(message)
    assert (notice is None and got is None) or (notice and notice in got)
    reply = "".join(session.reply(message))
    assert set(reply) <= set(chat_model.vocab.chars)
    assert len(session.transcript) <= 4 * chat_model.model.config.block_size
    assert "".join(session.reply("To be")) is not None  # the session still works afterwards

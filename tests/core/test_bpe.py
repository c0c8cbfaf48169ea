"""A byte-level BPE beside characters: any text round-trips, losses are per character, models carry it."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from core import checkpoint as ckpt
from core.bpe import TOKENIZER_JSON
from core.chat import ChatSession
from core.data import DataError, Dataset, prepare
from core.evaluate import evaluate
from core.sampling import SamplingConfig
from core.trainer import TrainHooks, train
from tests.conftest import VERSE

MIXED = "Ünïcödé — ça va? 日本語のテキスト, emoji 🎭🚀, tabs\tand a bell\x07 and CR-free lines\n"


@pytest.fixture
def bpe_dir(tmp_path):
    source = tmp_path / "mixed.txt"
    source.write_text((VERSE + MIXED) * 30, encoding="utf-8")
    prepare([source], tmp_path / "bpe", tokenizer="bpe", vocab_size=300)
    return tmp_path / "bpe"


def test_every_character_of_a_multilingual_text_round_trips_and_is_counted(bpe_dir):
    dataset = Dataset(bpe_dir)
    assert dataset.vocab.kind == "bpe" and len(dataset.vocab) == 300
    for split, name in (("train", "output_train.txt"), ("val", "output_val.txt")):
        text = (bpe_dir / name).read_text(encoding="utf-8")
        ids = np.asarray(dataset.tokens[split])
        assert dataset.vocab.decode(ids) == text
        assert dataset.vocab.char_counts(ids).sum() == len(text)
        assert dataset.tokens_per_char[split] == pytest.approx(len(ids) / len(text)) and len(ids) < len(text)
        decode = dataset.vocab.stream_decoder()  # token by token, as chat streams it
        assert "".join(decode(int(i)) for i in ids[:500]) == dataset.vocab.decode(ids[:500]).rstrip("\ufffd")


def test_a_character_dataset_s_loss_per_character_is_its_loss_per_token(dataset_dir):
    assert Dataset(dataset_dir).tokens_per_char == {"train": 1.0, "val": 1.0}


@pytest.mark.parametrize("size, message", [(255, "between 256"), (65_536, "between 256"), (4000, "too few")])
def test_a_bad_vocabulary_size_or_too_little_text_is_refused(tmp_path, corpus_file, size, message):
    with pytest.raises(DataError, match=message):
        prepare([corpus_file], tmp_path / "d", tokenizer="bpe", vocab_size=size)


def test_a_bpe_model_trains_resumes_exactly_saves_loads_evaluates_and_chats(tmp_path, bpe_dir, tiny_model_config,
                                                                            tiny_train_config):  # fmt: skip
    config = dataclasses.replace(tiny_train_config, data_dir=str(bpe_dir), max_iters=40, checkpoint_interval=20)
    whole: list[float] = []
    train(
        tiny_model_config, config, out_dir=tmp_path / "whole", hooks=TrainHooks(on_step=lambda e: whole.append(e.loss))
    )
    half: list[float] = []
    stopped: list[int] = []
    train(tiny_model_config, config, out_dir=tmp_path / "m",
          hooks=TrainHooks(on_step=lambda e: stopped.append(e.step), should_stop=lambda: len(stopped) >= 20))  # fmt: skip
    result = train(tiny_model_config, config, out_dir=tmp_path / "m", resume=True,
                   hooks=TrainHooks(on_step=lambda e: half.append(e.loss)))  # fmt: skip
    assert half == whole[20:]  # exact resume
    assert whole[-1] < whole[0]
    loaded = ckpt.load_model(tmp_path / "m")
    assert loaded.vocab.kind == "bpe" and (tmp_path / "m" / TOKENIZER_JSON).is_file()
    assert json.loads((tmp_path / "m" / "config.json").read_text())["tokenizer"] == "bpe"
    scored = evaluate(loaded, data_dir=bpe_dir)
    val_text = (bpe_dir / "output_val.txt").read_text(encoding="utf-8")
    assert scored.chars == len(val_text) and abs(scored.nats_per_char - result.val_loss) < 0.5
    assert evaluate(loaded, text="any text at all: ☃ ✓").chars == 20  # nothing is unknown to bytes
    session = ChatSession(loaded, SamplingConfig(seed=0, max_new_tokens=30))
    assert session.unknown_notice("☃") is None and isinstance("".join(session.reply("To be ☃")), str)


def test_a_model_whose_tokenizer_is_missing_or_another_is_refused(tmp_path, bpe_dir, tiny_model_config,
                                                                   tiny_train_config):  # fmt: skip
    train(tiny_model_config, dataclasses.replace(tiny_train_config, data_dir=str(bpe_dir), max_iters=2),
          out_dir=tmp_path / "m")  # fmt: skip
    shutil.copytree(tmp_path / "m", tmp_path / "other")
    (tmp_path / "m" / TOKENIZER_JSON).unlink()
    with pytest.raises(ckpt.ModelError, match="tokenizer.json is missing"):
        ckpt.load_model(tmp_path / "m")
    source = tmp_path / "more.txt"
    source.write_text(VERSE * 80, encoding="utf-8")
    prepare([source], tmp_path / "d2", tokenizer="bpe", vocab_size=280)
    shutil.copy(tmp_path / "d2" / TOKENIZER_JSON, tmp_path / "other" / TOKENIZER_JSON)
    with pytest.raises(ckpt.ModelError, match="different models"):
        ckpt.load_model(tmp_path / "other")


def test_a_bpe_model_and_a_character_model_compare_on_characters_seen(tmp_path, bpe_dir, dataset_dir,
                                                                      tiny_model_config, tiny_train_config):  # fmt: skip
    from core.compare import compare

    for name, data in (("chars", dataset_dir), ("bpe", bpe_dir)):
        train(tiny_model_config, dataclasses.replace(tiny_train_config, data_dir=str(data), max_iters=20),
              out_dir=tmp_path / "models" / name)  # fmt: skip
    result = compare(["chars", "bpe"], tmp_path / "models", prompt="To be", chars=30)
    step_chars = {name: points[-1][0] / 20 for name, points in result.curves.items()}  # millions a step
    per_char = Dataset(bpe_dir).tokens_per_char["train"]
    assert step_chars["bpe"] == pytest.approx(step_chars["chars"] / per_char)  # a BPE step reads more text
    assert all(len(text) > 0 for text in result.continuations.values())

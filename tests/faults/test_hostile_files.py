"""Files no one should give, and the answer each gets: archives (encrypted, unknown methods, bombs), lines with
no end, texts that are devices or pipes, model folders whose config lies about their weights, names that are
not UTF-8. ARCHIVES is a table: add a row for each new kind of archive."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from core import checkpoint as ckpt
from core import data as data_module
from core.card import CARD
from core.config import ModelConfig, TrainConfig
from core.data import MAX_LINE_CHARS, DataError, Dataset, line_chunks, prepare
from core.evaluate import evaluate
from core.export import ExportError, export_model
from core.trainer import train
from tests.conftest import VERSE
from tests.helpers import TEXT, TINY_MODEL_FLAGS, run_app, save_verse_model


def _zip(name: str, text: bytes, patch: Callable[[bytearray], None] | None = None) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr("poem.txt", text)
        raw = bytearray(buffer.getvalue())
        if patch:
            patch(raw)
        path = folder / name
        path.write_bytes(bytes(raw))
        return path

    return build


def _set_flag_encrypted(raw: bytearray) -> None:
    """Mark the member encrypted in its local header and in the central directory (zipfile cannot write one)."""
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = raw.find(signature)
        raw[at + offset] |= 0x01


def _set_method_deflate64(raw: bytearray) -> None:
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        at = raw.find(signature)
        raw[at + offset : at + offset + 2] = (9).to_bytes(2, "little")


@dataclass
class BadArchive:
    name: str
    build: Callable[[Path], Path]
    message: str
    max_unpacked_chars: int = data_module.MAX_UNPACKED_CHARS


def _tar_with_a_big_binary(folder: Path) -> Path:
    path = folder / "mixed.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in (("blob.bin", b"\x01" * 5_000), ("poem.txt", VERSE.encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


ARCHIVES = [
    BadArchive("encrypted zip", _zip("secret.zip", VERSE.encode(), _set_flag_encrypted), "encrypted"),
    BadArchive("deflate64 zip", _zip("d64.zip", VERSE.encode(), _set_method_deflate64), "compression method"),
    BadArchive("a bomb past the cap", _zip("bomb.zip", b"a" * 200_000), "--max-unpacked-gb", max_unpacked_chars=50_000),
    BadArchive("a tar's skipped members past the cap", _tar_with_a_big_binary, "not text", max_unpacked_chars=1_000),
]


@pytest.mark.parametrize("case", ARCHIVES, ids=[c.name for c in ARCHIVES])
def test_each_bad_archive_gets_one_clear_error_and_writes_nothing(tmp_path, case):
    with pytest.raises(DataError, match=case.message) as caught:
        prepare([case.build(tmp_path)], tmp_path / "dataset", max_unpacked_chars=case.max_unpacked_chars)
    assert "nothing was written" in str(caught.value)
    assert not (tmp_path / "dataset" / "vocab.txt").exists()


def test_a_text_with_no_line_end_reaches_the_bpe_in_bounded_pieces(tmp_path):
    text = ("word " * 50_000 + "x" * 300_000) * 2  # spaces, then a run with none
    path = tmp_path / "one-line.txt"
    path.write_text(text, encoding="utf-8")
    pieces = list(line_chunks(path))
    assert "".join(pieces) == text and max(map(len, pieces)) <= MAX_LINE_CHARS
    prepare([path], tmp_path / "bpe", tokenizer="bpe", vocab_size=260)
    bpe = Dataset(tmp_path / "bpe").vocab
    assert bpe.decode(bpe.encode_array(text)) == text


def test_a_bpe_prepare_that_dies_leaves_the_dataset_it_replaces(tmp_path, corpus_file, monkeypatch):
    prepare([corpus_file], tmp_path / "dataset")
    before = {p.name: p.read_bytes() for p in (tmp_path / "dataset").iterdir() if p.is_file()}
    (tmp_path / "other.txt").write_text("Another text altogether.\n" * 400, encoding="utf-8")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as a Ctrl-C while the BPE trains

    monkeypatch.setattr(data_module, "fit_bpe", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare([tmp_path / "other.txt"], tmp_path / "dataset", tokenizer="bpe", vocab_size=300)
    after = {p.name: p.read_bytes() for p in (tmp_path / "dataset").iterdir() if p.is_file()}
    assert after == before and not list((tmp_path / "dataset").glob(".preparing-*"))
    (tmp_path / "dataset" / ".preparing-999999").mkdir()  # what kill -9 leaves
    monkeypatch.undo()
    prepare([tmp_path / "other.txt"], tmp_path / "dataset", tokenizer="bpe", vocab_size=300)
    assert Dataset(tmp_path / "dataset").vocab.kind == "bpe"
    assert not list((tmp_path / "dataset").glob(".preparing-*"))


@pytest.mark.parametrize("kind", ["device", "fifo", "folder"])
def test_evaluate_refuses_a_text_that_is_not_a_regular_file(tmp_path, kind):
    save_verse_model(tmp_path)
    target = {"device": Path("/dev/zero"), "fifo": tmp_path / "pipe", "folder": tmp_path}[kind]
    if kind == "fifo":
        os.mkfifo(target)
    done = run_app("evaluate", "--model", "verse", "--text", str(target), cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and "is not a regular file" in done.stderr and "Traceback" not in done.stderr
    assert "0window" not in done.stderr


def test_evaluate_reads_a_text_file_a_chunk_at_a_time_with_the_same_result(tmp_path, monkeypatch):
    loaded = save_verse_model(tmp_path)
    path = tmp_path / "text.txt"
    text = TEXT * 3
    path.write_text(text, encoding="utf-8")
    monkeypatch.setattr(data_module, "CHUNK_BYTES", 100)  # many chunks
    whole, streamed = evaluate(loaded, text=text), evaluate(loaded, text_file=path)
    assert streamed.chars == whole.chars == len(text)
    assert abs(streamed.nats_per_char - whole.nats_per_char) < 1e-5


def test_a_bpe_model_on_a_text_of_one_character_says_it_is_too_short(tmp_path):
    loaded = save_verse_model(tmp_path, tokenizer="bpe")
    for text in ("é", "\U0001f600"):
        with pytest.raises(DataError, match="too short to evaluate"):
            evaluate(loaded, text=text)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n_layer", 1_000_000, r"n_layer must be a positive integer up to 1,024"),
        ("n_layer", 40, r"n_layer is 40 in config.json but 2 in the weights"),
        ("block_size", 10**9, r"block_size must be a positive integer up to 65,536"),
        ("n_embd", 10**7, r"n_embd must be a positive integer up to 65,536"),
        ("n_embd", 64, r"vocab_size, n_embd is \(\d+, 64\) in config.json but \(\d+, 32\) in the weights"),
    ],
)
def test_a_config_that_lies_about_its_weights_is_refused_before_building(tmp_path, field, value, message):
    save_verse_model(tmp_path)
    path = tmp_path / "models" / "verse" / "config.json"
    config = json.loads(path.read_text())
    config["model"][field] = value
    if field == "n_embd" and value == 64:
        config["model"]["n_head"] = 2
    path.write_text(json.dumps(config))
    with pytest.raises(ckpt.ModelError, match=message):
        ckpt.load_model("verse", tmp_path / "models")


def test_a_source_named_in_bytes_that_are_not_utf8_reaches_the_card(tmp_path):
    name = os.fsdecode(b"poems-\xff.txt")
    (tmp_path / name).write_text(VERSE * 20, encoding="utf-8")
    assert run_app("prepare", name, cwd=tmp_path).returncode == 0
    done = run_app("train", "--name", "m", "--max-iters", "3", "--eval-interval", "3", *TINY_MODEL_FLAGS,
                   cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "final val_loss=" in done.stdout
    card = (tmp_path / "models" / "m" / CARD).read_text(encoding="utf-8")
    assert "poems-\ufffd.txt" in card
    assert json.loads((tmp_path / "models" / "m" / "config.json").read_text())["data"]["sources"] == [
        "poems-\ufffd.txt"
    ]


def test_the_card_shows_no_machine_path_and_quotes_what_it_names(tmp_path, corpus_file):
    hostile = tmp_path / "a`b <img src=x onerror=alert(1)>.txt"
    hostile.write_text(corpus_file.read_text(encoding="utf-8"), encoding="utf-8")
    prepare([hostile], tmp_path / "dataset")
    config = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16)

    train_config = TrainConfig(data_dir=str(tmp_path / "dataset"), max_iters=2, eval_interval=2, eval_iters=1,
                               batch_size=2)  # fmt: skip
    train(config, train_config, out_dir=tmp_path / "models" / "m")
    card = (tmp_path / "models" / "m" / CARD).read_text(encoding="utf-8")
    assert str(tmp_path) not in card
    assert "``a`b <img src=x onerror=alert(1)>.txt``" in card


def test_export_check_refuses_a_model_whose_logits_are_nan(tmp_path):
    loaded = save_verse_model(tmp_path)
    weights = ckpt.weights_for_saving(loaded.model)
    weights["wte.weight"] = torch.full_like(weights["wte.weight"], float("nan"))
    config = dataclasses.replace(loaded.model.config)
    ckpt.save_model(tmp_path / "models" / "nan", weights, config, loaded.vocab, {})
    with pytest.raises(ExportError, match="not finite"):
        export_model("nan", tmp_path / "models", check=True)
    assert not (tmp_path / "models" / "nan" / "export").exists()


def test_export_cleans_what_a_killed_export_left(tmp_path):
    save_verse_model(tmp_path)
    folder = tmp_path / "models" / "verse"
    for leftover in (".tmp-export-abc123", ".tmp-old-export-4242"):
        (folder / leftover).mkdir()
        (folder / leftover / "model.onnx").write_bytes(b"half")
    export_model("verse", tmp_path / "models")
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".tmp")) == []
    assert (folder / "export" / "model.onnx").stat().st_size > 1000


def test_evaluate_reads_an_empty_or_crlf_text_as_prepare_would(tmp_path):
    loaded = save_verse_model(tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="too short"):
        evaluate(loaded, text_file=empty)
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(TEXT.replace("\n", "\r\n").encode())
    assert evaluate(loaded, text_file=crlf).nats_per_char == pytest.approx(evaluate(loaded, text=TEXT).nats_per_char)


def test_a_prepare_killed_while_moving_its_dataset_in_is_finished_by_the_next_reader(tmp_path, corpus_file):
    prepare([corpus_file], tmp_path / "dataset")
    other = tmp_path / "other.txt"
    other.write_text("Another text altogether.\n" * 400, encoding="utf-8")
    stage = _staged(tmp_path, other)
    real_move = data_module._move_stage

    def killed_half_way(stage, data_dir):
        (data_dir / "meta.json").unlink()
        os.replace(stage / "vocab.txt", data_dir / "vocab.txt")
        raise KeyboardInterrupt  # kill -9 after one move

    data_module._move_stage = killed_half_way
    try:
        with pytest.raises(KeyboardInterrupt):
            data_module._commit_stage(stage, tmp_path / "dataset")
    finally:
        data_module._move_stage = real_move
    dataset = Dataset(tmp_path / "dataset")  # finishes the moves first
    assert (tmp_path / "dataset" / "output_train.txt").read_text(encoding="utf-8").startswith("Another text")
    assert dataset.vocab.chars == sorted(set("Another text altogether.\n"))
    assert not list((tmp_path / "dataset").glob(".preparing-*"))


def _staged(tmp_path: Path, source: Path) -> Path:
    """A finished stage of `source`, as prepare leaves it just before moving it in."""
    built = tmp_path / "built"
    prepare([source], built)
    stage = tmp_path / "dataset" / ".preparing-4242"
    stage.mkdir()
    for path in built.iterdir():
        if path.is_file():
            os.replace(path, stage / path.name)
    return stage


def test_a_text_without_a_last_line_end_is_counted_with_the_one_added(tmp_path):
    path = tmp_path / "exact.txt"
    path.write_text("x" * 2_000, encoding="utf-8")
    stats = prepare([path], tmp_path / "ds")
    assert stats.chars == 2_001 and stats.line_ends_added == 1

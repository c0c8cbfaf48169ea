from __future__ import annotations

import numpy as np
import pytest
import torch

from core.data import BatchSampler, DataError, Dataset, prepare, split_ranges
from core.vocab import Vocab


def test_prepare_writes_classic_layout_and_tokens(dataset_dir, corpus_file):
    text = corpus_file.read_text(encoding="utf-8")
    train = (dataset_dir / "output_train.txt").read_text(encoding="utf-8")
    val = (dataset_dir / "output_val.txt").read_text(encoding="utf-8")
    assert train + val == text  # one segment for a small corpus: train then val, nothing lost
    assert 0.08 < len(val) / len(text) < 0.12
    vocab = Vocab.load(dataset_dir / "vocab.txt")
    assert set(vocab.chars) == set(text)
    data = Dataset(dataset_dir)
    assert vocab.decode(data.tokens["val"].tolist()) == val


def test_prepare_normalises_line_endings_and_joins_folders(tmp_path):
    folder = tmp_path / "books"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_bytes(b"one\r\ntwo\rthree" * 50)
    (folder / "sub" / "b.txt").write_bytes("\ufeff".encode() + b"quatre\n" * 50)
    (folder / "ignored.png").write_bytes(b"\x89PNG\r\n")
    stats = prepare([folder], tmp_path / "ds")
    text = b"".join((tmp_path / "ds" / name).read_bytes() for name in ("output_train.txt", "output_val.txt")).decode()
    assert "\r" not in text and "\ufeff" not in text
    assert text.startswith("one\ntwo\nthree")
    assert "threequatre" not in text  # files are separated by a newline
    assert stats.sources == [str(folder / "a.txt"), str(folder / "sub" / "b.txt")]


def test_large_corpus_split_is_spread_in_contiguous_blocks():
    ranges = split_ranges(1_000_000, 0.1)
    val = [r for r in ranges if r[2] == "val"]
    assert len(val) == 10
    assert sum(e - s for s, e, _ in val) == 100_000
    assert ranges[0][0] == 0 and ranges[-1][1] == 1_000_000
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"  \n\t \r\n", "only whitespace"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
        (b"caf\xe9 au lait", "not valid UTF-8 at byte 3"),
    ],
)
def test_bad_corpus_gets_a_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        prepare([path], tmp_path / "ds")
    assert not (tmp_path / "ds" / "vocab.txt").exists()


def test_errors_replace_counts_replacements(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"caf\xe9 au lait\n" * 10)
    stats = prepare([path], tmp_path / "ds", errors="replace")
    assert stats.replaced_chars == 10
    assert "\ufffd" in Vocab.load(tmp_path / "ds" / "vocab.txt").chars


def test_missing_input_is_named(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        prepare([tmp_path / "nope.txt"], tmp_path / "ds")


def test_seed_style_dataset_builds_bin_on_first_use(tmp_path):
    folder = tmp_path / "seed"
    folder.mkdir()
    (folder / "output_train.txt").write_text("hello world\n" * 20)
    (folder / "output_val.txt").write_text("world hello\n" * 5)
    (folder / "vocab.txt").write_text("\n".join(sorted(set("hello world\n"))))  # unescaped, no trailing newline
    data = Dataset(folder)
    assert (folder / "output_train.bin").exists()
    assert data.vocab.decode(data.tokens["train"][:12].tolist()) == "hello world\n"


def test_vocab_missing_a_character_of_the_data(tmp_path):
    folder = tmp_path / "seed"
    folder.mkdir()
    (folder / "output_train.txt").write_text("abc\n" * 20)
    (folder / "output_val.txt").write_text("abz\n" * 5)
    (folder / "vocab.txt").write_text("a\nb\nc\n\\n\n")
    with pytest.raises(DataError, match=r"lacks 1 character.*output_val.txt: 'z'"):
        Dataset(folder)


def test_missing_val_file(tmp_path, dataset_dir):
    (dataset_dir / "output_val.txt").unlink()
    with pytest.raises(DataError, match="output_val.txt not found"):
        Dataset(dataset_dir)


def test_corpus_shorter_than_context(dataset_dir):
    data = Dataset(dataset_dir)
    with pytest.raises(DataError, match="fewer than the context"):
        data.check_block_size(10_000)


def test_batches_are_shifted_windows_and_reproducible(dataset_dir):
    data = Dataset(dataset_dir)
    tokens = data.tokens["train"]
    a = BatchSampler(tokens, 16, 4, seed=7, device=torch.device("cpu"))
    x, y = a.next_batch()
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    state = a.state()
    expected = a.next_batch()
    b = BatchSampler(tokens, 16, 4, seed=0, device=torch.device("cpu"))
    b.set_state(state)
    assert all(torch.equal(p, q) for p, q in zip(expected, b.next_batch()))
    first = np.asarray(tokens[:17])
    assert first.dtype == np.uint8

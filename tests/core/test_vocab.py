from __future__ import annotations

import pytest

from core.vocab import Vocab, VocabError, token_dtype


def test_round_trip_special_characters(tmp_path):
    chars = ["\n", "\t", "\\", "\r", " ", "a", "é", "😀", "n", "t"]
    vocab = Vocab(chars)
    vocab.save(tmp_path / "vocab.txt")
    assert Vocab.load(tmp_path / "vocab.txt").chars == chars


def test_seed_style_unescaped_vocab_loads(tmp_path):
    # older tools wrote '\n'.join(chars): a newline is an empty line, a backslash a lone '\'
    path = tmp_path / "vocab.txt"
    path.write_bytes("\n".join(["\n", " ", "!", "\\", "a"]).encode())
    assert Vocab.load(path).chars == ["\n", " ", "!", "\\", "a"]


def test_encode_decode_round_trip():
    vocab = Vocab(sorted(set("hello world\n")))
    assert vocab.decode(vocab.encode("hello\nworld")) == "hello\nworld"
    assert vocab.encode_array("hello").tolist() == vocab.encode("hello")


@pytest.mark.parametrize("text", ["plain ascii\n", "café — naïve 😀\n", ""])
def test_encode_array_matches_encode_for_ascii_and_wide_text(text):
    vocab = Vocab(sorted(set("plain ascii\ncafé — naïve 😀")))
    assert vocab.encode_array(text).tolist() == vocab.encode(text)
    assert vocab.encode_array(text).dtype == vocab.dtype
    with pytest.raises(VocabError, match="'z'"):
        vocab.encode_array(text + "z")


def test_unknown_characters_are_named():
    vocab = Vocab("abc")
    with pytest.raises(VocabError, match="'z'"):
        vocab.encode("abz")
    assert vocab.filter_known("abzx") == ("ab", {"z", "x"})


def test_malformed_vocab_lines_are_rejected(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("a\nbc\n", encoding="utf-8")
    with pytest.raises(VocabError, match="line 2"):
        Vocab.load(path)
    path.write_text("a\na\n", encoding="utf-8")
    with pytest.raises(VocabError, match="repeats"):
        Vocab.load(path)
    with pytest.raises(VocabError, match="not found"):
        Vocab.load(tmp_path / "missing.txt")


def test_token_dtype_grows_with_vocab():
    assert token_dtype(256).itemsize == 1
    assert token_dtype(257).itemsize == 2
    assert token_dtype(70_000).itemsize == 4

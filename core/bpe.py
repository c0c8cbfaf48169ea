"""A byte-level BPE tokenizer trained on the user's text (Hugging Face `tokenizers`), with the interface the
rest of the code uses of a character `Vocab`: encode, decode, a streaming decoder, and how many characters
each token spells (so every loss can be reported per character).

A byte-level vocabulary holds all 256 bytes, so any text encodes: nothing is unknown.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from core.fileio import atomic_write_text
from core.vocab import Vocab, VocabError, token_dtype

TOKENIZER_JSON = "tokenizer.json"
MIN_VOCAB, MAX_VOCAB = 256, 65_535
MIN_TRAIN_CHARS_PER_TOKEN = 4  # a vocabulary needs a few times its size in text to learn merges from


def _byte_symbols() -> dict[str, int]:
    """The printable symbol byte-level BPE writes for each byte (GPT-2's table), back to the byte."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in keep:
            symbols[chr(byte)] = byte
        else:
            symbols[chr(256 + extra)] = byte
            extra += 1
    return symbols


class BpeTokenizer:
    kind = "bpe"

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        size = tokenizer.get_vocab_size()
        by_id = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
        if [i for _, i in by_id] != list(range(size)):
            raise VocabError("the tokenizer's ids are not 0..N-1; train it again with prepare --tokenizer bpe")
        self.chars = [token for token, _ in by_id]  # the tokens' byte-level spellings, the identity of the vocab
        symbols = _byte_symbols()
        try:
            self._bytes = [bytes(symbols[s] for s in token) for token in self.chars]
        except KeyError:
            raise VocabError(
                "the tokenizer is not byte-level BPE; train it again with prepare --tokenizer bpe"
            ) from None
        # a token spells the characters whose first byte it holds (UTF-8 continuation bytes are 10xxxxxx)
        self._spelled = np.array([sum((b & 0xC0) != 0x80 for b in data) for data in self._bytes], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BpeTokenizer) and self.chars == other.chars

    @property
    def dtype(self) -> np.dtype:
        return token_dtype(len(self))

    def unknown(self, text: str) -> set[str]:
        return set()

    def filter_known(self, text: str) -> tuple[str, set[str]]:
        return text, set()

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text).ids if text else []

    def encode_array(self, text: str, piece_chars: int = 1 << 16) -> np.ndarray:
        """Ids of a long text, encoded on every core: cut into pieces of about `piece_chars` at line ends (a
        piece boundary can only change how the whitespace before a newline is split, once in 64k characters)."""
        pieces, start = [], 0
        while start < len(text):
            end = text.find("\n", start + piece_chars, start + 2 * piece_chars)
            if end >= 0:
                end += 1
            elif len(text) - start <= 2 * piece_chars:
                end = len(text)
            else:  # a line too long: cut at a space, else anywhere (memory grows with a piece's length)
                space = text.rfind(" ", start + piece_chars, start + 2 * piece_chars)
                end = space + 1 if space >= 0 else start + 2 * piece_chars
            pieces.append(text[start:end])
            start = end
        ids = [encoding.ids for encoding in self._tokenizer.encode_batch(pieces)] if pieces else []
        return np.fromiter((i for part in ids for i in part), dtype=self.dtype, count=sum(map(len, ids)))

    def decode(self, ids: Iterable[int]) -> str:
        return b"".join(self._bytes[i] for i in ids).decode("utf-8", errors="replace")

    def char_counts(self, ids: np.ndarray) -> np.ndarray:
        """Characters each token spells; their sum over a whole text is its length in characters."""
        return self._spelled[np.asarray(ids, dtype=np.int64)]

    def stream_decoder(self) -> Callable[[int], str]:
        """A function of the next token id to the text it completes ("" while a character is still partial)."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return lambda token: decoder.decode(self._bytes[token])

    def save(self, path: Path) -> None:
        atomic_write_text(Path(path), self._tokenizer.to_str() + "\n")

    @classmethod
    def load(cls, path: Path) -> BpeTokenizer:
        from tokenizers import Tokenizer

        try:
            return cls(Tokenizer.from_str(Path(path).read_text(encoding="utf-8")))
        except Exception as err:  # noqa: BLE001 - tokenizers raises plain Exceptions for a bad file
            if isinstance(err, VocabError):
                raise
            raise VocabError(f"{path} is not a tokenizer file this program can read ({err})") from None


def train_bpe(chunks: Callable[[], Iterator[str]], vocab_size: int, train_chars: int) -> BpeTokenizer:
    """A byte-level BPE of `vocab_size` tokens learned from the texts `chunks()` yields (the training split)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
        raise VocabError(f"a BPE vocabulary size must be between {MIN_VOCAB} and {MAX_VOCAB:,}, got {vocab_size}")
    if train_chars < MIN_TRAIN_CHARS_PER_TOKEN * vocab_size:
        raise VocabError(
            f"{train_chars:,} characters of training text are too few to learn {vocab_size:,} tokens from (give at "
            f"least {MIN_TRAIN_CHARS_PER_TOKEN * vocab_size:,}, or a smaller --vocab-size, or --tokenizer char)"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        special_tokens=[],
    )  # fmt: skip
    tokenizer.train_from_iterator(chunks(), trainer=trainer)
    return BpeTokenizer(tokenizer)


def describe(tokenizer: BpeTokenizer, sample: str, longest: int = 8) -> dict:
    """What the vocabulary does to a sample: tokens per character and the longest tokens."""
    ids = tokenizer.encode(sample)
    by_length = sorted(range(len(tokenizer)), key=lambda i: -len(tokenizer._bytes[i]))[:longest]
    return {
        "tokens_per_char": len(ids) / max(1, len(sample)),
        "longest": [tokenizer._bytes[i].decode("utf-8", errors="replace") for i in by_length],
    }


def read_kind(data_dir: Path) -> str:
    """ "bpe" when the dataset (or model) folder holds a tokenizer file, else "char"."""
    return "bpe" if (Path(data_dir) / TOKENIZER_JSON).is_file() else "char"


def load_tokenizer(folder: Path) -> BpeTokenizer | Vocab:
    """The tokenizer of a dataset or model folder: its tokenizer.json (BPE) if it has one, else vocab.txt."""
    if read_kind(folder) == "bpe":
        return BpeTokenizer.load(Path(folder) / TOKENIZER_JSON)
    return Vocab.load(Path(folder) / "vocab.txt")

"""The character vocabulary and its `vocab.txt` file format.

`vocab.txt` holds one character a line. Characters that cannot stand alone on a line are escaped
(`\\n`, `\\r`, `\\t`, `\\\\`). Files written by older tools without escapes still load: there a newline
character appears as an empty line and a backslash as a lone `\\`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from core.fileio import atomic_write_text

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}
_UNESCAPES = {v: k for k, v in _ESCAPES.items()}


class VocabError(ValueError):
    """vocab.txt is missing, malformed, or does not match the data or the model."""


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds every token id."""
    if vocab_size <= 1 << 8:
        return np.dtype(np.uint8)
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def codepoints(text: str) -> np.ndarray:
    """The code points of `text` as an array: one byte a character for ASCII text, else four."""
    if text.isascii():  # O(1) in CPython; the common case costs a quarter of the memory
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


class Vocab:
    """An ordered set of characters; a character's position is its token id."""

    def __init__(self, chars: Iterable[str]):
        self.chars: list[str] = list(chars)
        if not self.chars:
            raise VocabError("the vocabulary is empty")
        bad = [c for c in self.chars if len(c) != 1]
        if bad:
            raise VocabError(f"vocabulary entries must be single characters, got {bad[:5]!r}")
        if len(set(self.chars)) != len(self.chars):
            dupes = sorted({c for c in self.chars if self.chars.count(c) > 1})
            raise VocabError(f"the vocabulary repeats characters: {dupes[:10]!r}")
        self.index = {c: i for i, c in enumerate(self.chars)}
        self._lut: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.chars == other.chars

    def __contains__(self, char: str) -> bool:
        return char in self.index

    @property
    def dtype(self) -> np.dtype:
        return token_dtype(len(self))

    def unknown(self, text: str) -> set[str]:
        return set(text) - self.index.keys()

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; raises VocabError naming the characters the vocabulary lacks."""
        missing = self.unknown(text)
        if missing:
            raise VocabError(f"characters not in the vocabulary: {describe_chars(missing)}")
        return [self.index[c] for c in text]

    def encode_array(self, text: str) -> np.ndarray:
        """Vectorised encode for long texts (used by prepare); unknown characters raise VocabError."""
        ids = self._lookup_table()[codepoints(text)]
        if ids.size and ids.min() < 0:
            raise VocabError(f"characters not in the vocabulary: {describe_chars(self.unknown(text))}")
        return ids.astype(self.dtype)

    def _lookup_table(self) -> np.ndarray:
        if self._lut is None:
            lut = np.full(0x110000, -1, dtype=np.int32)
            lut[[ord(c) for c in self.chars]] = np.arange(len(self.chars))
            self._lut = lut
        return self._lut

    def filter_known(self, text: str) -> tuple[str, set[str]]:
        """Drop the characters the vocabulary lacks; return the kept text and the dropped set."""
        missing = self.unknown(text)
        if not missing:
            return text, set()
        return "".join(c for c in text if c in self.index), missing

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    kind = "char"

    def char_counts(self, ids: np.ndarray) -> np.ndarray:
        """Characters each token spells: one."""
        return np.ones(len(ids), dtype=np.int64)

    def stream_decoder(self):
        """A function of the next token id to its text."""
        return self.chars.__getitem__

    def to_text(self) -> str:
        return "".join(_ESCAPES.get(c, c) + "\n" for c in self.chars)

    def save(self, path: Path) -> None:
        atomic_write_text(Path(path), self.to_text())

    @classmethod
    def from_text(cls, text: str, source: str = "vocab.txt") -> Vocab:
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # the newline that ends the last line
        chars = []
        for number, line in enumerate(lines, start=1):
            if len(line) == 1:
                chars.append(line)
            elif line in _UNESCAPES:
                chars.append(_UNESCAPES[line])
            elif line == "":
                # older tools wrote "\n".join(chars): the newline character shows as empty line(s)
                if "\n" not in chars:
                    chars.append("\n")
            else:
                raise VocabError(
                    f"{source} line {number} holds {line!r}; each line must be one character "
                    r"or an escape (\n, \r, \t, \\)"
                )
        if not chars:
            raise VocabError(f"{source} is empty; run `python app.py prepare` to rebuild the dataset")
        try:
            return cls(chars)
        except VocabError as err:
            raise VocabError(f"{source}: {err}") from None

    @classmethod
    def load(cls, path: Path) -> Vocab:
        path = Path(path)
        if not path.is_file():
            raise VocabError(f"{path} not found; run `python app.py prepare` to build the dataset")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise VocabError(f"{path} is not UTF-8 (byte {err.start}); rebuild it with prepare") from None
        return cls.from_text(text, source=str(path))


def describe_chars(chars: Iterable[str], limit: int = 10) -> str:
    """A short readable list of characters, e.g. `'é' (U+00E9), '\\x00' (U+0000)`."""
    ordered = sorted(chars)
    shown = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in ordered[:limit])
    more = f" and {len(ordered) - limit} more" if len(ordered) > limit else ""
    return shown + more

"""Dataset preparation and memory-mapped batches.

Layout of a dataset folder (see DESIGN.md):
    output_train.txt, output_val.txt   UTF-8 text
    vocab.txt                          one character a line (escaped, see core.vocab)
    output_train.bin, output_val.bin   token ids (uint8/16/32 by vocab size), memory-mapped by training
    meta.json                          statistics and a fingerprint of the text files the .bin came from

`prepare` streams its inputs twice (count, then split and encode), so memory stays bounded whatever the
corpus size. A folder holding only the three text files (the classic layout) works too: the .bin files
are built from it on first use.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.bpe import MAX_VOCAB, MIN_VOCAB, TOKENIZER_JSON, load_tokenizer, train_bpe
from core.chat_template import speakers_of
from core.fileio import atomic_path, atomic_write_text, fsync_dir, printable, remove_stale_temps
from core.sources import (
    CHUNK_BYTES,
    MAX_UNPACKED_CHARS,
    DataError,
    Sources,
)
from core.vocab import Vocab, VocabError, codepoints, describe_chars, token_dtype

log = logging.getLogger(__name__)

TRAIN_TXT, VAL_TXT, VOCAB_TXT, META_JSON = "output_train.txt", "output_val.txt", "vocab.txt", "meta.json"
SPLITS = {"train": TRAIN_TXT, "val": VAL_TXT}
TOKENIZERS = ("char", "bpe")
# A BPE learns its merges from at most this much of the training split (chunks spread evenly over it): all of
# a large split costs minutes and a gigabyte of memory for little (RESULTS.md, Archives and BPE).
BPE_SAMPLE_CHARS = 50_000_000
MAX_LINE_CHARS = 1 << 16  # longer lines reach the BPE in pieces
ProgressFn = Callable[[float, str], None]


@dataclass
class PrepareStats:
    data_dir: str
    sources: list[str]
    input_bytes: int
    chars: int
    train_chars: int
    val_chars: int
    vocab_size: int
    lines: int
    replaced_chars: int
    seconds: float
    top_chars: list[tuple[str, int]] = field(default_factory=list)
    tokenizer: str = "char"
    line_ends_added: int = 0  # after texts that did not end with one, so that texts do not run together
    tokens: int = 0  # of both splits; with a BPE, fewer than the characters
    tokenizer_vocab: int = 0  # with a BPE: its size (vocab_size stays the characters')
    tokenizer_seconds: float = 0.0  # training and encoding with the BPE

    @property
    def mb_per_s(self) -> float:
        return self.input_bytes / 1e6 / max(self.seconds, 1e-9)

    def summary(self) -> str:
        top = " ".join(f"{c!r}:{n}" for c, n in self.top_chars[:8])
        return (
            f"prepared {self.data_dir}: {self.chars:,} characters from {len(self.sources)} source(s) "
            f"({self.input_bytes / 1e6:.1f} MB, {self.lines:,} lines), vocab {self.vocab_size}, "
            f"train {self.train_chars:,} / val {self.val_chars:,}, "
            f"{self.seconds:.1f}s ({self.mb_per_s:.1f} MB/s)"
            + (f", {self.replaced_chars} undecodable bytes replaced" if self.replaced_chars else "")
            + (f"\nmost frequent: {top}" if top else "")
            + (
                f"\nBPE of {self.tokenizer_vocab:,} tokens: {self.tokens:,} tokens, "
                f"{self.tokens / max(self.chars, 1):.2f} tokens a character ({self.tokenizer_seconds:.1f}s)"
                if self.tokenizer == "bpe"
                else ""
            )
        )


# --- prepare ---------------------------------------------------------------------------------------


def split_ranges(n_chars: int, val_fraction: float) -> list[tuple[int, int, str]]:
    """Contiguous (start, end, split) ranges covering [0, n_chars).

    Large corpora are cut into up to 10 segments, each ending with its share of validation text, so that
    val resembles train (a multi-book corpus would otherwise validate on its last books only).
    """
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    segments = min(10, max(1, n_chars // 100_000))
    ranges: list[tuple[int, int, str]] = []
    for i in range(segments):
        start, end = i * n_chars // segments, (i + 1) * n_chars // segments
        n_val = min(end - start - 1, max(1, round((end - start) * val_fraction)))
        ranges += [(start, end - n_val, "train"), (end - n_val, end, "val")]
    return [r for r in ranges if r[1] > r[0]]


def prepare(
    inputs: Iterable[str | Path] | None = None,
    data_dir: str | Path = "dataset",
    *,
    val_fraction: float = 0.1,
    errors: str = "strict",
    on_progress: ProgressFn | None = None,
    tokenizer: str = "char",
    vocab_size: int = 2048,
    max_unpacked_chars: int = MAX_UNPACKED_CHARS,
    names: dict[str, str] | None = None,
    tokenizer_from: Any = None,
) -> PrepareStats:
    """Build `data_dir` from text files or folders (None = the default corpus); with `tokenizer="bpe"`, a
    byte-level BPE of `vocab_size` tokens is trained on the training split and its ids written as the tokens.
    `names`: what to call an input file in the dataset's record and the model card (an upload's own name).
    `tokenizer_from`: a saved model's tokenizer, for a run built on it: a BPE's encodes the text (none is
    trained); a character model's means characters (the run adds the text's new ones to its vocabulary)."""
    started = time.perf_counter()
    data_dir = Path(data_dir)
    if tokenizer_from is not None:
        tokenizer = tokenizer_from.kind
    if tokenizer not in TOKENIZERS:
        raise DataError(f"tokenizer must be {' or '.join(TOKENIZERS)}, got {tokenizer!r}")
    if tokenizer == "bpe" and not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
        raise DataError(f"a BPE vocabulary size must be between {MIN_VOCAB} and {MAX_VOCAB:,}, got {vocab_size}")
    if data_dir.is_dir():
        remove_stale_temps(data_dir)  # what a prepare killed mid-way left behind
    sources = Sources(list(inputs) if inputs is not None else None, errors, max_unpacked_chars, names or {})
    report = on_progress or (lambda fraction, message: None)

    counts = _count_characters(sources, report)  # pass 1
    n_chars = int(counts.sum())
    replaced = sources.replacer.count if sources.replacer else 0  # pass 2 meets the same bytes again
    present = np.flatnonzero(counts)
    vocab = Vocab(chr(c) for c in present)
    order = np.argsort(-counts[present], kind="stable")[:20]
    top_chars = [(chr(present[i]), int(counts[present[i]])) for i in order]

    # Pass 2: split into contiguous ranges, write text and token ids of each split, all in a stage folder that
    # replaces the dataset's files only when whole: a prepare killed at any point leaves the old dataset.
    data_dir.mkdir(parents=True, exist_ok=True)
    stage = _new_stage(data_dir)
    try:
        lengths = _write_splits(stage, sources, split_ranges(n_chars, val_fraction), vocab, report)
        bpe_started = time.perf_counter()
        if tokenizer == "bpe":
            report(1.0, "training the BPE tokenizer on the training split" if tokenizer_from is None
                   else "encoding with the saved model's tokenizer")  # fmt: skip
            bpe = tokenizer_from or fit_bpe(stage, vocab_size, lengths["train"])
            bpe.save(stage / TOKENIZER_JSON)
            tokens, _ = _encode_bpe_files(stage, bpe)
        stats = PrepareStats(
            data_dir=str(data_dir),
            sources=sources.names,
            input_bytes=sources.total_bytes,
            chars=n_chars,
            train_chars=lengths["train"],
            val_chars=lengths["val"],
            vocab_size=len(vocab),
            lines=int(counts[ord("\n")]),
            replaced_chars=replaced,
            line_ends_added=sources.line_ends_added,
            seconds=time.perf_counter() - started,
            top_chars=top_chars,
        )
        if tokenizer == "bpe":
            stats.tokenizer, stats.tokenizer_vocab = "bpe", len(bpe)
            stats.tokens, stats.tokenizer_seconds = sum(tokens.values()), time.perf_counter() - bpe_started
            _write_meta(stage, bpe, tokens, stats, chars=lengths)
        else:
            _write_meta(stage, vocab, lengths, stats)
        _commit_stage(stage, data_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    report(1.0, "done")
    return stats


def _count_characters(sources: Sources, report: ProgressFn) -> np.ndarray:
    """Each code point's count over the whole input; refuses one that is empty, blank or a single character."""
    counts = np.zeros(0x110000, dtype=np.int64)
    done_bytes = 0
    for text, consumed in sources.chunks():
        if text:  # bincount to the largest code point present, not to 0x10FFFF, for each chunk
            found = np.bincount(codepoints(text))
            counts[: len(found)] += found
        done_bytes += consumed
        report(0.5 * done_bytes / max(sources.total_bytes, 1), "counting characters")
    n_chars = int(counts.sum())
    if n_chars == 0:
        raise DataError(f"the input is empty: {', '.join(sources.names)}")
    whitespace = [ord(c) for c in " \t\n\r\x0b\x0c"]
    if counts[whitespace].sum() == n_chars:
        raise DataError(f"the input holds only whitespace: {', '.join(sources.names)}")
    if n_chars < 2:
        raise DataError(f"the input is too short ({n_chars} character) to split into train and val")
    return counts


def _write_splits(stage: Path, sources: Sources, ranges: list[tuple[int, int, str]], vocab: Vocab,
                  report: ProgressFn) -> dict[str, int]:  # fmt: skip
    """Pass 2 of prepare: each split's text, its character ids and vocab.txt into `stage`; characters a split."""
    lengths = {"train": 0, "val": 0}
    with contextlib.ExitStack() as stack:
        outputs = {}
        for split, name in SPLITS.items():
            outputs[split] = (
                stack.enter_context(open(stage / name, "w", encoding="utf-8", newline="")),
                stack.enter_context(open(stage / _bin_name(split), "wb")),
            )
        position, range_index, done_bytes = 0, 0, 0
        for text, consumed in sources.chunks():
            done_bytes += consumed
            while text:
                _, end, split = ranges[range_index]
                take = min(len(text), end - position)
                piece, text = text[:take], text[take:]
                text_out, bin_out = outputs[split]
                text_out.write(piece)
                bin_out.write(vocab.encode_array(piece).tobytes())
                lengths[split] += take
                position += take
                if position == end and range_index + 1 < len(ranges):
                    range_index += 1
            report(0.5 + 0.5 * done_bytes / max(sources.total_bytes, 1), "writing splits")
    vocab.save(stage / VOCAB_TXT)
    return lengths


STAGE_PREFIX = ".preparing-"  # a folder in the dataset where prepare builds the next dataset


COMMITTING = ".committing"  # in a stage folder: its files are being moved in; whoever finds it finishes the move


def _new_stage(data_dir: Path) -> Path:
    finish_interrupted_prepare(data_dir)
    for old in data_dir.glob(STAGE_PREFIX + "*"):  # what a prepare killed while it built left
        shutil.rmtree(old, ignore_errors=True)
    stage = data_dir / f"{STAGE_PREFIX}{os.getpid()}"
    stage.mkdir()
    return stage


def _commit_stage(stage: Path, data_dir: Path) -> None:
    """Move a whole prepared dataset over the old one; meta.json last, as it vouches for the other files. A
    process killed during the moves leaves the stage marked, and the next to open the dataset finishes them."""
    for path in stage.iterdir():
        with open(path, "rb+") as handle:
            os.fsync(handle.fileno())
    (stage / COMMITTING).touch()
    fsync_dir(stage)
    _move_stage(stage, data_dir)


def _move_stage(stage: Path, data_dir: Path) -> None:
    (data_dir / META_JSON).unlink(missing_ok=True)
    if not (stage / TOKENIZER_JSON).is_file() and (stage / META_JSON).is_file():
        (data_dir / TOKENIZER_JSON).unlink(missing_ok=True)  # the text changed: an old BPE is stale
    for path in sorted(stage.iterdir(), key=lambda p: p.name == META_JSON):
        if path.name != COMMITTING:
            with contextlib.suppress(FileNotFoundError):  # another process finishing the same move
                os.replace(path, data_dir / path.name)
    fsync_dir(data_dir)
    shutil.rmtree(stage, ignore_errors=True)


def finish_interrupted_prepare(data_dir: Path) -> None:
    """Complete the moves of a prepare killed while it moved its finished dataset in."""
    for stage in Path(data_dir).glob(STAGE_PREFIX + "*"):
        if (stage / COMMITTING).is_file():
            _move_stage(stage, Path(data_dir))


def fit_bpe(data_dir: Path, vocab_size: int, train_chars: int):
    """A BPE of `vocab_size` tokens learned from the training split of `data_dir` (`train_chars` long): from
    pieces evenly spread over it, BPE_SAMPLE_CHARS at most."""
    every = max(1, math.ceil(train_chars / BPE_SAMPLE_CHARS))

    def sample() -> Iterator[str]:
        chunks = (chunk for i, chunk in enumerate(line_chunks(Path(data_dir) / TRAIN_TXT)) if i % every == 0)
        return (piece for chunk in chunks for piece in bounded_pieces(chunk, MAX_LINE_CHARS))

    try:
        return train_bpe(sample, vocab_size, train_chars)
    except VocabError as err:
        raise DataError(str(err)) from None


def line_chunks(path: Path) -> Iterator[str]:
    """A UTF-8 text file in pieces of about CHUNK_BYTES that end at a line's end (so no word is cut in two); a
    line longer than MAX_LINE_CHARS is cut at a space, or anywhere (a BPE's memory grows with a piece's length)."""
    carry = ""
    with open(path, encoding="utf-8", newline="") as handle:
        while block := handle.read(CHUNK_BYTES):
            text = carry + block
            cut = text.rfind("\n") + 1
            if cut:
                yield text[:cut]
                text = text[cut:]
            while cut := long_line_cut(text, MAX_LINE_CHARS):
                yield text[:cut]
                text = text[cut:]
            carry = text
    if carry:
        yield carry


def bounded_pieces(text: str, longest: int) -> Iterator[str]:
    """`text` in pieces of at most `longest` characters, cut at a line end, else at a space, else anywhere: a
    BPE's trainer and encoder take time and memory that grow with a line's length."""
    start = 0
    while len(text) - start > longest:
        end = text.rfind("\n", start, start + longest) + 1 or start + long_line_cut(
            text[start : start + longest + 1], longest
        )
        yield text[start:end]
        start = end
    if start < len(text):
        yield text[start:]


def long_line_cut(text: str, longest: int) -> int:
    """Where to cut `text` that has no line end when it is longer than `longest`: after its last space past
    half of that, else at `longest`; 0 when it is not too long."""
    if len(text) <= longest:
        return 0
    space = text.rfind(" ", longest // 2, longest)
    return space + 1 if space >= 0 else longest


DEFAULT_DATA_DIR = "dataset"


def has_dataset(data_dir: str | Path) -> bool:
    return (Path(data_dir) / "vocab.txt").is_file()


def require_dataset(data_dir: str | Path) -> None:
    """The one message for a missing dataset, whichever front end asks."""
    if not has_dataset(data_dir):
        raise DataError("there is no dataset yet; prepare one in the Dataset tab or with `python app.py prepare` first")


def ensure_default_dataset(data_dir: str | Path) -> PrepareStats | None:
    """Prepare the default corpus when the default dataset folder is empty (first run)."""
    if has_dataset(data_dir) or Path(data_dir) != Path(DEFAULT_DATA_DIR):
        return None
    log.info("no dataset in %s/ yet: preparing the default corpus (Shakespeare)", data_dir)
    stats = prepare(None, data_dir)
    log.info("%s", stats.summary())
    return stats


def _bin_name(split: str) -> str:
    return SPLITS[split].replace(".txt", ".bin")


def _fingerprint(data_dir: Path) -> dict[str, list[int]]:
    """Size and mtime of the text files, so hand-edited text invalidates the .bin built from it."""
    result = {}
    for name in (TRAIN_TXT, VAL_TXT, VOCAB_TXT, TOKENIZER_JSON):
        if name == TOKENIZER_JSON and not (data_dir / name).is_file():
            continue
        st = (data_dir / name).stat()
        result[name] = [st.st_size, st.st_mtime_ns]
    return result


def _write_meta(data_dir: Path, vocab, lengths: dict[str, int], stats: PrepareStats | None,
                chars: dict[str, int] | None = None) -> None:  # fmt: skip
    """`lengths`: tokens a split; `chars`: its characters (the same as its tokens for a char vocabulary)."""
    chars = chars or lengths
    meta = {
        "tokenizer": vocab.kind,
        "vocab_size": len(vocab),
        "dtype": vocab.dtype.name,
        "tokens": lengths,
        "chars": chars,
        "fingerprint": _fingerprint(data_dir),
        "stats": asdict(stats) if stats else None,
    }
    atomic_write_text(data_dir / META_JSON, json.dumps(meta, indent=2) + "\n")


def _read_meta(data_dir: Path) -> dict | None:
    try:
        return json.loads((data_dir / META_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def encode_text_files(data_dir: Path, vocab) -> None:
    """Build the .bin token files from the text files (the classic layout has no .bin)."""
    if vocab.kind == "bpe":
        stats = (_read_meta(data_dir) or {}).get("stats")  # what prepare recorded of the sources is kept
        tokens, chars = _encode_bpe_files(data_dir, vocab)
        _write_meta(data_dir, vocab, tokens, None, chars=chars)
        if stats:
            meta = _read_meta(data_dir)
            atomic_write_text(data_dir / META_JSON, json.dumps({**meta, "stats": stats}, indent=2) + "\n")
        return
    lengths = {}
    for split, name in SPLITS.items():
        path = data_dir / name
        missing: set[str] = set()
        count = 0
        with atomic_path(data_dir / _bin_name(split)) as tmp, open(tmp, "wb") as out:
            decoder = codecs.getincrementaldecoder("utf-8")()
            with open(path, "rb") as handle:
                offset = 0
                while raw := handle.read(CHUNK_BYTES):
                    try:
                        text = decoder.decode(raw)
                    except UnicodeDecodeError as err:
                        raise DataError(f"{path} is not valid UTF-8 near byte {offset + err.start}") from None
                    offset += len(raw)
                    unknown = vocab.unknown(text)
                    if unknown:
                        missing |= unknown
                        continue
                    out.write(vocab.encode_array(text).tobytes())
                    count += len(text)
            if missing:
                raise DataError(
                    f"{data_dir / VOCAB_TXT} lacks {len(missing)} character(s) found in {name}: "
                    f"{describe_chars(missing)}; run `python app.py prepare` again"
                )
        lengths[split] = count
    _write_meta(data_dir, vocab, lengths, None)


def _encode_bpe_files(data_dir: Path, bpe) -> tuple[dict[str, int], dict[str, int]]:
    """Write the splits' BPE ids, in pieces that end at a line's end; returns each split's tokens and characters."""
    tokens, chars = {}, {}
    for split, name in SPLITS.items():
        tokens[split] = chars[split] = 0
        with atomic_path(data_dir / _bin_name(split)) as tmp, open(tmp, "wb") as out:
            for text in line_chunks(data_dir / name):
                ids = bpe.encode_array(text)
                out.write(ids.tobytes())
                tokens[split] += len(ids)
                chars[split] += len(text)
    return tokens, chars


# --- loading and batches ---------------------------------------------------------------------------


class Dataset:
    """A prepared dataset folder: its vocabulary and the memory-mapped token ids of each split."""

    def __init__(self, data_dir: str | Path):
        self.data_dir = Path(data_dir)
        finish_interrupted_prepare(self.data_dir)
        for name in (TRAIN_TXT, VAL_TXT, VOCAB_TXT):
            if not (self.data_dir / name).is_file():
                raise DataError(f"{self.data_dir / name} not found; run `python app.py prepare` to build the dataset")
        try:
            self.vocab = load_tokenizer(self.data_dir)
        except VocabError as err:
            raise DataError(str(err)) from None
        meta = _read_meta(self.data_dir)
        stale = (
            meta is None
            or meta.get("fingerprint") != _fingerprint(self.data_dir)
            or meta.get("vocab_size") != len(self.vocab)
            or meta.get("tokenizer", "char") != self.vocab.kind
            or any(not (self.data_dir / _bin_name(s)).is_file() for s in SPLITS)
        )
        if stale:
            log.info("encoding %s to token files", self.data_dir)
            encode_text_files(self.data_dir, self.vocab)
            meta = _read_meta(self.data_dir)
        self.tokens = {split: _memmap(self.data_dir / _bin_name(split), self.vocab.dtype) for split in SPLITS}
        for split, tokens in self.tokens.items():
            if len(tokens) == 0:
                raise DataError(f"{self.data_dir / SPLITS[split]} is empty; run `python app.py prepare` again")
        self.stats = (meta or {}).get("stats") or {}  # what prepare recorded: sources, characters, split
        # a token's loss times this is a character's: exactly 1 for a character vocabulary
        chars = (meta or {}).get("chars") or {}
        self.tokens_per_char = {
            split: 1.0 if self.vocab.kind == "char" or not chars.get(split) else len(tokens) / chars[split]
            for split, tokens in self.tokens.items()
        }

    def holds(self, block_size: int) -> bool:
        """Whether every split has a window of `block_size` characters and its next one."""
        return all(len(tokens) > block_size + 1 for tokens in self.tokens.values())

    def check_block_size(self, block_size: int) -> None:
        for split, tokens in self.tokens.items():
            if len(tokens) <= block_size + 1:
                raise DataError(
                    f"{self.data_dir / SPLITS[split]} has {len(tokens)} characters, fewer than the context "
                    f"(block_size={block_size}) needs ({block_size + 2}); use a smaller --block-size or "
                    "more text"
                )


def _memmap(path: Path, dtype: np.dtype) -> np.ndarray:
    size = path.stat().st_size
    if size % dtype.itemsize:
        raise DataError(f"{path} size {size} is not a multiple of {dtype.itemsize}; run prepare again")
    if size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


class BatchSampler:
    """Random (B, T+1) windows from a memory-mapped split, gathered in one vectorised read.

    The random generator's state is part of a checkpoint, so a resumed run sees the same batches.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int, device: torch.device):
        if len(tokens) <= block_size + 1:
            raise DataError(f"split has {len(tokens)} tokens; block_size {block_size} needs more")
        self.tokens = tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.device = device
        self.rng = np.random.default_rng(seed)
        self._window = np.arange(block_size + 1)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        offsets = self.rng.integers(0, len(self.tokens) - self.block_size, size=self.batch_size)
        windows = torch.from_numpy(self.tokens[offsets[:, None] + self._window].astype(np.int64))
        if self.device.type == "cuda":
            windows = windows.pin_memory().to(self.device, non_blocking=True)
        return windows[:, :-1], windows[:, 1:]

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


__all__ = [
    "BatchSampler",
    "DataError",
    "Dataset",
    "PrepareStats",
    "prepare",
    "split_ranges",
    "token_dtype",
]


def data_record(dataset: Dataset) -> dict[str, Any]:
    """What a saved model keeps of its data, for its card: where it came from and how it was split."""
    stats = dataset.stats
    return {
        "dir": printable(str(dataset.data_dir)),
        "tokenizer": dataset.vocab.kind,
        "sources": [printable(str(name)) for name in stats.get("sources", [])[:20]],
        "chars": {"train": stats.get("train_chars"), "val": stats.get("val_chars")},
        "tokens": {split: len(tokens) for split, tokens in dataset.tokens.items()},
        "speakers": speakers_of(dataset.data_dir),  # how its chat endpoint writes messages (core.chat_template)
    }

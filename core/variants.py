"""The prepared text under other tokenizers, for a study that searches the tokenizer: `dataset/tokenized/char`,
`dataset/tokenized/bpe-2048`, ... Each is built once (text files linked, not copied; a BPE trained on the
training split; token files encoded) and reused by every trial, worker and final training after it.

    data_dir = variant_dir("dataset", "bpe", 2048)   # a path only; "prepared" means the dataset as it is
    dataset = open_dataset(data_dir)                 # builds the variant on first use, then reads it
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from core.bpe import MAX_VOCAB, MIN_VOCAB, TOKENIZER_JSON, load_tokenizer, read_kind
from core.data import META_JSON, SPLITS, TRAIN_TXT, VOCAB_TXT, DataError, Dataset, encode_text_files, fit_bpe
from core.fileio import atomic_write_text, fsync_dir

log = logging.getLogger(__name__)

TOKENIZED_DIR = "tokenized"
AS_PREPARED = "prepared"  # a study's default: the tokenizer the dataset was prepared with
TOKENIZER_CHOICES = (AS_PREPARED, "char", "bpe")
SOURCE_JSON = "source.json"  # the prepared text a variant was built from, to rebuild it when that changes


def variant_dir(data_dir: str | Path, tokenizer: str, vocab_size: int = 0) -> Path:
    """Where `data_dir`'s text lives under `tokenizer` (and `vocab_size`, for a BPE): `data_dir` itself when it
    was prepared that way (or `tokenizer` is "prepared"), else a folder under `data_dir/tokenized/`."""
    base = Path(data_dir)
    if tokenizer not in TOKENIZER_CHOICES:
        raise DataError(f"unknown tokenizer {tokenizer!r}; choose one of {', '.join(TOKENIZER_CHOICES)}")
    if tokenizer == "bpe" and not MIN_VOCAB <= int(vocab_size) <= MAX_VOCAB:
        raise DataError(f"a BPE vocabulary size must be between {MIN_VOCAB} and {MAX_VOCAB:,}, got {vocab_size}")
    if base.parent.name == TOKENIZED_DIR:  # already a variant: its own text is the prepared one
        base = base.parent.parent
    if tokenizer == AS_PREPARED:
        return base
    if read_kind(base) == tokenizer and (tokenizer == "char" or _prepared_vocab_size(base) == int(vocab_size)):
        return base
    return base / TOKENIZED_DIR / ("char" if tokenizer == "char" else f"bpe-{int(vocab_size)}")


def _prepared_vocab_size(base: Path) -> int | None:
    try:
        return json.loads((base / META_JSON).read_text(encoding="utf-8")).get("vocab_size")
    except (OSError, ValueError):
        return None


def open_dataset(data_dir: str | Path) -> Dataset:
    """The dataset at `data_dir`, a tokenizer variant built first if it is one that is missing or stale."""
    path = Path(data_dir)
    if path.parent.name == TOKENIZED_DIR:
        _ensure_variant(path)
    return Dataset(path)


def _source(base: Path) -> dict[str, list[int]]:
    found = {}
    for name in (*SPLITS.values(), VOCAB_TXT):
        if not (base / name).is_file():
            raise DataError(f"{base / name} not found; run `python app.py prepare` to build the dataset")
        stat = (base / name).stat()
        found[name] = [stat.st_size, stat.st_mtime_ns]
    return found


def _ensure_variant(path: Path) -> None:
    base, source = path.parent.parent, _source(path.parent.parent)
    try:
        if json.loads((path / SOURCE_JSON).read_text(encoding="utf-8")) == source:
            return
    except (OSError, ValueError):
        pass
    kind, _, size = path.name.partition("-")
    if kind not in ("char", "bpe") or (kind == "bpe" and not size.isdigit()):
        raise DataError(f"{path.name} is not a tokenizer variant name (char or bpe-N)")
    log.info("building %s: %s of %s", path, kind if kind == "char" else f"a BPE of {size} tokens", base)
    path.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=".tmp-", dir=path.parent))
    try:
        for name in (*SPLITS.values(), VOCAB_TXT):
            try:
                os.link(base / name, building / name)  # the same text, no second copy on disk
            except OSError:
                shutil.copy2(base / name, building / name)
        if kind == "bpe":
            train_chars = _train_chars(base) or sum(len(piece) for piece in _chars_of(building / TRAIN_TXT))
            fit_bpe(building, int(size), train_chars).save(building / TOKENIZER_JSON)
        vocab = load_tokenizer(building)
        encode_text_files(building, vocab)
        _keep_source_stats(base, building)
        atomic_write_text(building / SOURCE_JSON, json.dumps(source) + "\n")
        fsync_dir(building)
        old = path.parent / f".tmp-old-{path.name}-{os.getpid()}"
        if path.exists():
            os.replace(path, old)
        try:
            os.replace(building, path)
        except OSError:  # another worker put its own in place first: use that one
            if not (path / SOURCE_JSON).is_file():
                raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(building, ignore_errors=True)


def _keep_source_stats(base: Path, variant: Path) -> None:
    """What prepare recorded of the sources (names, characters, split) carries over to the variant's meta."""
    try:
        stats = json.loads((base / META_JSON).read_text(encoding="utf-8")).get("stats")
        meta = json.loads((variant / META_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if stats:
        atomic_write_text(variant / META_JSON, json.dumps({**meta, "stats": stats}, indent=2) + "\n")


def _train_chars(base: Path) -> int | None:
    """The training split's characters as prepare recorded them (no second read of the text)."""
    try:
        return json.loads((base / META_JSON).read_text(encoding="utf-8")).get("chars", {}).get("train")
    except (OSError, ValueError, AttributeError):
        return None


def _chars_of(path: Path):
    with open(path, encoding="utf-8", newline="") as handle:
        while block := handle.read(1 << 20):
            yield block

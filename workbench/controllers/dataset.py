"""The Dataset tab's work: the corpus in use described, a new one prepared in the background."""

from __future__ import annotations

import contextlib
import html
import json
from pathlib import Path
from typing import Any

from core.bpe import describe
from core.data import DataError, Dataset, prepare
from core.tune.speed import known_step_s
from core.tune.tokenizer import tokenizer_outlook
from core.vocab import Vocab
from workbench.jobs import JobBusy, JobManager
from workbench.project import Project
from workbench.views import KEEP, error_html, job_status_html, ok_html, progress_html

DEFAULT, UPLOAD, PATH = "Default corpus (Shakespeare)", "Upload text files", "Files or folders on the server"
SAMPLE_CHARS = 600


def _added(stats: dict[str, Any]) -> str:
    count = (stats or {}).get("line_ends_added") or 0
    return f", with {count} line end{'s' if count > 1 else ''} added after a text that lacked one" if count else ""


def corpus_overview(project: Project) -> tuple[str, str]:
    """Markdown with the prepared dataset's statistics, and a sample of its training text."""
    if not project.has_dataset():
        return "**No dataset yet.** Prepare one below (the default corpus takes a few seconds).", ""
    try:
        dataset = Dataset(project.data_dir)
    except DataError as err:
        return f"**The dataset in `dataset/` cannot be used:** {err}", ""
    meta: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        meta = json.loads((project.data_dir / "meta.json").read_text(encoding="utf-8"))
    chars = meta.get("chars") or {split: len(tokens) for split, tokens in dataset.tokens.items()}
    meta = meta.get("stats") or {}
    train, val = chars["train"], chars["val"]
    characters = Vocab.load(project.data_dir / "vocab.txt").chars  # a BPE's are its tokens' bytes, not shown
    # a character with no glyph (a control, a format mark) shows as its code point, not as a box
    shown = "".join({"\n": "⏎", "\t": "⇥", " ": "␠"}.get(c) or (c if c.isprintable() else f"U+{ord(c):04X} ")
                    for c in characters)  # fmt: skip
    sources = meta.get("sources") or []
    source_text = ", ".join(s.rsplit("/", 1)[-1] for s in sources[:5]) + (" …" if len(sources) > 5 else "")
    bpe = dataset.vocab.kind == "bpe"
    rows = [
        ("Characters", f"{train + val:,} (train {train:,} / validation {val:,})" + _added(meta)),
        # a BPE's vocabulary is its tokens: the characters are then only what the text holds
        (
            "Characters in the text" if bpe else "Vocabulary",
            f"{len(characters)} distinct: <code>{html.escape(shown)}</code>",
        ),
    ]
    if bpe:
        sample_text = (project.data_dir / "output_val.txt").read_text(encoding="utf-8", errors="replace")[:20_000]
        shown_bpe = describe(dataset.vocab, sample_text)
        longest = ", ".join(f"<code>{html.escape(repr(t))}</code>" for t in shown_bpe["longest"])
        rows.append(("Vocabulary", f"a byte-level BPE of {len(dataset.vocab):,} tokens, "
                                   f"{shown_bpe['tokens_per_char']:.2f} tokens a character; longest: {longest}"))  # fmt: skip
    else:
        rows.append(
            (
                "Tokenizer",
                f"characters (one token a character). {tokenizer_outlook(dataset, known_step_s(project.data_dir))}",
            )
        )
    if meta:
        rows.insert(0, ("Source", html.escape(source_text or "-")))
        rows.append(("Text", f"{meta.get('input_bytes', 0) / 1e6:.2f} MB, {meta.get('lines', 0):,} lines"))
    table = "\n".join(f"- **{k}:** {v}" for k, v in rows)
    with open(project.data_dir / "output_train.txt", encoding="utf-8", errors="replace") as handle:
        sample = handle.read(SAMPLE_CHARS)
    return table, sample


class DatasetController:
    def __init__(self, project: Project, jobs: JobManager):
        self.project, self.jobs = project, jobs

    def start(self, choice: str, uploaded: list[str] | None, path_text: str, fraction: float, errors: str,
              tokenizer: str = "char", vocab_size: float = 2048) -> str:  # fmt: skip
        for kind in ("tune", "train"):
            running = self.jobs.active(kind)
            if running is not None:
                return error_html(f"{running.title} is using the dataset; stop it or wait before preparing a new one.")
        try:
            names: dict[Path, str] = {}
            if choice == UPLOAD:
                names = self.project.store_uploads([str(p) for p in uploaded or []])
                inputs = list(names)
                title = f"preparing {len(inputs)} uploaded file(s)"
            elif choice == PATH:
                inputs = self.project.server_inputs(path_text)
                title = f"preparing {len(inputs)} file(s) from the project folder"
            else:
                inputs, title = None, "preparing the default corpus"
            if not fraction or not 0 < fraction < 1:
                raise DataError(f"the validation fraction must be between 0 and 1, got {fraction}")
        except (DataError, OSError) as err:
            return error_html(str(err))

        def run(job):
            stats = prepare(inputs, self.project.data_dir, val_fraction=float(fraction), errors=errors,
                            on_progress=lambda f, m: job.update(progress=f, message=m),
                            tokenizer=tokenizer or "char", vocab_size=int(vocab_size or 2048),
                            names={str(path): name for path, name in names.items()})  # fmt: skip
            job.update(message=stats.summary().replace("\n", "; "))
            return stats

        try:
            self.jobs.start("prepare", title, run)
        except JobBusy as err:
            return error_html(str(err))
        return ok_html(f"Started: {title}.")

    def view(self, last: int) -> tuple[int, tuple]:
        """(version, (bar, status, overview, sample)); KEEP where nothing changed."""
        job = self.jobs.get("prepare")
        snap = job.snapshot() if job else None
        version = snap["version"] if snap else 0
        if version == last:
            return last, (KEEP,) * 4
        if snap and snap["active"]:
            bar = progress_html(snap["progress"], f"{snap['progress']:.0%} — {snap['message']}")
            return version, (bar, job_status_html(snap, ""), KEEP, KEEP)
        table, text = corpus_overview(self.project)
        bar = progress_html(snap["progress"] if snap else 0, "done" if snap and snap["status"] == "done" else "idle")
        return version, (bar, job_status_html(snap, "") if snap else KEEP, table, text)

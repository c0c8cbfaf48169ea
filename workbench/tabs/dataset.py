"""Dataset tab: the current corpus, and preparing a new one from the default corpus, uploads or a path."""

from __future__ import annotations

import contextlib
import html
import json
from typing import Any

import gradio as gr

from core.data import DataError, Dataset, prepare
from workbench.jobs import JobBusy, JobManager
from workbench.project import UPLOAD_LIMIT_MB, Project
from workbench.ui import error_html, job_status_html, ok_html, progress_html

DEFAULT, UPLOAD, PATH = "Default corpus (Shakespeare)", "Upload text files", "Files or folders on the server"
SAMPLE_CHARS = 600


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
        meta = json.loads((project.data_dir / "meta.json").read_text(encoding="utf-8")).get("stats") or {}
    train, val = len(dataset.tokens["train"]), len(dataset.tokens["val"])
    shown = "".join({"\n": "⏎", "\t": "⇥", " ": "␠"}.get(c, c) for c in dataset.vocab.chars)
    sources = meta.get("sources") or []
    source_text = ", ".join(s.rsplit("/", 1)[-1] for s in sources[:5]) + (" …" if len(sources) > 5 else "")
    rows = [
        ("Characters", f"{train + val:,} (train {train:,} / validation {val:,})"),
        ("Vocabulary", f"{len(dataset.vocab)} characters: <code>{html.escape(shown)}</code>"),
    ]
    if meta:
        rows.insert(0, ("Source", html.escape(source_text or "-")))
        rows.append(("Text", f"{meta.get('input_bytes', 0) / 1e6:.2f} MB, {meta.get('lines', 0):,} lines"))
    table = "\n".join(f"- **{k}:** {v}" for k, v in rows)
    with open(project.data_dir / "output_train.txt", encoding="utf-8", errors="replace") as handle:
        sample = handle.read(SAMPLE_CHARS)
    return table, sample


def build_dataset(project: Project, jobs: JobManager) -> dict[str, Any]:
    gr.Markdown(
        "The model learns from the text in `dataset/`. Prepare it from the default corpus, from text files "
        f"you upload (UTF-8, up to {UPLOAD_LIMIT_MB} MB in all), or from files in the corpora/ folder."
    )
    with gr.Row():
        with gr.Column(scale=3):
            gr.Markdown("### Current corpus")
            overview = gr.Markdown()
            sample = gr.Textbox(label="Sample of the training text", lines=8, max_lines=8, interactive=False)
        with gr.Column(scale=2):
            gr.Markdown("### Prepare a new corpus")
            source = gr.Radio([DEFAULT, UPLOAD, PATH], value=DEFAULT, label="Source")
            files = gr.File(
                label="Text files (.txt, .md, .text, .rst)",
                file_count="multiple",
                file_types=[".txt", ".md", ".text", ".rst"],
                visible=False,
            )
            server_path = gr.Textbox(
                label="Paths inside corpora/ or uploads/ (one per line; folders are read recursively)",
                placeholder="corpora/my_book.txt",
                lines=2,
                visible=False,
            )
            with gr.Row():
                val_fraction = gr.Number(
                    value=0.1, minimum=0.01, maximum=0.5, step=0.01, label="Validation fraction", min_width=120
                )
                errors = gr.Dropdown(
                    ["strict", "replace"],
                    value="strict",
                    label="Undecodable bytes",
                    info="strict: refuse the file; replace: substitute and count",
                    min_width=120,
                )
            prepare_btn = gr.Button("Prepare dataset", variant="primary")
            message = gr.HTML()
            progress = gr.HTML(progress_html(0, "idle"))

    def on_source(choice: str):
        return gr.update(visible=choice == UPLOAD), gr.update(visible=choice == PATH)

    source.change(on_source, source, [files, server_path], api_visibility="private")

    def start(choice: str, uploaded: list[str] | None, path_text: str, fraction: float, errors_mode: str) -> str:
        for kind in ("tune", "train"):
            running = jobs.active(kind)
            if running is not None:
                return error_html(f"{running.title} is using the dataset; stop it or wait before preparing a new one.")
        try:
            if choice == UPLOAD:
                inputs = project.store_uploads([str(p) for p in uploaded or []])
                title = f"preparing {len(inputs)} uploaded file(s)"
            elif choice == PATH:
                inputs = project.server_inputs(path_text)
                title = f"preparing {len(inputs)} file(s) from the project folder"
            else:
                inputs, title = None, "preparing the default corpus"
            if not fraction or not 0 < fraction < 1:
                raise DataError(f"the validation fraction must be between 0 and 1, got {fraction}")
        except (DataError, OSError) as err:
            return error_html(str(err))

        def run(job):
            stats = prepare(
                inputs,
                project.data_dir,
                val_fraction=float(fraction),
                errors=errors_mode,
                on_progress=lambda f, m: job.update(progress=f, message=m),
            )
            job.update(message=stats.summary().replace("\n", "; "))
            return stats

        try:
            jobs.start("prepare", title, run)
        except JobBusy as err:
            return error_html(str(err))
        return ok_html(f"Started: {title}.")

    prepare_btn.click(start, [source, files, server_path, val_fraction, errors], message, api_name="prepare_start")

    seen = gr.State(-1)

    def tick(last: int):
        job = jobs.get("prepare")
        snap = job.snapshot() if job else None
        version = snap["version"] if snap else 0
        if version == last:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), last
        if snap and snap["active"]:
            bar = progress_html(snap["progress"], f"{snap['progress']:.0%} — {snap['message']}")
            return bar, job_status_html(snap, ""), gr.skip(), gr.skip(), version
        table, text = corpus_overview(project)
        bar = progress_html(snap["progress"] if snap else 0, "done" if snap and snap["status"] == "done" else "idle")
        status = job_status_html(snap, "") if snap else gr.skip()
        return bar, status, table, text, version

    timer = gr.Timer(1.0)
    timer.tick(
        tick, seen, [progress, message, overview, sample, seen], api_visibility="private", show_progress="hidden"
    )
    return {"overview": overview, "sample": sample, "prepare": prepare_btn, "message": message}

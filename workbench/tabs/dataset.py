"""Dataset tab layout and wiring; what its button does lives in workbench.controllers.dataset."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from workbench.controllers.dataset import DEFAULT, PATH, UPLOAD, DatasetController
from workbench.jobs import JobManager
from workbench.project import UPLOAD_LIMIT_MB, Project
from workbench.views import KEEP, progress_html


def _prepare_form() -> SimpleNamespace:
    gr.Markdown("### Prepare a new corpus")
    source = gr.Radio([DEFAULT, UPLOAD, PATH], value=DEFAULT, label="Source")
    files = gr.File(label="Text files (.txt, .md, .text, .rst)", file_count="multiple",
                    file_types=[".txt", ".md", ".text", ".rst"], visible=False)  # fmt: skip
    server_path = gr.Textbox(label="Paths inside corpora/ or uploads/ (one per line; folders are read recursively)",
                             placeholder="corpora/my_book.txt", lines=2, visible=False)  # fmt: skip
    with gr.Row():
        val_fraction = gr.Number(value=0.1, minimum=0.01, maximum=0.5, step=0.01, label="Validation fraction",
                                 min_width=120)  # fmt: skip
        errors = gr.Dropdown(["strict", "replace"], value="strict", label="Undecodable bytes",
                             info="strict: refuse the file; replace: substitute and count", min_width=120)  # fmt: skip
    with gr.Row():
        tokenizer = gr.Radio(
            ["char", "bpe"],
            value="char",
            label="Tokenizer",
            info="char: one token a character; bpe: a byte-level BPE trained on your text",
            min_width=120,
        )
        vocab_size = gr.Number(value=2048, precision=0, minimum=256, maximum=65535, label="BPE vocabulary size",
                               visible=False, min_width=120)  # fmt: skip
    tokenizer.change(lambda kind: gr.update(visible=kind == "bpe"), tokenizer, vocab_size, api_visibility="private")
    return SimpleNamespace(source=source, files=files, server_path=server_path, val_fraction=val_fraction,
                           errors=errors, tokenizer=tokenizer, vocab_size=vocab_size, button=gr.Button("Prepare dataset", variant="primary"),
                           message=gr.HTML(label="Status", show_label=True, container=True, padding=True),
                           progress=gr.HTML(progress_html(0, "idle"), label="Progress", show_label=True, container=True, padding=True))  # fmt: skip


def build_dataset(project: Project, jobs: JobManager) -> None:
    control = DatasetController(project, jobs)
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
            form = _prepare_form()
    form.source.change(lambda choice: (gr.update(visible=choice == UPLOAD), gr.update(visible=choice == PATH)),
                       form.source, [form.files, form.server_path], api_visibility="private")  # fmt: skip
    form.button.click(control.start, [form.source, form.files, form.server_path, form.val_fraction, form.errors,
                                      form.tokenizer, form.vocab_size],
                      form.message, api_name="prepare_start")  # fmt: skip
    seen = gr.State(-1)

    def tick(last: int):
        version, fields = control.view(last)
        return (*(gr.skip() if value is KEEP else value for value in fields), version)

    gr.Timer(1.0).tick(tick, seen, [form.progress, form.message, overview, sample, seen], api_visibility="private",
                       show_progress="hidden")  # fmt: skip

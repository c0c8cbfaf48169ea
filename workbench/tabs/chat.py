"""Chat tab layout and wiring; what it does lives in workbench.controllers.chat."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import gradio as gr

from core.sampling import SamplingConfig
from workbench.controllers.chat import CONCURRENT_CHATS, ChatController, ChatError
from workbench.project import Project
from workbench.views import KEEP


def _settings() -> list[Any]:
    gr.Markdown("**Sampling**")
    defaults = SamplingConfig()
    return [
        gr.Slider(0, 2, value=defaults.temperature, step=0.05, label="Temperature (0 = greedy)"),
        gr.Slider(0, 200, value=defaults.top_k, step=1, label="Top-k (0 = all)"),
        gr.Slider(0.05, 1, value=defaults.top_p, step=0.05, label="Top-p"),
        gr.Slider(0.5, 2, value=defaults.repetition_penalty, step=0.05, label="Repetition penalty"),
        gr.Slider(1, 2000, value=defaults.max_new_tokens, step=1, label="Max new characters"),
        gr.Number(value=defaults.seed, precision=0, label="Seed (-1 = random)"),
    ]


def _conversation(names: list[str]) -> SimpleNamespace:
    with gr.Row():
        model = gr.Dropdown(choices=names, value=names[0] if names else None, label="Model",
                            allow_custom_value=True,  # the list changes as models are saved; names are checked
                            info="Saved models, newest first (train one in the Train tab)", scale=4)  # fmt: skip
        refresh = gr.Button("Refresh list", size="sm", scale=1, min_width=80)
    chatbot = gr.Chatbot(label="Conversation", height=430, buttons=["copy"], placeholder="Say something.")
    with gr.Row():
        box = gr.Textbox(placeholder="Type a message and press Enter", label="Message", show_label=False, lines=1,
                         max_lines=6, scale=8)  # fmt: skip
        send = gr.Button("Send", variant="primary", scale=1, min_width=70)
        stop = gr.Button("Stop", variant="stop", scale=1, min_width=70)
        clear = gr.Button("Clear", scale=1, min_width=70, elem_id="chat-clear")
    return SimpleNamespace(model=model, refresh=refresh, chatbot=chatbot, box=box, send=send, stop=stop, clear=clear,
                           notice=gr.HTML(label="Notice"))  # fmt: skip


def build_chat(project: Project) -> dict[str, Any]:
    control = ChatController(project)
    gr.Markdown(
        "A character model has no notion of turns: your message is added to the conversation and the model "
        f"continues it, until a blank line once the reply has {SamplingConfig.min_reply_chars} characters. "
        "**Clear** starts a new conversation."
    )
    with gr.Row():
        with gr.Column(scale=3):
            ui = _conversation(control.models(None)[0])
        with gr.Column(scale=1, min_width=240):
            settings = _settings()
    with gr.Accordion("Model card and export", open=False):
        card = gr.Markdown(control.card(ui.model.value), elem_id="model-card")
        with gr.Row():
            export = gr.Button("Export to ONNX", scale=1, min_width=160)
            download = gr.File(label="Download (model.onnx, tokenizer, card)", interactive=False, scale=3)
        exported = gr.Markdown()
    transcript = gr.State("")

    def respond(*values) -> Iterator[tuple[Any, ...]]:
        try:
            for update in control.respond(*values):
                yield tuple(gr.skip() if value is KEEP else value for value in update)
        except ChatError as err:
            raise gr.Error(str(err)) from None

    replying = gr.on([ui.box.submit, ui.send.click], respond, [ui.box, ui.chatbot, transcript, ui.model, *settings],
                     [ui.chatbot, transcript, ui.box, ui.notice], api_name="chat", show_progress="hidden",
                     concurrency_limit=CONCURRENT_CHATS)  # fmt: skip
    ui.stop.click(None, None, None, cancels=[replying])
    # Clear also ends a reply still streaming, whose next update would bring the conversation back.
    ui.clear.click(lambda: ([], "", ""), None, [ui.chatbot, transcript, ui.notice], cancels=[replying],
                   api_visibility="private")  # fmt: skip
    ui.model.change(lambda: ([], "", ""), None, [ui.chatbot, transcript, ui.notice], api_visibility="private")

    # another model: its card, and no download or message left from the last one's export
    ui.model.change(lambda name: (control.card(name), None, ""), ui.model, [card, download, exported],
                    api_visibility="private")  # fmt: skip

    def export_model(name: str | None):
        try:
            return control.export(name)
        except ChatError as err:  # a toast and a line, not a red error pill left in the download slot
            gr.Warning(str(err))
            return None, f"**Not exported:** {err}"

    export.click(export_model, ui.model, [download, exported], api_name="export")

    def refresh_models(current: str | None):
        names, value = control.models(current)
        return gr.update(choices=names, value=value)

    ui.refresh.click(refresh_models, ui.model, ui.model, api_visibility="private")
    return {"model": ui.model, "refresh": (refresh_models, ui.model), "chatbot": ui.chatbot}

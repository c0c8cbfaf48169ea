"""Chat tab: pick a saved model and chat with streamed replies; works while a training job runs.

Models are cached by folder and weights mtime, so a model that training is still saving is reloaded
when its weights change. The conversation's running text lives in the browser session (gr.State).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import gradio as gr

from core import checkpoint as ckpt
from core.chat import REPLY_END, ChatSession
from core.device import pick_device
from core.sampling import SamplingConfig
from workbench.project import Project
from workbench.studies import model_names

CACHE_SIZE = 3
UPDATE_EVERY_S = 0.05  # streamed replies reach the page at most 20 times a second
CONCURRENT_CHATS = 32  # replies generated at once; more sessions wait in Gradio's queue


class ModelCache:
    """Loaded models keyed by (folder, weights mtime); the few most recent are kept."""

    def __init__(self, project: Project, size: int = CACHE_SIZE):
        self.project = project
        self.size = size
        self._models: OrderedDict[tuple[str, int], ckpt.LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str) -> ckpt.LoadedModel:
        folder = ckpt.model_dir(name, self.project.models_dir)
        weights = folder / ckpt.WEIGHTS
        if not weights.is_file():
            known = ", ".join(model_names(self.project)) or "none yet"
            raise ckpt.ModelError(f"no saved model named {name!r} (saved models: {known})")
        key = (str(folder), weights.stat().st_mtime_ns)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            loaded = ckpt.load_model(folder, self.project.models_dir, device=pick_device("auto"))
            self._models[key] = loaded
            for old in [k for k in self._models if k[0] == key[0] and k != key]:
                del self._models[old]
            while len(self._models) > self.size:
                self._models.popitem(last=False)
            return loaded


_GENERATION_LOCK = threading.Lock()


def _one_at_a_time(pieces: Iterator[str]) -> Iterator[str]:
    """Take turns, character by character, with the other conversations.

    Many threads running small forward passes at once oversubscribe the cores (each op is itself
    multi-threaded) and fight over the GIL; one step at a time serves every session faster.
    """
    while True:
        with _GENERATION_LOCK:
            piece = next(pieces, None)
        if piece is None:
            return
        yield piece


def _text(content: Any) -> str:
    """A chat message's text, whether Gradio gives a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if isinstance(content, dict):
        return str(content.get("text", ""))
    return ""


def build_chat(project: Project) -> dict[str, Any]:
    cache = ModelCache(project)
    names = model_names(project)
    gr.Markdown(
        "A character model has no notion of turns: your message is added to the conversation and the model "
        "continues it until a blank line. **Clear** starts a new conversation."
    )
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                model = gr.Dropdown(
                    choices=names,
                    value=names[0] if names else None,
                    label="Model",
                    allow_custom_value=True,  # the list changes as models are saved; names are checked
                    info="Saved models, newest first (train one in the Train tab)",
                    scale=4,
                )
                refresh = gr.Button("Refresh list", size="sm", scale=1, min_width=80)
            chatbot = gr.Chatbot(label="Conversation", height=430, buttons=["copy"], placeholder="Say something.")
            with gr.Row():
                box = gr.Textbox(
                    placeholder="Type a message and press Enter",
                    label="Message",
                    show_label=False,
                    lines=1,
                    max_lines=6,
                    scale=8,
                )
                send = gr.Button("Send", variant="primary", scale=1, min_width=70)
                stop = gr.Button("Stop", variant="stop", scale=1, min_width=70)
                clear = gr.Button("Clear", scale=1, min_width=70, elem_id="chat-clear")
            notice = gr.HTML(label="Notice")
        with gr.Column(scale=1, min_width=240):
            gr.Markdown("**Sampling**")
            defaults = SamplingConfig()
            temperature = gr.Slider(0, 2, value=defaults.temperature, step=0.05, label="Temperature (0 = greedy)")
            top_k = gr.Slider(0, 200, value=defaults.top_k, step=1, label="Top-k (0 = all)")
            top_p = gr.Slider(0.05, 1, value=defaults.top_p, step=0.05, label="Top-p")
            penalty = gr.Slider(0.5, 2, value=defaults.repetition_penalty, step=0.05, label="Repetition penalty")
            max_tokens = gr.Slider(1, 2000, value=defaults.max_new_tokens, step=1, label="Max new characters")
            seed = gr.Number(value=defaults.seed, precision=0, label="Seed (-1 = random)")
    transcript = gr.State("")

    def respond(
        message: str,
        history: list[dict] | None,
        text: str,
        name: str | None,
        temp: float,
        k: float,
        p: float,
        rep: float,
        max_new: float,
        seed_value: float,
    ) -> Iterator[tuple[Any, ...]]:
        history = list(history or [])
        if not (message or "").strip():
            raise gr.Error("Type a message first.")
        if not name:
            raise gr.Error("No model chosen: train one in the Train tab, then press Refresh list.")
        try:
            loaded = cache.get(name)
            settings = SamplingConfig(
                temperature=float(temp),
                top_k=int(k),
                top_p=float(p),
                repetition_penalty=float(rep),
                max_new_tokens=int(max_new),
                seed=int(seed_value if seed_value is not None else -1),
            ).validate()
        except (ckpt.ModelError, ValueError) as err:
            raise gr.Error(str(err)) from None
        session = ChatSession(loaded, settings, transcript=text or "")
        note = session.unknown_notice(message) or ""
        history += [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        yield history, session.transcript, "", note
        reply = ""
        last_sent = 0.0
        for piece in _one_at_a_time(session.reply(message)):  # it adds the message to its transcript first
            reply += piece
            now = time.monotonic()
            if now - last_sent >= UPDATE_EVERY_S:  # each update resends the conversation: not one per character
                last_sent = now
                history[-1] = {"role": "assistant", "content": reply}
                yield history, session.transcript + reply + REPLY_END, gr.skip(), gr.skip()
        history[-1] = {"role": "assistant", "content": reply}
        if not reply:
            history[-1] = {"role": "assistant", "content": "(no reply: the model ended at once)"}
        yield history, session.transcript, gr.skip(), gr.skip()

    chat_inputs = [box, chatbot, transcript, model, temperature, top_k, top_p, penalty, max_tokens, seed]
    chat_outputs = [chatbot, transcript, box, notice]
    replying = gr.on(
        [box.submit, send.click],
        respond,
        chat_inputs,
        chat_outputs,
        api_name="chat",
        show_progress="hidden",
        concurrency_limit=CONCURRENT_CHATS,
    )
    stop.click(None, None, None, cancels=[replying])
    # Clear also ends a reply still streaming, whose next update would bring the conversation back.
    clear.click(lambda: ([], "", ""), None, [chatbot, transcript, notice], cancels=[replying], api_visibility="private")
    model.change(lambda: ([], "", ""), None, [chatbot, transcript, notice], api_visibility="private")

    def refresh_models(current: str | None):
        names = model_names(project)
        return gr.update(choices=names, value=current if current in names else (names[0] if names else None))

    refresh.click(refresh_models, model, model, api_visibility="private")
    return {"model": model, "refresh": (refresh_models, model), "chatbot": chatbot}

"""The Chat tab's work: saved models loaded (and reloaded when retrained) and replies streamed, taking turns.

Models are cached by folder and weights mtime, so a model that training is still saving is reloaded
when its weights change. The conversation's running text lives in the browser session (gr.State).
"""

from __future__ import annotations

import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

from core import checkpoint as ckpt
from core.card import read_card
from core.chat import REPLY_END, ChatSession
from core.device import pick_device
from core.export import export_model
from core.sampling import SamplingConfig
from workbench.project import Project
from workbench.studies import model_names
from workbench.views import KEEP

CACHE_SIZE = 3
UPDATE_EVERY_S = 0.05  # streamed replies reach the page at most 20 times a second
CONCURRENT_CHATS = 32  # replies generated at once; more sessions wait in Gradio's queue


def saved_model(project: Project, name: str) -> Path:
    """The folder of saved model `name`; the error names the saved models, never a server path."""
    folder = ckpt.model_dir(name, project.models_dir)
    if not (folder / ckpt.WEIGHTS).is_file():
        known = ", ".join(model_names(project)) or "none yet"
        raise ckpt.ModelError(f"no saved model named {name!r} (saved models: {known})")
    return folder


class ModelCache:
    """Loaded models keyed by (folder, weights mtime); the few most recent are kept."""

    def __init__(self, project: Project, size: int = CACHE_SIZE):
        self.project = project
        self.size = size
        self._models: OrderedDict[tuple[str, int], ckpt.LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str) -> ckpt.LoadedModel:
        folder = saved_model(self.project, name)
        weights = folder / ckpt.WEIGHTS
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


SETTINGS = ("temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens", "seed")


class ChatError(ValueError):
    """Shown to the user as it is."""


class ChatController:
    def __init__(self, project: Project):
        self.project, self.cache = project, ModelCache(project)

    def respond(self, message: str, history: list[dict] | None, text: str, name: str | None, *values: float
                ) -> Iterator[tuple]:  # fmt: skip
        """(history, transcript, the message box, a notice) as the reply streams; `values` are SETTINGS."""
        history = list(history or [])
        if not (message or "").strip():
            raise ChatError("Type a message first.")
        if not name:
            raise ChatError("No model chosen: train one in the Train tab, then press Refresh list.")
        try:
            loaded = self.cache.get(name)
            given = dict(zip(SETTINGS, values))
            settings = SamplingConfig(
                temperature=float(given["temperature"]), top_k=int(given["top_k"]), top_p=float(given["top_p"]),
                repetition_penalty=float(given["repetition_penalty"]), max_new_tokens=int(given["max_new_tokens"]),
                seed=int(given["seed"] if given["seed"] is not None else -1),
            ).validate()  # fmt: skip
        except (ckpt.ModelError, ValueError) as err:
            raise ChatError(str(err)) from None
        session = ChatSession(loaded, settings, transcript=text or "", shared=True)
        history += [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        yield history, session.transcript, "", session.unknown_notice(message) or ""
        reply, last_sent = "", 0.0
        for piece in session.reply(message):  # it adds the message to its transcript first
            reply += piece
            now = time.monotonic()
            if now - last_sent >= UPDATE_EVERY_S:  # each update resends the conversation: not one per character
                last_sent = now
                history[-1] = {"role": "assistant", "content": reply}
                yield history, session.transcript + reply + REPLY_END, KEEP, KEEP
        history[-1] = {"role": "assistant", "content": reply or "(no reply: the model ended at once)"}
        yield history, session.transcript, KEEP, KEEP

    def card(self, name: str | None) -> str:
        """The model card of `name` (its README.md), as the Chat tab shows it."""
        if not name:
            return "No model chosen."
        try:
            return read_card(saved_model(self.project, name))
        except (ckpt.ModelError, OSError, ValueError) as err:
            return f"No card: {err}"

    def export(self, name: str | None) -> tuple[str, str]:
        """Export `name` to ONNX, checked against PyTorch; (a zip of its export folder to download, a message)."""
        if not name:
            raise ChatError("No model chosen: train one in the Train tab, then press Refresh list.")
        try:
            result = export_model(saved_model(self.project, name), check=True)
        except ckpt.ModelError as err:
            raise ChatError(str(err)) from None
        archive = Path(tempfile.mkdtemp(prefix="export-")) / f"{name}-onnx.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:  # the ONNX files, not export/hf/
            for path in sorted(p for p in result.folder.iterdir() if p.is_file()):
                bundle.write(path, path.name)
        return str(archive), (
            f"Exported to models/{name}/export in {result.seconds:.1f} s: model.onnx, the tokenizer and the card. "
            f"Checked in onnxruntime: the largest logit difference from PyTorch is {result.max_abs_diff:.1e}."
        )

    def models(self, current: str | None) -> tuple[list[str], str | None]:
        names = model_names(self.project)
        return names, current if current in names else (names[0] if names else None)

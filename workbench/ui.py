"""The gradio pieces the tabs share: the page's CSS and remembering a text box across reloads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

CSS = """
.wb-bar { background: var(--block-background-fill); border: 1px solid var(--border-color-primary);
  border-radius: 6px; height: 30px; position: relative; overflow: hidden; }
.wb-bar > div { height: 100%; background: var(--color-accent); opacity: .3; transition: width .4s; }
.wb-bar > span { position: absolute; inset: 0; display: flex; align-items: center; padding-left: 10px;
  font-size: 14px; font-weight: 600; color: var(--body-text-color); white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }
.wb-status { font-size: 14px; margin: 4px 0; }
.wb-error { color: #b91c1c; white-space: pre-wrap; }
.wb-ok { color: #15803d; }
.wb-plan { font-size: 13px; color: var(--body-text-color-subdued); }
.wb-continuation pre { white-space: pre-wrap; word-break: break-word; margin: 4px 0 12px; font-size: 13px; }
"""


def remember(box: gr.Textbox, key: str, prefer: Callable[[], Any] | None = None) -> tuple:
    """Keep what the user typed in `box` across reloads, in the browser's storage; returns the page-load step
    that puts it back, or what `prefer()` says instead when it says something (the job the server runs)."""
    stored = gr.BrowserState(None, storage_key=key)
    box.change(lambda value: value, box, stored, api_visibility="private")

    def restore(value):
        preferred = prefer() if prefer else None
        if preferred is not None:
            return preferred
        return value if value not in (None, "") else gr.skip()

    return (restore, stored, box)

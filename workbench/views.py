"""What the pages show, built without gradio: a progress bar, job status text, messages, loss curves; `KEEP`
where a view field stays as it is."""

from __future__ import annotations

import html
from typing import Any

import plotly.graph_objects as go

from workbench.jobs import DONE, FAILED, INTERRUPTED, RUNNING, STOPPED, STOPPING

KEEP = object()  # a view field the page keeps as it is (the tabs turn it into gr.skip())
NO_BASE = "none (from scratch)"  # the "Start from" lists' first choice
LOSS_COLOURS = {"train": "#2563eb", "val": "#ea580c"}  # the same on every chart, whichever curves it has
STATUS_LABEL = {
    RUNNING: "running",
    STOPPING: "stopping",
    DONE: "finished",
    STOPPED: "stopped",
    FAILED: "failed",
    INTERRUPTED: "interrupted",
}


def fmt_seconds(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "-"
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_html(fraction: float, text: str) -> str:
    width = f"{100 * min(1.0, max(0.0, fraction)):.1f}%"
    return f'<div class="wb-bar"><div style="width:{width}"></div><span>{html.escape(text)}</span></div>'


def job_status_html(snap: dict[str, Any] | None, idle: str) -> str:
    """One line on the state of a job: running/finished/stopped, or its error in red."""
    if snap is None:
        return f'<div class="wb-status">{html.escape(idle)}</div>'
    label = STATUS_LABEL.get(snap["status"], snap["status"])
    if snap["status"] == INTERRUPTED:
        return (
            f'<div class="wb-status wb-error"><b>{html.escape(snap["title"])}</b>: interrupted — the server '
            "stopped while it ran. Press <b>Resume</b> to continue it from where it was saved.</div>"
        )
    head = f"<b>{html.escape(snap['title'])}</b>: {label} after {fmt_seconds(snap['elapsed'])}"
    if snap["status"] == FAILED:
        return f'<div class="wb-status wb-error">{head}<br>{html.escape(snap["error"])}</div>'
    css = "wb-status wb-ok" if snap["status"] == DONE else "wb-status"
    message = f" — {html.escape(snap['message'])}" if snap["message"] and not snap["active"] else ""
    return f'<div class="{css}">{head}{message}</div>'


def error_html(text: str) -> str:
    return f'<div class="wb-status wb-error">{html.escape(text)}</div>'


def ok_html(text: str) -> str:
    return f'<div class="wb-status wb-ok">{html.escape(text)}</div>'


def loss_figure(evals: list[dict[str, Any]], steps: list[dict[str, Any]] | None = None, title: str = "") -> go.Figure:
    """Train/val loss at each evaluation, plus the per-step training loss when given."""
    fig = go.Figure()
    if steps:
        stride = max(1, len(steps) // 600)
        thin = steps[::stride]
        fig.add_scatter(
            x=[s["step"] for s in thin],
            y=[s["loss"] for s in thin],
            mode="lines",
            name="step loss",
            line={"width": 1, "color": "rgba(120,120,120,0.45)"},
        )
    if evals:
        for key, name in (("train_loss", "train"), ("val_loss", "val")):
            fig.add_scatter(x=[e["step"] for e in evals], y=[e[key] for e in evals], mode="lines+markers", name=name,
                            line={"color": LOSS_COLOURS[name]})  # fmt: skip
    fig.update_layout(
        title=title or None,
        xaxis_title="step",
        yaxis_title="loss (nats/char)",
        height=340,
        margin={"l": 50, "r": 20, "t": 40 if title else 20, "b": 40},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1, "xanchor": "right"},
    )
    return fig


def curves_figure(curves: dict[str, list[tuple[float, float]]]) -> go.Figure:
    """Validation loss of several models against the characters each had seen, on one plot."""
    fig = go.Figure()
    for name, points in curves.items():
        fig.add_scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers", name=name)
    fig.update_layout(
        xaxis_title="characters seen (millions)",
        yaxis_title="val loss (nats/char)",
        height=340,
        margin={"l": 50, "r": 20, "t": 20, "b": 40},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1, "xanchor": "right"},
    )
    return fig


def picked_base(choice: str | None) -> str | None:
    """The saved model a "Start from" list names, or None for a run from scratch."""
    return None if choice in (None, "", NO_BASE) else choice

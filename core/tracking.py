"""A run's numbers reported to a dashboard besides its metrics.jsonl (`--report-to`): TensorBoard's event files
under tracking/tensorboard/GROUP/NAME, or trackio's SQLite under tracking/trackio, whose dashboard is
`trackio show --project chargpt-workbench` (with TRACKIO_DIR=tracking/trackio).

A run reports at each evaluation what metrics.jsonl records then (losses per character, learning rate,
tokens per second, seconds), its config when it starts and its sample when it ends. A tournament's candidate
or a study's trial is one run, grouped by its study; a training run is one, in group `train`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any, Protocol

REPORT_TO = ("none", "tensorboard", "trackio")
TRACKING_DIR = Path("tracking")
PROJECT = "chargpt-workbench"
PACKAGES = {"tensorboard": "tensorboard", "trackio": "trackio"}


class TrackingError(ValueError):
    """A tracker asked for that cannot be used here; the message says what to install."""


class Tracker(Protocol):
    def log(self, record: dict[str, Any], step: int) -> None: ...

    def finish(self, sample: str) -> None: ...


def check_report_to(kind: str) -> None:
    if kind not in REPORT_TO:
        raise TrackingError(f"report_to must be one of {', '.join(REPORT_TO)}, got {kind!r}")
    if kind != "none" and importlib.util.find_spec(PACKAGES[kind]) is None:
        raise TrackingError(f"--report-to {kind} needs the {PACKAGES[kind]} package: pip install -r "
                            "requirements-tracking.txt")  # fmt: skip


def run_names(report_run: str, out: Path | None) -> tuple[str, str]:
    """(group, name) of a run: tune's `study/candidate`, else `train` and the model's folder name."""
    group, _, name = report_run.rpartition("/")
    if report_run:
        return group or "train", name
    return "train", out.name if out is not None else "run"


def open_tracker(kind: str, report_run: str, out: Path | None, config: dict[str, Any], step: int = 0) -> Tracker | None:
    """The run's dashboard; `step` where a resumed run goes on (what was logged from there on is replaced)."""
    if kind == "none":
        return None
    check_report_to(kind)
    group, name = run_names(report_run, out)
    if kind == "tensorboard":
        return TensorBoardTracker(TRACKING_DIR / "tensorboard" / group / name, config, step)
    return TrackioTracker(group, name, config)


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics.jsonl record, the step left out (it is the x axis)."""
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)}  # fmt: skip


class TensorBoardTracker:
    def __init__(self, folder: Path, config: dict[str, Any], step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder), purge_step=step + 1 if step else None)  # past the checkpoint
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```")

    def log(self, record: dict[str, Any], step: int) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(key, value, step)

    def finish(self, sample: str) -> None:
        try:
            if sample:
                self.writer.add_text("sample", "```\n" + sample + "\n```")
        finally:
            self.writer.close()


class TrackioTracker:
    def __init__(self, group: str, name: str, config: dict[str, Any]):
        os.environ.setdefault("TRACKIO_DIR", str((TRACKING_DIR / "trackio").resolve()))  # read when imported
        import trackio

        with _QUIET, contextlib.redirect_stdout(sys.stderr):  # its banner; stdout is for a command's last line
            self.run = trackio.init(project=PROJECT, name=f"{group}/{name}", group=group, config=config,
                                    resume="allow", embed=False, auto_log_cpu=False, auto_log_gpu=False)  # fmt: skip

    def log(self, record: dict[str, Any], step: int) -> None:
        self.run.log(scalars(record), step=step)

    def finish(self, sample: str) -> None:
        if sample:
            self.run.config["sample"] = sample[:2000]
        with _QUIET, contextlib.redirect_stdout(sys.stderr):
            self.run.finish()


_QUIET = threading.Lock()  # sys.stdout is the process's: two jobs' redirects must not interleave

"""What many tests share: running app.py as a user would, a free port, a tiny corpus and search space."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = [sys.executable, str(ROOT / "app.py")]
# One thread a process: tests start several processes on two cores, and OpenMP threads that lose their core
# to another process slow down many times over.
APP_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False"}

# A short verse corpus and a search space of tiny models, for tests that drive the workbench.
TEXT = (
    "To be, or not to be, that is the question:\n"
    "Whether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\n\n"
) * 60
TINY_SPACE = {
    "lr": [1e-3, 1e-2],
    "n_layer": 1,
    "n_head": {"choices": [2]},
    "head_size": {"choices": [8]},
    "dropout": 0,
    "batch_size": {"choices": [4, 8]},
    "block_size": {"choices": [16]},
    "weight_decay": 0,
    "warmup_fraction": 0.05,
}


def run_app(*args: str, cwd: Path, stdin: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python app.py ARGS` in `cwd`, its output captured as text."""
    return subprocess.run(
        [*APP, *args], cwd=cwd, input=stdin, capture_output=True, text=True, timeout=timeout, env=APP_ENV
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

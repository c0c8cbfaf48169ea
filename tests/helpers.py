"""What tests (and the workbench benchmarks) share: running app.py as a user would, a workbench server, a free
port, a tiny corpus and search space."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = [sys.executable, str(ROOT / "app.py")]
# One thread a process: tests start several processes on two cores, and OpenMP threads that lose their core
# to another process slow down many times over.
APP_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False"}
# The smallest model worth training in a test: one layer, two heads, 16 wide, a context of 16.
TINY_MODEL_FLAGS = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4"]

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


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    dashboard_url: str | None

    def rss_mb(self) -> float:
        """Resident memory of the server process, from /proc (Linux)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")


@contextlib.contextmanager
def running_workbench(root: Path, dashboard: bool = True, timeout_s: float = 90) -> Iterator[Server]:
    """`python app.py serve` in `root` on a free port, on all cores as a user's server runs; stopped on exit."""
    port = free_port()
    log_path = root / "server.log"
    args = [*APP, "serve", "--port", str(port), *([] if dashboard else ["--no-dashboard"])]
    env = {k: v for k, v in APP_ENV.items() if k != "OMP_NUM_THREADS"} | {"PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        process = subprocess.Popen(args, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("the workbench did not start:\n" + log_path.read_text()) from None
            time.sleep(0.3)
    board = None
    for line in log_path.read_text().splitlines():
        if line.startswith("optuna-dashboard: "):
            board = line.split()[1]
    try:
        yield Server(url, process, board)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def save_verse_model(root: Path, name: str = "verse", tokenizer: str = "char"):
    """A tiny untrained model over the verse corpus, saved in root/models and loaded (for the API's tests)."""
    import torch

    from core import checkpoint as ckpt
    from core.config import ModelConfig
    from core.data import Dataset, prepare
    from core.model import GPT

    (root / "verse.txt").write_text(TEXT * 2, encoding="utf-8")
    data = root / f"dataset-{tokenizer}"
    prepare([root / "verse.txt"], data, tokenizer=tokenizer, vocab_size=300)
    vocab = Dataset(data).vocab
    torch.manual_seed(0)
    config = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=len(vocab))
    ckpt.save_model(root / "models" / name, ckpt.weights_for_saving(GPT(config)), config, vocab, {})
    return ckpt.load_model(name, root / "models")


@contextlib.contextmanager
def serving(loaded, **kwargs) -> Iterator[str]:
    """The completion API of `loaded` on a free port in this process; yields its base URL (.../v1)."""
    import threading

    import uvicorn

    from api.server import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(loaded, **kwargs), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the API did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(10)

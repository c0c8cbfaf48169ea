"""A workbench server in a throwaway project, for the load and soak benchmarks.

with throwaway_project() as root:
    train_small_model(root, "small")
    with running_workbench(root) as server:
        client = Client(server.url)
        server.rss_mb()        # the server's resident memory now
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@contextlib.contextmanager
def throwaway_project() -> Iterator[Path]:
    """A temp project folder with the default corpus prepared in dataset/."""
    from core.data import prepare

    root = Path(tempfile.mkdtemp(prefix="chargpt-bench-"))
    try:
        prepare(None, root / "dataset")
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def train_small_model(root: Path, name: str, iters: int = 150) -> None:
    """The issue's small CPU config (4 layers, 4 heads, 128 wide, context 64), trained briefly."""
    from core.config import ModelConfig, TrainConfig
    from core.trainer import train

    train(
        ModelConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0),
        TrainConfig(data_dir=str(root / "dataset"), batch_size=12, lr=1e-3, max_iters=iters, eval_interval=iters),
        out_dir=root / "models" / name,
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
def running_workbench(root: Path, dashboard: bool = False, timeout_s: float = 90) -> Iterator[Server]:
    """`python app.py serve` in `root` on a free port; stopped (and its jobs saved) on exit."""
    port = free_port()
    log_path = root / "server.log"
    args = [sys.executable, str(ROOT / "app.py"), "serve", "--port", str(port)]
    if not dashboard:
        args.append("--no-dashboard")
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
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

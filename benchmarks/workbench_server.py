"""A throwaway project with a small model for the load and soak benchmarks (the server: tests.helpers).

with throwaway_project() as root:
    train_small_model(root, "small")
    with running_workbench(root) as server:
        client = Client(server.url)
        server.rss_mb()        # the server's resident memory now
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.helpers import Server, running_workbench  # noqa: E402

__all__ = ["Server", "running_workbench", "throwaway_project", "train_small_model"]


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

"""What `--report-to` costs a training step: each tracker's log call timed directly (the run calls it once an
evaluation, with metrics.jsonl's record), its start and finish, against the default model's step here.

    python benchmarks/tracking_cost.py [--logs 200] [--eval-interval 250]

Target (issue 45): under 1% of a step. A step's share = (a log's seconds / eval_interval + (start + finish) /
a run's steps) / the step's seconds; the run is the default 2,000 steps.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import environment, print_table, wait_for_quiet, write_results


def step_seconds() -> float:
    """The default model's training step here (median over 30 steps after 10 warm ones)."""
    from core.config import ModelConfig, TrainConfig
    from core.data import Dataset, prepare
    from core.trainer import TrainHooks, train

    root = Path(tempfile.mkdtemp())
    (root / "text.txt").write_text(("To be, or not to be, that is the question.\n" * 4000), encoding="utf-8")
    prepare([root / "text.txt"], root / "data")
    times: list[float] = []
    config = TrainConfig(data_dir=str(root / "data"), max_iters=41, eval_interval=10**6, sample_chars=0,
                         compile="off")  # fmt: skip
    train(
        ModelConfig(),
        config,
        dataset=Dataset(root / "data"),
        hooks=TrainHooks(on_step=lambda e: times.append(e.elapsed_s)),
    )
    return statistics.median([b - a for a, b in zip(times, times[1:])][10:])


def tracker_cost(kind: str, logs: int) -> dict[str, float]:
    from core import tracking

    tracking.TRACKING_DIR = Path(tempfile.mkdtemp())
    os.environ["TRACKIO_DIR"] = str(tracking.TRACKING_DIR / "trackio")
    record = {"step": 0, "train_loss": 1.5, "val_loss": 1.6, "best_val_loss": 1.6, "improved": True, "lr": 1e-3,
              "tokens_per_s": 12000.0, "elapsed_s": 10.0}  # fmt: skip
    started = time.perf_counter()
    tracker = tracking.open_tracker(kind, f"bench/{kind}", None, {"model": {"n_layer": 4}, "train": {"lr": 1e-3}})
    opened = time.perf_counter() - started
    each = []
    for step in range(1, logs + 1):
        wait = time.perf_counter()
        tracker.log({**record, "step": step}, step)
        each.append(time.perf_counter() - wait)
    started = time.perf_counter()
    tracker.finish("a sample")
    return {"start_s": opened, "log_s": statistics.median(each), "log_p90_s": sorted(each)[int(0.9 * logs)],
            "finish_s": time.perf_counter() - started}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", type=int, default=200)
    parser.add_argument("--eval-interval", type=int, default=250)
    parser.add_argument("--run-steps", type=int, default=2000)
    args = parser.parse_args()
    wait_for_quiet()
    step_s = step_seconds()
    rows = []
    for kind in ("tensorboard", "trackio"):
        wait_for_quiet()
        cost = tracker_cost(kind, args.logs)
        per_step = cost["log_s"] / args.eval_interval + (cost["start_s"] + cost["finish_s"]) / args.run_steps
        rows.append({"tracker": kind, **cost, "step_s": step_s, "share_of_step": per_step / step_s,
                     "share_if_logged_every_step": cost["log_s"] / step_s})  # fmt: skip
    print(f"{environment()['cpu']} ({environment()['cpu_capability']}): default model step {step_s * 1000:.1f} ms")
    print_table(rows, ["tracker", "start_s", "log_s", "log_p90_s", "finish_s", "share_of_step",
                       "share_if_logged_every_step"])  # fmt: skip
    write_results("tracking_cost", {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()

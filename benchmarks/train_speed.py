"""Training speed and MFU of the real trainer, in fp32 and in bf16 autocast, and the small config's run time.

1. Peaks: FLOP/s of a large torch.mm in fp32 and in bf16 (benchmarks/common.matmul_peak), measured in this
   run, before and after the speed measurements (the median of the two is used).
2. Speed: `core.trainer.train` itself (batch sampling, autocast, forward, backward, clip, AdamW) with an
   `on_step` hook that times windows of steps on a quiet machine, for
      small     4 layers, 4 heads, 128 wide, context 64, batch 12
      384-wide  6 layers, 6 heads, 384 wide, context 256, batch 64
   in float32 and bfloat16 autocast. MFU = model FLOPs per token (6 N + 12 n_layer T n_embd, as
   GPT.flops_per_token) x tokens/s / the matmul peak of the same dtype (fp32 peak for fp32, bf16 peak
   for bf16; `mfu_vs_fp32_peak` puts both on the fp32 scale). Target: fp32 MFU >= 0.55 for both configs.
   The small config is also measured with `compile=True` (torch.compile; compiling happens in the untimed
   warmup steps). On this 2-vCPU machine the eager small step swings between ~35 and ~46 ms from one
   process to the next, while one thread (58 ms) and a large matmul stay steady, and OMP_PROC_BIND or
   OMP_WAIT_POLICY do not change it; compiled (fewer, fused kernels) it stayed at 33-35 ms in 12 windows.
3. Runs: the small config (lr 1e-3, dropout 0, default TrainConfig otherwise: evals every 250 steps over
   50 batches, 200-character samples, checkpoints) trained for 2000 iterations on the default corpus in
   float32, in bfloat16 and in float32 with another seed (the seed-to-seed noise the dtype difference is
   compared with). Target: val loss < 2.0 in under 2 minutes with the default dtype (`auto`).

    python benchmarks/train_speed.py                  # everything (about 7 minutes on 2 cores)
    python benchmarks/train_speed.py --part speed     # 1 and 2 only
    python benchmarks/train_speed.py --part runs      # 3 only
    python benchmarks/train_speed.py --quick          # fewer windows, 300-iteration runs
    python benchmarks/train_speed.py --part nanogpt   # steps in 5 minutes: nanoGPT's loop beside ours

Prints tables and writes benchmarks/results/train_speed.json (train_speed_<part>.json for one part).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from common import MAX_FOREIGN, ROOT, CpuSnapshot, matmul_peak, print_table, wait_for_quiet, write_results

from core.config import ModelConfig, TrainConfig
from core.data import Dataset, prepare
from core.device import autocast_dtype
from core.model import GPT
from core.trainer import StepEvent, TrainHooks, train

DATA_DIR = ROOT / "dataset"
DTYPES = ("float32", "bfloat16")
CONFIGS = {
    "small": (ModelConfig(n_layer=4, n_head=4, n_embd=128, block_size=64), 12),
    "384-wide": (ModelConfig(n_layer=6, n_head=6, n_embd=384, block_size=256), 64),
}


@dataclass
class StepTimer:
    """An on_step hook: after `warmup` steps, times windows of `per_window` steps. Before each window it
    waits for a quiet machine, then lets `settle` steps pass untimed (the first steps after a pause run
    slower); windows where other processes used more than MAX_FOREIGN of a core are dropped."""

    warmup: int
    per_window: int
    windows: int
    max_windows: int
    settle: int = 2
    kept: list[float] = field(default_factory=list)
    dropped: int = 0
    start: CpuSnapshot | None = None
    start_step: int = -1

    def __call__(self, event: StepEvent) -> None:
        if event.step < self.warmup or self.done():
            return
        if self.start is None:
            if self.start_step < 0:
                wait_for_quiet(60)
                self.start_step = event.step + self.settle
            if event.step >= self.start_step:
                self.start = CpuSnapshot.take()
            return
        if event.step - self.start_step == self.per_window:
            end = CpuSnapshot.take()
            if self.start.foreign_cores(end) > MAX_FOREIGN:
                self.dropped += 1
            else:
                self.kept.append((end.wall - self.start.wall) / self.per_window)
            self.start, self.start_step = None, -1
            self(event)  # the step that ends a window may start the next one

    def done(self) -> bool:
        return len(self.kept) >= self.windows or len(self.kept) + self.dropped >= self.max_windows


def measure_steps(
    model_config: ModelConfig,
    batch_size: int,
    dtype: str,
    *,
    warmup: int,
    per_window: int,
    windows: int,
    compile: bool = False,
) -> dict[str, Any]:
    """Median seconds per optimiser step of core.trainer.train (no evals, samples or writes in the window)."""
    timer = StepTimer(warmup, per_window, windows, max_windows=windows * 3)
    max_iters = warmup + (per_window + 3) * windows * 3 + 1
    train_config = TrainConfig(
        data_dir=str(DATA_DIR),
        batch_size=batch_size,
        max_iters=max_iters,
        eval_interval=max_iters,
        eval_iters=1,
        sample_chars=0,
        device="cpu",
        dtype=dtype,
        compile="on" if compile else "off",
    )
    train(model_config, train_config, hooks=TrainHooks(on_step=timer, should_stop=timer.done))
    if not timer.kept:
        raise RuntimeError("the machine never went quiet; every timed window was dropped")
    return {"step_s": statistics.median(timer.kept), "windows": timer.kept, "dropped_noisy": timer.dropped}


def bench_speed(quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    vocab_size = len(Dataset(DATA_DIR).vocab)
    peaks_before = {dt: matmul_peak(dt) for dt in (torch.float32, torch.bfloat16)}
    rows = []
    for name, (config, batch) in CONFIGS.items():
        config = ModelConfig(**{**config.__dict__, "vocab_size": vocab_size})
        flops_per_token = GPT(config).flops_per_token()
        small = config.n_embd <= 128
        plan = (
            {"warmup": 10, "per_window": 25 if not quick else 10, "windows": 5 if not quick else 3}
            if small
            else {"warmup": 2, "per_window": 1, "windows": 5 if not quick else 2}
        )
        variants = [(dtype, compiled) for compiled in ((False, True) if small else (False,)) for dtype in DTYPES]
        for dtype, compiled in variants:
            result = measure_steps(config, batch, dtype, compile=compiled, **plan)
            tokens_per_s = batch * config.block_size / result["step_s"]
            rows.append(
                {
                    "config": name,
                    "dtype": dtype,
                    "compiled": compiled,
                    "batch": batch,
                    "context": config.block_size,
                    "params": GPT(config).num_params(),
                    "flops_per_token": flops_per_token,
                    "step_ms": result["step_s"] * 1e3,
                    "tokens_per_s": tokens_per_s,
                    "model_flops_per_s": tokens_per_s * flops_per_token,
                    "windows_s": result["windows"],
                    "dropped_noisy": result["dropped_noisy"],
                }
            )
            print(f"{name} {dtype} compiled={compiled}: {tokens_per_s:,.0f} tokens/s", file=sys.stderr)
    peaks_after = {dt: matmul_peak(dt) for dt in (torch.float32, torch.bfloat16)}
    peaks = {}
    for dt in (torch.float32, torch.bfloat16):
        key = str(dt).removeprefix("torch.")
        peaks[key] = {
            "flops_per_s": statistics.median([peaks_before[dt]["flops_per_s"], peaks_after[dt]["flops_per_s"]]),
            "before": peaks_before[dt],
            "after": peaks_after[dt],
        }
    for row in rows:
        row["mfu"] = row["model_flops_per_s"] / peaks[row["dtype"]]["flops_per_s"]
        row["mfu_vs_fp32_peak"] = row["model_flops_per_s"] / peaks["float32"]["flops_per_s"]
    for row in rows:
        if row["dtype"] == "bfloat16":
            fp32 = next(r for r in rows if r["config"] == row["config"] and r["compiled"] == row["compiled"])
            row["speedup_vs_fp32"] = row["tokens_per_s"] / fp32["tokens_per_s"]
    return rows, peaks


def run_small(dtype: str, seed: int, max_iters: int) -> dict[str, Any]:
    """The small config trained as `python app.py train --name tiny --n-layer 4 ... --lr 1e-3` would."""
    config, batch = CONFIGS["small"]
    train_config = TrainConfig(
        data_dir=str(DATA_DIR), batch_size=batch, max_iters=max_iters, lr=1e-3, seed=seed, device="cpu", dtype=dtype
    )
    wait_for_quiet(60)
    samples: list[str] = []
    with tempfile.TemporaryDirectory(prefix="chargpt-train-speed-") as out:
        before = CpuSnapshot.take()
        result = train(
            config, train_config, out_dir=Path(out), hooks=TrainHooks(on_eval=lambda e: samples.append(e.sample))
        )
        after = CpuSnapshot.take()
    return {
        "dtype": dtype,
        "resolved_dtype": str(autocast_dtype(torch.device("cpu"), dtype)).removeprefix("torch."),
        "seed": seed,
        "iters": result.iters,
        "val_loss": result.val_loss,
        "train_loss": result.train_loss,
        "seconds": after.wall - before.wall,
        "tokens_per_s": result.tokens_per_s,
        "foreign_cores": before.foreign_cores(after),
        "last_sample": samples[-1] if samples else "",
    }


def bench_runs(quick: bool) -> list[dict[str, Any]]:
    iters = 300 if quick else 2000
    seed = TrainConfig().seed
    runs = [run_small("auto", seed, iters)]
    resolved = runs[0]["resolved_dtype"]
    other = "bfloat16" if resolved == "float32" else "float32"
    runs.append(run_small(other, seed, iters))
    runs.append(run_small("float32", seed + 1, iters))
    for run in runs:
        print(f"{run['dtype']} seed {run['seed']}: val {run['val_loss']:.4f} in {run['seconds']:.1f}s", file=sys.stderr)
    return runs


def ours_for(seconds: float, compile_mode: str, seed: int = 1337) -> dict[str, Any]:
    """Our trainer, the classic recipe at nanoGPT's CPU shape, for `seconds` of wall time from the call (model
    building and any compiling included), no evaluation until the last one: steps done."""
    from core.config import recipe_configs, replace_known

    model_config, train_config = recipe_configs("classic")
    model_config = replace_known(model_config, {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64,
                                                "dropout": 0.0})  # fmt: skip
    train_config = replace_known(train_config, {
        "data_dir": str(DATA_DIR), "batch_size": 12, "max_iters": 0, "max_minutes": seconds / 60, "lr": 1e-3,
        "eval_interval": 10**9, "eval_iters": 1, "sample_chars": 0, "seed": seed, "compile": compile_mode,
    })  # fmt: skip
    started = time.perf_counter()
    result = train(model_config, train_config)
    return {"steps": result.iters, "wall_s": time.perf_counter() - started, "loss": result.train_loss}


def bench_nanogpt(minutes: float, repeats: int) -> list[dict[str, Any]]:
    """Steps in `minutes` of wall time: nanoGPT's loop beside ours (compile auto and off), alternating, on a
    quiet machine; the ratio of medians is the speed-up."""
    from nanogpt_baseline import NanoConfig, train_for

    tokens = Dataset(DATA_DIR).tokens["train"]
    vocab = len(Dataset(DATA_DIR).vocab)
    rows = []
    for repeat in range(repeats):
        for name in ("nanoGPT", "ours, compile auto", "ours, compile off"):
            wait_for_quiet(60)
            if name == "nanoGPT":
                run = train_for(tokens, NanoConfig(vocab_size=vocab), 12, minutes * 60)
            else:
                run = ours_for(minutes * 60, "auto" if "auto" in name else "off")
            rows.append({"run": name, "repeat": repeat, **run, "ms_per_step": 1e3 * run["wall_s"] / run["steps"]})
            print_table(rows[-1:], ["run", "repeat", "steps", "wall_s", "ms_per_step", "loss"])
    base = statistics.median(r["steps"] for r in rows if r["run"] == "nanoGPT")
    for row in rows:
        row["speedup_vs_nanogpt"] = row["steps"] / base
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer timed windows; 300-iteration runs")
    parser.add_argument("--part", choices=("all", "speed", "runs", "nanogpt"), default="all")
    parser.add_argument("--minutes", type=float, default=5.0, help="--part nanogpt: wall time of each run")
    parser.add_argument("--repeats", type=int, default=1, help="--part nanogpt: runs of each kind")
    args = parser.parse_args()
    if not (DATA_DIR / "vocab.txt").exists():
        prepare(None, DATA_DIR)
    torch.manual_seed(0)
    results: dict[str, Any] = {"quick": args.quick, "threads": torch.get_num_threads()}

    if args.part in ("all", "speed"):
        rows, peaks = bench_speed(args.quick)
        results.update(speed=rows, peaks=peaks, targets={"fp32_mfu": 0.55})
        print(
            f"\nmatmul peak: fp32 {peaks['float32']['flops_per_s'] / 1e9:.1f} GFLOP/s, "
            f"bf16 {peaks['bfloat16']['flops_per_s'] / 1e9:.1f} GFLOP/s"
        )
        print("training speed (core.trainer.train; MFU against the peak of the same dtype; target fp32 >= 0.55)")
        print_table(
            rows,
            [
                "config",
                "dtype",
                "compiled",
                "step_ms",
                "tokens_per_s",
                "mfu",
                "mfu_vs_fp32_peak",
                "speedup_vs_fp32",
                "dropped_noisy",
            ],
        )

    if args.part in ("all", "runs"):
        runs = bench_runs(args.quick)
        default, other, noise = runs
        results["runs"] = runs
        results["loss_comparison"] = {
            "dtype_gap": abs(default["val_loss"] - other["val_loss"]),
            "seed_gap_fp32": abs(
                next(r for r in runs if r["resolved_dtype"] == "float32" and r["seed"] == default["seed"])["val_loss"]
                - noise["val_loss"]
            ),
        }
        results["small_run"] = {
            "seconds": default["seconds"],
            "val_loss": default["val_loss"],
            "ok": default["val_loss"] < 2.0 and default["seconds"] < 120,
        }
        print(f"\nsmall config, {default['iters']} iterations on the default corpus (target: val < 2.0 in < 120 s)")
        print_table(
            runs,
            [
                "dtype",
                "resolved_dtype",
                "seed",
                "iters",
                "val_loss",
                "train_loss",
                "seconds",
                "tokens_per_s",
                "foreign_cores",
            ],
        )
        gap = results["loss_comparison"]
        print(f"val loss gap between dtypes {gap['dtype_gap']:.4f}; between fp32 seeds {gap['seed_gap_fp32']:.4f}")
        print(f"\nlast sample ({default['dtype']}):\n{default['last_sample']}")

    if args.part == "nanogpt":
        rows = bench_nanogpt(args.minutes, args.repeats)
        results.update(nanogpt=rows, minutes=args.minutes, target_speedup=1.3)
        print(f"\nsteps in {args.minutes:g} minutes, classic arithmetic at 4x128, context 64, batch 12 (target 1.3x)")
        print_table(rows, ["run", "repeat", "steps", "wall_s", "ms_per_step", "speedup_vs_nanogpt", "loss"])

    write_results("train_speed" if args.part == "all" else f"train_speed_{args.part}", results)


if __name__ == "__main__":
    main()

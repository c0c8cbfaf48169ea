"""Data pipeline speed: `prepare` throughput and peak memory on a large corpus, and batch sampling cost.

1. A corpus of random words (a small vocabulary with a few non-ASCII words, lines of 5-15 words) is written
   in chunks to a temp folder, then prepared in a subprocess, both through the library call
   (`core.data.prepare`) and through the CLI (`python app.py prepare FILE --data-dir DIR`). The peak RSS of
   the subprocess is its ru_maxrss, read by a small launcher process; MB/s is input MB over prepare's own
   time, and over the whole command (interpreter start and imports included). Targets: peak RSS < 300 MB, >= 50 MB/s.
2. Batch sampling: `BatchSampler.next_batch()` on the prepared default corpus, as a share of one training
   step (forward, backward, clip, AdamW) of the small config (4x128, context 64, batch 12). Target: < 2%.

    python benchmarks/data_speed.py            # 500 MB corpus, 3 prepare runs of each kind
    python benchmarks/data_speed.py --quick    # 100 MB corpus, 1 run of each kind
    python benchmarks/data_speed.py --size-mb 1000 --archives gz,xz,tar.xz   # archives streamed too

Prints a table and writes benchmarks/results/data_speed.json. Temp files are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import ROOT, CpuSnapshot, print_table, timed_repeats, wait_for_quiet, write_results
from train_speed import CONFIGS, measure_steps

from core.data import BatchSampler, Dataset, prepare

MAX_FOREIGN = 0.05
LIBRARY_CALL = (
    "import json, sys; from core.data import prepare; "
    "s = prepare([sys.argv[1]], sys.argv[2], **json.loads(sys.argv[3] if len(sys.argv) > 3 else '{}')); "
    "print(json.dumps({'seconds': s.seconds, 'chars': s.chars, 'bpe_s': s.tokenizer_seconds}))"
)


def write_corpus(path: Path, size_bytes: int, seed: int = 0, chunk_bytes: int = 8 << 20) -> int:
    """Random words from a 2,000-word vocabulary (2% of them non-ASCII), written in chunks; returns bytes."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, size=rng.integers(1, 10))) for _ in range(1960)]
    words += [w + s for w in ("caf", "na", "r", "fianc", "d") for s in ("é", "ï", "ü", "—", "ß", "ç", "ø", "å")]
    vocab = np.array(words, dtype=object)
    written = 0
    with open(path, "w", encoding="utf-8", newline="") as out:
        while written < size_bytes:
            n_words = chunk_bytes // 6
            picked = vocab[rng.integers(0, len(vocab), size=n_words)]
            line_ends = np.cumsum(rng.integers(5, 16, size=n_words // 5 + 1))
            separators = np.full(n_words, " ", dtype=object)
            separators[line_ends[line_ends < n_words]] = "\n"
            text = "".join(np.char.add(picked.astype(str), separators.astype(str)).tolist())
            data = text.encode("utf-8")[: size_bytes - written]
            out.write(data.decode("utf-8", errors="ignore"))
            written += len(data)
    return path.stat().st_size


# Peak RSS is read by a small launcher process: a child forked from this benchmark (which holds torch and
# the corpus generator's buffers) would start with this process's high-water mark in its ru_maxrss.
LAUNCHER = (
    "import json, resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
    "print(json.dumps({'peak_rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))"
)


def run_measured(args: list[str]) -> dict:
    """Run a command on a quiet machine; its wall time, peak RSS, the CPU others used, and its JSON line."""
    wait_for_quiet()
    before = CpuSnapshot.take()
    children_before = _children_cpu()
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *args], cwd=ROOT, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - started
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    after = CpuSnapshot.take()
    child_cpu = _children_cpu() - children_before
    foreign = max(0.0, (after.busy_s - before.busy_s) - (after.own_s - before.own_s) - child_cpu) / wall
    info: dict = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            info.update(json.loads(line))
        elif found := re.search(r", ([\d.]+)s \(\d+ MB/s\)", line):  # the CLI's summary line
            info["seconds"] = float(found.group(1))
    return {"wall_s": wall, "foreign_cores": foreign, **info}


def _children_cpu() -> float:
    times = os.times()
    return times.children_user + times.children_system


def compress(corpus: Path, kind: str) -> Path:
    """The corpus as a `kind` file (gz at level 6, xz at preset 1, a tar.xz of it), streamed."""
    import gzip
    import lzma
    import shutil
    import tarfile

    target = corpus.with_name(f"{corpus.name}.{kind}")
    if kind == "tar.xz":
        with tarfile.open(target, "w:xz", preset=1) as tar:
            tar.add(corpus, arcname=corpus.name)
        return target
    with (
        open(corpus, "rb") as source,
        gzip.open(target, "wb", compresslevel=6) if kind == "gz" else lzma.open(target, "wb", preset=1) as out,
    ):
        shutil.copyfileobj(source, out, 8 << 20)
    return target


def bench_prepare(size_mb: int, repeats: int, archives: tuple[str, ...] = (), bpe: int = 0) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="chargpt-data-speed-") as tmp:
        corpus = Path(tmp) / "corpus.txt"
        started = time.perf_counter()
        size = write_corpus(corpus, size_mb * 1_000_000)
        print(f"wrote a {size / 1e6:.0f} MB corpus in {time.perf_counter() - started:.1f}s", file=sys.stderr)
        commands = {
            "library: core.data.prepare": [sys.executable, "-c", LIBRARY_CALL, str(corpus), f"{tmp}/lib"],
            "cli: app.py prepare": [sys.executable, "app.py", "prepare", str(corpus), "--data-dir", f"{tmp}/cli"],
        }
        on_disk = {}
        for kind in archives:
            started = time.perf_counter()
            packed = compress(corpus, kind)
            on_disk[f"library: .{kind}"] = packed.stat().st_size / 1e6
            print(f"compressed to {packed.name} ({on_disk[f'library: .{kind}']:.0f} MB) in "
                  f"{time.perf_counter() - started:.1f}s", file=sys.stderr)  # fmt: skip
            commands[f"library: .{kind}"] = [sys.executable, "-c", LIBRARY_CALL, str(packed), f"{tmp}/{kind}"]
        if bpe:
            options = json.dumps({"tokenizer": "bpe", "vocab_size": bpe})
            commands[f"library: bpe {bpe}"] = [sys.executable, "-c", LIBRARY_CALL, str(corpus), f"{tmp}/bpe", options]
        for name, args in commands.items():
            tried = []
            for _ in range(repeats * 3):
                tried.append(run_measured(args))
                if sum(r["foreign_cores"] <= MAX_FOREIGN for r in tried) >= repeats:
                    break
            # the quiet runs; on a machine that never was quiet, the least disturbed ones (said in "runs")
            runs = sorted(tried, key=lambda r: r["foreign_cores"] > MAX_FOREIGN)[:repeats]
            wall = statistics.median(r["wall_s"] for r in runs)
            row = {
                "path": name,
                "input_mb": size / 1e6,  # of text; an archive's own size is on_disk_mb
                "on_disk_mb": on_disk.get(name, size / 1e6),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                "command_s": wall,
                "mb_per_s_command": size / 1e6 / wall,
                "runs": len(runs),
            }
            seconds = statistics.median(r["seconds"] for r in runs)  # prepare's own time
            row["prepare_s"] = seconds
            row["bpe_s"] = statistics.median(r.get("bpe_s", 0.0) for r in runs)  # BPE training and encoding
            row["quiet_runs"] = sum(r["foreign_cores"] <= MAX_FOREIGN for r in runs)
            row["mb_per_s"] = size / 1e6 / seconds
            rows.append(row)
    return rows


def bench_batches(repeats: int) -> dict:
    if not (ROOT / "dataset" / "vocab.txt").exists():
        prepare(None, ROOT / "dataset")
    dataset = Dataset(ROOT / "dataset")
    sampler = BatchSampler(dataset.tokens["train"], 64, 12, 0, torch.device("cpu"))
    n_batches = 2000
    batch = timed_repeats(lambda: [sampler.next_batch() for _ in range(n_batches)], repeats)
    batch_s = batch["median_s"] / n_batches

    config, batch_size = CONFIGS["small"]
    steps = measure_steps(config, batch_size, "auto", warmup=10, per_window=25, windows=repeats)
    step_s = steps["step_s"]
    return {
        "config": "4x128, ctx 64, batch 12",
        "batch_us": batch_s * 1e6,
        "step_ms": step_s * 1e3,
        "batch_pct_of_step": 100 * batch_s / step_s,
        "dropped_noisy": batch["dropped_noisy"] + steps["dropped_noisy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 MB corpus, one run of each kind")
    parser.add_argument("--size-mb", type=int, default=0, help="corpus size in MB (default 500, quick 100)")
    parser.add_argument("--archives", default="", help="also prepare the corpus from these, e.g. gz,xz,tar.xz")
    parser.add_argument("--bpe", type=int, default=0, help="also prepare it with a BPE of this many tokens")
    args = parser.parse_args()
    size_mb = args.size_mb or (100 if args.quick else 500)
    repeats = 1 if args.quick else 3

    prepare_rows = bench_prepare(size_mb, repeats, tuple(k for k in args.archives.split(",") if k), args.bpe)
    for row in prepare_rows:
        row["rss_ok"] = row["peak_rss_mb"] < 300
        row["speed_ok"] = row["mb_per_s"] >= 50
    print("\nprepare (targets: peak RSS < 300 MB, >= 50 MB/s)")
    print_table(
        prepare_rows,
        [
            "path",
            "input_mb",
            "on_disk_mb",
            "peak_rss_mb",
            "prepare_s",
            "mb_per_s",
            "command_s",
            "mb_per_s_command",
            "runs",
            "quiet_runs",
            "bpe_s",
        ],
    )
    batches = bench_batches(5 if not args.quick else 3)
    batches["ok"] = batches["batch_pct_of_step"] < 2
    print("\nbatch sampling (target: < 2% of a training step)")
    print_table([batches], ["config", "batch_us", "step_ms", "batch_pct_of_step", "ok"])
    write_results(
        "data_speed",
        {
            "targets": {"peak_rss_mb": 300, "mb_per_s": 50, "batch_pct_of_step": 2},
            "quick": args.quick,
            "prepare": prepare_rows,
            "batches": batches,
        },
    )


if __name__ == "__main__":
    main()

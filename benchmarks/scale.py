"""Scale-out measurements: study bookkeeping per storage and workers, and DDP training throughput.

1. Trials per second of bookkeeping (no training: each trial suggests 8 parameters and reports 5
   intermediate values) for SQLite, a journal file, PostgreSQL and the gRPC proxy (in front of SQLite), with
   1, 2 and 4 worker processes on one study.
2. Training tokens/s of the small config for 1 process (all cores) and 2 processes under torchrun (gloo).

    python benchmarks/scale.py [--quick]

Prints a table and writes benchmarks/results/scale.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402

from core.tune.storage import make_storage  # noqa: E402
from tests import postgres_cluster  # noqa: E402


def objective(trial: optuna.Trial) -> float:
    value = sum(trial.suggest_float(f"x{i}", 0, 1) for i in range(8))
    for step in range(5):
        trial.report(value / (step + 1), step)
    return value


def worker(url: str, study: str, trials: int, ready) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = make_storage(url, heartbeat=0)
    loaded = optuna.load_study(study_name=study, storage=storage, sampler=optuna.samplers.RandomSampler())
    ready.wait()  # the clock starts when every worker has imported and connected
    loaded.optimize(objective, n_trials=trials)


def trials_per_second(url: str, workers: int, trials_per_worker: int) -> float:
    """Finished trials per second on one study, from the moment every worker is connected."""
    study = f"bench-{workers}-{time.monotonic_ns()}"
    optuna.create_study(study_name=study, storage=make_storage(url, heartbeat=0))
    ctx = mp.get_context("spawn")
    ready = ctx.Barrier(workers + 1)
    procs = [ctx.Process(target=worker, args=(url, study, trials_per_worker, ready)) for _ in range(workers)]
    for proc in procs:
        proc.start()
    ready.wait()
    started = time.perf_counter()
    for proc in procs:
        proc.join()
    seconds = time.perf_counter() - started
    if any(p.exitcode for p in procs):
        raise RuntimeError(f"a worker failed on {url}")
    return workers * trials_per_worker / seconds


@contextlib.contextmanager
def grpc_proxy(behind: str):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py"), "proxy", "--storage", behind, "--port", str(port), "--heartbeat", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        yield f"grpc://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait()


def ddp_tokens_per_s(data_dir: Path, nproc: int, iters: int) -> float:
    common = ["train", "--name", f"ddp{nproc}", "--models-dir", str(data_dir.parent / "models"), "--overwrite",
              "--data-dir", str(data_dir), "--max-iters", str(iters), "--eval-interval", str(iters), "--eval-iters", "1",
              "--sample-chars", "0", "--device", "cpu"]  # fmt: skip
    if nproc == 1:
        command = [sys.executable, str(ROOT / "app.py"), *common]
        env = dict(os.environ)
    else:
        command = ["torchrun", "--standalone", f"--nproc_per_node={nproc}", str(ROOT / "app.py"), *common]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))}
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
    return float(re.search(r"tokens_per_s=(\d+)", out).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    trials = 30 if args.quick else 100
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results: dict = {"bookkeeping": {}, "ddp": {}}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        storages = {
            "sqlite": f"sqlite:///{tmp}/s.db",
            "journal": f"journal:{tmp}/j.log",
            "grpc(sqlite)": stack.enter_context(grpc_proxy(f"sqlite:///{tmp}/g.db")),
        }
        if postgres_cluster.available():
            storages["postgresql"] = stack.enter_context(postgres_cluster.cluster())
        print(f"\nBookkeeping: trials/s on one study ({trials} trials per worker, tiny objective)")
        print(f"{'storage':<14}" + "".join(f"{w:>10} w" for w in (1, 2, 4)))
        for name, url in storages.items():
            row = {w: trials_per_second(url, w, trials) for w in (1, 2, 4)}
            results["bookkeeping"][name] = row
            print(f"{name:<14}" + "".join(f"{row[w]:>12.1f}" for w in (1, 2, 4)))

        from core.data import prepare

        data_dir = Path(tmp) / "dataset"
        prepare(None, data_dir)
        iters = 60 if args.quick else 200
        print(f"\nDDP on CPU, small config, {iters} steps (per-process batch 12; global batch grows with processes)")
        for nproc in (1, 2):
            results["ddp"][nproc] = ddp_tokens_per_s(data_dir, nproc, iters)
            print(f"{nproc} process(es): {results['ddp'][nproc]:>10,.0f} tokens/s")
    out = ROOT / "benchmarks" / "results" / "scale.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

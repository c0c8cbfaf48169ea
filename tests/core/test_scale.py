"""Scale-out: shared storages (journal file, gRPC proxy) and multi-process training under torchrun."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time

import optuna
import pytest

from core.tune.storage import open_study
from tests.helpers import APP, APP_ENV, ROOT, free_port

TINY_MODEL = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--device", "cpu"]
TINY_TUNE = ["--trial-iters", "20", "--eval-interval", "10", "--eval-iters", "2", "--device", "cpu", "--heartbeat", "1"]


def _finished(trials) -> bool:
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return all(t.state in done for t in trials)


def test_journal_storage_with_two_worker_processes(tmp_path, dataset_dir):
    storage = f"journal:{tmp_path}/studies/journal.log"
    result = subprocess.run(
        [
            *APP,
            "tune",
            "--study",
            "j",
            "--storage",
            storage,
            "--trials",
            "4",
            "--workers",
            "2",
            "--data-dir",
            str(dataset_dir),
            *TINY_TUNE,
        ],
        cwd=tmp_path,
        env=APP_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    trials = open_study("j", storage).trials
    assert len(trials) == 4 and _finished(trials)


def test_grpc_proxy_in_front_of_sqlite_with_two_workers(tmp_path, dataset_dir):
    port = free_port()
    proxy = subprocess.Popen(
        [*APP, "proxy", "--storage", f"sqlite:///{tmp_path}/behind.db", "--port", str(port)],
        cwd=tmp_path,
        env=APP_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.3)
        storage = f"grpc://127.0.0.1:{port}"
        common = ["tune", "--study", "g", "--storage", storage, "--data-dir", str(dataset_dir), *TINY_TUNE]
        subprocess.run([*APP, *common, "--create-only"], cwd=tmp_path, env=APP_ENV, check=True, capture_output=True)
        workers = [
            subprocess.Popen(
                [*APP, *common, "--trials", "2"], cwd=tmp_path, env=APP_ENV, stderr=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        errors = [w.communicate(timeout=300)[1] for w in workers]
        assert [w.returncode for w in workers] == [0, 0], errors
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)
    trials = open_study("g", f"sqlite:///{tmp_path}/behind.db").trials
    assert len(trials) == 4 and _finished(trials) and len({t.number for t in trials}) == 4


def _final(stdout: str) -> dict[str, float]:
    match = re.search(r"final val_loss=([\d.]+) train_loss=([\d.]+) iters=(\d+)", stdout)
    assert match, stdout
    return {"val": float(match.group(1)), "train": float(match.group(2)), "iters": int(match.group(3))}


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
def test_torchrun_two_processes_match_one_and_resume_in_one(tmp_path, dataset_dir):
    common = [
        "--data-dir",
        str(dataset_dir),
        *TINY_MODEL,
        "--eval-interval",
        "20",
        "--eval-iters",
        "4",
        "--sample-chars",
        "0",
        "--max-iters",
        "60",
        "--lr",
        "3e-3",
        "--warmup-iters",
        "5",
        "--seed",
        "1",
    ]
    ddp = subprocess.run(
        [
            "torchrun",
            "--standalone",
            "--nproc_per_node=2",
            str(ROOT / "app.py"),
            "train",
            "--name",
            "ddp",
            "--batch-size",
            "4",
            *common,
        ],
        cwd=tmp_path,
        env=APP_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr
    single = subprocess.run(
        [*APP, "train", "--name", "one", "--batch-size", "8", *common],
        cwd=tmp_path,
        env=APP_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr
    two, one = _final(ddp.stdout), _final(single.stdout)
    assert ddp.stdout.count("final val_loss") == 1  # only rank 0 reports
    assert abs(two["val"] - one["val"]) < 0.15, (two, one)
    info = json.loads((tmp_path / "models" / "ddp" / "config.json").read_text())
    assert info["distributed"] == {"world_size": 2, "ranks_agree": True}

    resumed = subprocess.run(
        [*APP, "train", "--name", "ddp", "--resume", "--max-iters", "80"],
        cwd=tmp_path,
        env=APP_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert _final(resumed.stdout)["iters"] == 80

"""A study on PostgreSQL shared by two worker processes (Debian's postgresql, a throwaway cluster)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest

from core.tuning import open_study

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.postgres


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run does)")
    bindir = Path(bins[-1]).parent
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    workdir = Path(tempfile.mkdtemp(prefix="chargpt-pg-"))
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres")
    data, port = workdir / "data", _free_port()
    subprocess.run(
        [*as_postgres, bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust"], check=True, capture_output=True
    )
    subprocess.run(
        [
            *as_postgres,
            bindir / "pg_ctl",
            "-D",
            data,
            "-w",
            "-l",
            workdir / "log",
            "-o",
            f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            [*as_postgres, bindir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "optuna"],
            check=True,
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([*as_postgres, bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)


def test_two_workers_on_a_postgresql_study(tmp_path, dataset_dir, postgres_url):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    common = [
        "--study",
        "pg",
        "--storage",
        postgres_url,
        "--trial-iters",
        "20",
        "--eval-interval",
        "10",
        "--eval-iters",
        "2",
        "--device",
        "cpu",
        "--data-dir",
        str(dataset_dir),
    ]
    app = [sys.executable, str(ROOT / "app.py"), "tune"]
    subprocess.run([*app, *common, "--create-only"], cwd=tmp_path, env=env, check=True, capture_output=True)
    started = time.time()
    workers = [
        subprocess.Popen([*app, *common, "--trials", "3"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    errors = [w.communicate(timeout=300)[1] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], errors
    trials = open_study("pg", postgres_url).trials
    assert len(trials) == 6 and len({t.number for t in trials}) == 6
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)
    assert time.time() - started < 300

"""A study on PostgreSQL shared by two worker processes (Debian's postgresql, a throwaway cluster)."""

from __future__ import annotations

import subprocess
import time

import optuna
import pytest

from core.tune.storage import open_study
from tests import postgres_cluster
from tests.helpers import APP, APP_ENV

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def postgres_url():
    if not postgres_cluster.available():
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run does)")
    with postgres_cluster.cluster() as url:
        yield url


def test_two_workers_on_a_postgresql_study(tmp_path, dataset_dir, postgres_url):
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
    app = [*APP, "tune"]
    subprocess.run([*app, *common, "--create-only"], cwd=tmp_path, env=APP_ENV, check=True, capture_output=True)
    started = time.time()
    workers = [
        subprocess.Popen([*app, *common, "--trials", "3"], cwd=tmp_path, env=APP_ENV, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    errors = [w.communicate(timeout=300)[1] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], errors
    trials = open_study("pg", postgres_url).trials
    assert len(trials) == 6 and len({t.number for t in trials}) == 6
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)
    assert time.time() - started < 300

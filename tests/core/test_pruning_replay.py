"""benchmarks/pruning_replay.py: Optuna's pruners replayed on recorded trial curves."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from benchmarks.pruning_replay import Curve, replay
from tests.helpers import ROOT

STARTUP = [
    Curve({1: 1.2, 2: 1.1, 3: 1.0}, 10.0),
    Curve({1: 1.3, 2: 1.2, 3: 1.1}, 10.0),
    Curve({1: 1.4, 2: 1.3, 3: 1.2}, 10.0),
]


def test_a_trial_behind_at_the_first_evaluation_is_charged_a_third_of_its_seconds():
    curves = [*STARTUP, Curve({1: 2.0, 2: 1.9, 3: 1.8}, 10.0), Curve({1: 1.1, 2: 1.0, 3: 0.9}, 10.0)]
    result = replay(curves, "percentile")
    assert result["pruned"] == 1
    assert result["time_saved"] == pytest.approx((10.0 * 2 / 3) / 50.0)
    assert result["best_val_gap"] == 0.0
    assert replay(curves, "none") | {"pruner": ""} == {
        "pruner": "",
        "time_saved": 0.0,
        "pruned": 0,
        "best_val_gap": 0.0,
    }


def test_pruning_a_late_bloomer_shows_as_a_best_val_gap():
    late = Curve({1: 3.0, 2: 2.0, 3: 0.5}, 10.0)
    result = replay([*STARTUP, late], "percentile")
    assert result["pruned"] == 1 and result["best_val_gap"] == pytest.approx(1.0 - 0.5)
    assert replay([*STARTUP, late], "percentile,startup=4")["best_val_gap"] == 0.0  # not enough finished trials yet


def test_a_hyperband_replay_repeats_itself():
    rng = random.Random(0)
    curves = [Curve({step: rng.uniform(1, 3) for step in (10, 20, 40, 80)}, rng.uniform(1, 9)) for _ in range(40)]
    assert len({replay(curves, "hyperband")["time_saved"] for _ in range(8)}) == 1


def test_the_script_reads_tuning_results_and_says_when_a_file_is_missing(tmp_path):
    run = {
        "seed": 0,
        "rows": [
            {
                "pruner": "none",
                "trial_curves": [
                    {
                        "state": "COMPLETE",
                        "seconds": c.seconds,
                        "val_by_step": {str(k): v for k, v in c.val_by_step.items()},
                    }
                    for c in STARTUP
                ],
            }
        ],
    }
    results = tmp_path / "tuning_pruning.json"
    results.write_text(json.dumps({"pruning": {"runs": [run]}}))
    script = ROOT / "benchmarks" / "pruning_replay.py"
    out = tmp_path / "replay.json"
    command = [sys.executable, script, results, "--pruners", "median", "--out", out]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0 and "median" in done.stdout
    assert json.loads(out.read_text()) == [
        {
            "pruner": "median",
            "time_saved": 0.0,
            "pruned": 0,
            "best_val_gap": 0.0,
            "file": results.name,
            "seed": 0,
            "trials": 3,
        }
    ]
    missing = subprocess.run([sys.executable, script, tmp_path / "nope.json"], capture_output=True, text=True)
    assert missing.returncode != 0 and "cannot read" in missing.stderr
    run["rows"][0]["pruner"] = "percentile"  # only a pruned study: nothing to replay
    results.write_text(json.dumps({"pruning": {"runs": [run]}}))
    pruned_only = subprocess.run([sys.executable, script, results], capture_output=True, text=True)
    assert pruned_only.returncode != 0 and "no study without a pruner" in pruned_only.stderr

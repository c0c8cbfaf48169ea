"""Replay Optuna's pruners on the trial curves of studies run without one: seconds instead of half an hour.

`benchmarks/tuning.py` keeps every trial's val loss at each evaluation. This script feeds those curves, in
trial order, to the pruners that `tune` would build (core.tune.config.make_pruner, so Optuna's own code decides),
and reports what each would have saved and whether it would have stopped the best trial.

It is an estimate, and an optimistic one:
- the trials are fixed, while in a real study the sampler reacts to what was pruned (benchmarks/tuning.py
  measures that: on some seeds it steers TPE away from the best region);
- a pruned trial is charged its seconds in proportion to the evaluations it reached; setup is not charged.
Use it to choose which pruner settings are worth a real run, not to claim the target.

    python benchmarks/pruning_replay.py benchmarks/results/tuning_pruning_30trials_seeds0_1_2.json
    python benchmarks/pruning_replay.py results/*.json --pruners percentile percentile,percentile=25 asha

Prints a table and writes benchmarks/results/pruning_replay.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402

from benchmarks.tuning import pruner_fields  # noqa: E402
from core.tune.config import StudyConfig  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass(frozen=True)
class Curve:
    """One trial of a study without a pruner: val loss by step (or evaluation number) and its seconds."""

    val_by_step: dict[int, float]
    seconds: float

    @property
    def best(self) -> float:
        return min(self.val_by_step.values())


def curves_of(run: dict) -> list[Curve]:
    """The finished trials of the run's study without a pruner, in trial order."""
    unpruned = next(row for row in run["rows"] if row["pruner"] == "none")
    return [
        Curve({int(step): value for step, value in t["val_by_step"].items()}, t["seconds"])
        for t in unpruned["trial_curves"]
        if t["state"] == "COMPLETE" and t["val_by_step"]
    ]


def replay(curves: list[Curve], pruner_spec: str) -> dict:
    """Run the trials through the pruner in order: estimated time saved, trials pruned, best-val gap."""
    steps = sorted({step for curve in curves for step in curve.val_by_step})
    # The study's first and last report keys stand for the first eval and the trial's length, as in `tune`.
    config = StudyConfig(eval_interval=steps[0], trial_iters=steps[-1], **pruner_fields(pruner_spec))
    # Hyperband picks each trial's bracket from a hash of the study name: a fixed name makes replays repeat.
    study = optuna.create_study(study_name="replay", direction="minimize", pruner=config.make_pruner())
    spent, pruned, kept = 0.0, 0, []
    for curve in curves:
        trial = study.ask()
        trial_steps = sorted(curve.val_by_step)
        evals_run = None
        for done, step in enumerate(trial_steps, start=1):
            trial.report(curve.val_by_step[step], step)
            if trial.should_prune():
                evals_run = done
                break
        if evals_run is None:
            study.tell(trial, curve.best)
            spent += curve.seconds
            kept.append(curve.best)
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            spent += curve.seconds * evals_run / len(trial_steps)
            pruned += 1
    total = sum(curve.seconds for curve in curves)
    return {
        "pruner": pruner_spec,
        "time_saved": 1 - spent / total,
        "pruned": pruned,
        "best_val_gap": min(kept) - min(curve.best for curve in curves),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="JSON files written by benchmarks/tuning.py")
    parser.add_argument(
        "--pruners",
        nargs="+",
        default=["percentile", "percentile,percentile=25", "median", "asha", "hyperband"],
        help="pruner specs as in benchmarks/tuning.py, e.g. percentile,percentile=25,startup=2",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "pruning_replay.json", help="JSON to write"
    )
    args = parser.parse_args()
    runs = []
    for path in args.results:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise SystemExit(f"cannot read {path}: {err}") from None
        pruning = data.get("pruning", {}) if isinstance(data, dict) else {}
        runs += [(path.name, run) for run in pruning.get("runs", []) if any(r["pruner"] == "none" for r in run["rows"])]
    if not runs:
        raise SystemExit("no study without a pruner in those files; run benchmarks/tuning.py --skip-tuning-pays first")

    rows = []
    print(f"{'pruner':<34} {'file':<44} {'seed':>4} {'trials':>6} {'pruned':>6} {'time saved':>10} {'gap':>8}")
    for spec in args.pruners:
        results = []
        for name, run in runs:
            curves = curves_of(run)
            result = replay(curves, spec) | {"file": name, "seed": run["seed"], "trials": len(curves)}
            results.append(result)
            print(
                f"{spec:<34} {name:<44} {run['seed']:>4} {len(curves):>6} {result['pruned']:>6} "
                f"{result['time_saved']:>10.0%} {result['best_val_gap']:>+8.3f}"
            )
        median = statistics.median(r["time_saved"] for r in results)
        worst = max(r["best_val_gap"] for r in results)
        print(f"{spec:<34} {'median (worst gap)':<44} {'':>4} {'':>6} {'':>6} {median:>10.0%} {worst:>+8.3f}\n")
        rows += results
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

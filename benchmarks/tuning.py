"""Does tuning pay, and does pruning pay? Measured on the default corpus.

1. Pruning: the same number of trials, same seeds, with the default pruner and without; wall time and best
   val loss of each. Target: >= 40% less time for a best val loss within 0.02.
2. Tuning: a fixed CPU budget of tuning plus final training, against the untuned default config trained for
   the same final budget. Target: the tuned model's val loss is lower.

    python benchmarks/tuning.py            # 20 trials x 300 steps; 15 min tuning + 5 min final training
    python benchmarks/tuning.py --trial-seconds 15   # trials of 15 s instead, pruned at equal seconds
    python benchmarks/tuning.py --trial-flops 0.5T   # trials of equal FLOPs, pruned at equal FLOPs
    python benchmarks/tuning.py --quick    # a few minutes in all
    python benchmarks/tuning.py --skip-tuning-pays --seeds 0 1 2 --pruners percentile asha   # pruning only
    python benchmarks/tuning.py --skip-tuning-pays --pruners percentile,percentile=25,startup=2   # pruner settings
    python benchmarks/tuning.py --skip-tuning-pays --trial-seconds 15 --pruners none   # noise: none against none

Under a time budget the same study does not repeat itself (steps per trial follow the machine's speed, and
the sampler follows the values), so compare best val losses over several seeds, and against `none` vs `none`.

Each study's trials (parameters, val loss at each evaluation, seconds) are kept in the JSON, so pruners can
also be compared offline on the curves of the study without a pruner.

Prints a table and writes benchmarks/results/tuning.json (tuning_pruning_seeds<N_M..>.json for pruning only).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402

from core.config import ModelConfig, TrainConfig, parse_flops  # noqa: E402
from core.data import Dataset, prepare  # noqa: E402
from core.model import flops_per_token  # noqa: E402
from core.trainer import train  # noqa: E402
from core.tune.config import StudyConfig  # noqa: E402
from core.tune.results import best_params  # noqa: E402
from core.tune.space import SearchSpace, apply_params  # noqa: E402
from core.tune.study import run_study, trial_configs  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)


PRUNER_SETTINGS = {"percentile": "pruner_percentile", "startup": "pruner_startup_trials"}


def pruner_fields(spec: str) -> dict:
    """StudyConfig fields for a pruner spec: a name, optionally with settings, e.g. `percentile,percentile=25`."""
    name, *settings = spec.split(",")
    fields = {"pruner": name}
    for setting in settings:
        key, _, value = setting.partition("=")
        if key not in PRUNER_SETTINGS:
            raise SystemExit(f"unknown pruner setting {key!r} in {spec!r}; use {', '.join(PRUNER_SETTINGS)}")
        fields[PRUNER_SETTINGS[key]] = float(value) if key == "percentile" else int(value)
    return fields


@dataclass(frozen=True)
class Budget:
    """What each trial trains for: steps, or seconds or FLOPs when set, with evaluations at equal fractions."""

    iters: int = 300
    seconds: float = 0.0
    flops: float = 0.0
    evals: int = 6

    def __str__(self) -> str:
        if self.seconds:
            return f"{self.seconds:g} s"
        return f"{self.flops / 1e12:g} TFLOPs" if self.flops else f"{self.iters} steps"

    @property
    def slug(self) -> str:
        """Part of the results file name; empty for the default budget."""
        kind = f"_{self.seconds:g}s" if self.seconds else f"_{self.flops / 1e12:g}T" if self.flops else ""
        return kind + (f"_{self.evals}evals" if self.evals != 6 else "")


def study_run(
    data_dir: Path,
    storage: str,
    name: str,
    pruner: str,
    trials: int,
    budget: Budget,
    timeout: float = 0,
    seed: int = 0,
) -> dict:
    config = StudyConfig(
        study=name,
        storage=storage,
        trials=trials,
        timeout=timeout,
        trial_iters=budget.iters,
        trial_seconds=budget.seconds,
        trial_flops=budget.flops,
        eval_interval=max(1, budget.iters // budget.evals),
        evals_per_trial=budget.evals,
        eval_iters=20,
        seed=seed,
        data_dir=str(data_dir),
        device="cpu",
        heartbeat=0,
        **pruner_fields(pruner),
    )
    started = time.perf_counter()
    study = run_study(config, SearchSpace.for_device("cpu"))
    seconds = time.perf_counter() - started
    states = [t.state.name for t in study.trials]
    vocab_size = len(Dataset(data_dir).vocab)
    return {
        "pruner": pruner,
        "seconds": round(seconds, 1),
        "tokens_trained": sum(tokens_trained(t) for t in study.trials),
        "flops_trained": sum(flops_trained(t, config, vocab_size) for t in study.trials),
        "trials": len(states),
        "pruned": states.count("PRUNED"),
        "best_val_loss": round(study.best_value, 4),
        "best": best_params(study),
        "trial_curves": [
            {
                "number": t.number,
                "state": t.state.name,
                "seconds": t.user_attrs.get("seconds"),
                "tokens": tokens_trained(t),
                "val_by_step": t.intermediate_values,
                "params": t.params,
            }
            for t in study.trials
        ],
    }


def tokens_trained(trial: optuna.trial.FrozenTrial) -> int:
    """Characters a trial trained on: its last evaluated step times its batch of windows.

    Under a step budget this does not change when something else loads the machine, unlike wall time.
    """
    steps = trial.user_attrs.get("steps", 0)
    return steps * trial.params.get("batch_size", 12) * trial.params.get("block_size", 64)


def flops_trained(trial: optuna.trial.FrozenTrial, config: StudyConfig, vocab_size: int) -> float:
    """Training FLOPs a trial spent (what `--trial-flops` budgets); like tokens, independent of machine load."""
    if "params" not in trial.user_attrs:  # an invalid config, pruned before training
        return 0.0
    model_config, train_config = trial_configs(trial.user_attrs["params"], config, trial.number, vocab_size)
    tokens = trial.user_attrs.get("steps", 0) * train_config.batch_size * model_config.block_size
    return flops_per_token(model_config) * tokens


def final_training(data_dir: Path, params: dict | None, minutes: float) -> float:
    model_config, train_config = (
        ModelConfig(),
        TrainConfig(
            data_dir=str(data_dir),
            max_iters=1_000_000,
            max_minutes=minutes,
            eval_interval=250,
            eval_iters=50,
            sample_chars=0,
        ),
    )
    if params:
        model_config, train_config = apply_params(params, model_config, train_config)
    return train(model_config, train_config).val_loss


def compare_pruners(
    data_dir: Path,
    storage: str,
    pruners: list[str],
    seed: int,
    trials: int,
    budget: Budget,
) -> dict:
    """One study per pruner on the same seed; each pruner's savings against the study without one."""
    rows = [study_run(data_dir, storage, f"s{seed}-p{i}", p, trials, budget, seed=seed) for i, p in enumerate(pruners)]
    print(
        f"\nPruning ({trials} trials x {budget}, {budget.evals} evaluations each, study seed {seed} for each)",
        flush=True,
    )
    print(f"{'pruner':<34} {'seconds':>8} {'TFLOPs':>8} {'pruned':>7} {'best val':>9}")
    for row in rows:
        print(
            f"{row['pruner']:<34} {row['seconds']:>8.1f} {row['flops_trained'] / 1e12:>8.2f} {row['pruned']:>7} "
            f"{row['best_val_loss']:>9.4f}"
        )
    comparisons = {}
    unpruned = rows[0]
    for pruned in rows[1:] if unpruned["pruner"] == "none" else []:
        comparisons[pruned["pruner"]] = {
            "time_saved": 1 - pruned["seconds"] / unpruned["seconds"],
            "work_saved": 1 - pruned["flops_trained"] / unpruned["flops_trained"],
            "best_val_gap": pruned["best_val_loss"] - unpruned["best_val_loss"],
        }
    return {"seed": seed, "rows": rows, "comparisons": comparisons}


def summarize_pruning(runs: list[dict]) -> dict:
    """Per pruner: time saved and best-val gap on each seed, their median, and the worst gap."""
    summary = {}
    pruners = dict.fromkeys(p for run in runs for p in run["comparisons"])
    print(f"\n{'pruner':<34} {'seed':>5} {'time saved':>11} {'FLOPs saved':>11} {'best val gap':>13}")
    for pruner in pruners:
        per_seed = [(run["seed"], run["comparisons"][pruner]) for run in runs if pruner in run["comparisons"]]
        for seed, c in per_seed:
            print(
                f"{pruner:<34} {seed:>5} {c['time_saved']:>11.0%} {c['work_saved']:>11.0%} {c['best_val_gap']:>+13.4f}"
            )
        summary[pruner] = {
            "seeds": [seed for seed, _ in per_seed],
            "median_time_saved": statistics.median(c["time_saved"] for _, c in per_seed),
            "median_work_saved": statistics.median(c["work_saved"] for _, c in per_seed),
            "worst_best_val_gap": max(c["best_val_gap"] for _, c in per_seed),
        }
        s = summary[pruner]
        print(
            f"{pruner:<34} {'median':>5} {s['median_time_saved']:>11.0%} {s['median_work_saved']:>11.0%} "
            f"{s['worst_best_val_gap']:>+13.4f} (worst)   target: time saved >= 40%, gap <= 0.02"
        )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-tuning-pays", action="store_true")
    parser.add_argument("--pruners", nargs="+", default=[StudyConfig.pruner], help="pruners to compare with none")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="study seeds; each pruner runs on each")
    parser.add_argument("--trials", type=int, default=20, help="trials per study in the pruning comparison")
    parser.add_argument("--only-unpruned", action="store_true", help="run only the study without a pruner")
    parser.add_argument("--no-baseline", action="store_true", help="skip the study without a pruner")
    parser.add_argument(
        "--trial-seconds", type=float, default=0.0, help="time budget per trial instead of steps (0 = steps)"
    )
    parser.add_argument(
        "--trial-flops", type=parse_flops, default=0.0, help="FLOPs budget per trial instead of steps: 0.5T (0 = steps)"
    )
    parser.add_argument("--evals-per-trial", type=int, default=6, help="evaluations (pruning points) per trial")
    parser.add_argument("--skip-pruning", action="store_true", help="measure only whether tuning pays")
    args = parser.parse_args()
    trials = 8 if args.quick else args.trials
    iters, scale = (150, 1 / 3) if args.quick else (300, 1)
    budget = Budget(iters, args.trial_seconds * scale, args.trial_flops * scale, args.evals_per_trial)
    tune_minutes, final_minutes = (3.0, 1.5) if args.quick else (15.0, 5.0)

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "dataset"
        prepare(None, data_dir)
        storage = f"sqlite:///{tmp}/bench.db"
        pruners = ([] if args.no_baseline else ["none"]) + ([] if args.only_unpruned else args.pruners)
        result = {}
        if not args.skip_pruning:
            runs = [compare_pruners(data_dir, storage, pruners, seed, trials, budget) for seed in args.seeds]
            result["pruning"] = {"runs": runs, "summary": summarize_pruning(runs)}

        if not args.skip_tuning_pays:
            tuned = study_run(
                data_dir,
                storage,
                "budget",
                StudyConfig.pruner,
                10_000,
                budget,
                timeout=tune_minutes * 60,
            )
            tuned_loss = final_training(data_dir, tuned["best"]["params"], final_minutes)
            default_loss = final_training(data_dir, None, final_minutes)
            print(
                f"\nTuning ({tune_minutes:g} min of tuning, {tuned['trials']} trials; {final_minutes:g} min final training)"
            )
            print(f"default config val loss: {default_loss:.4f}")
            print(f"tuned config val loss:   {tuned_loss:.4f}  params {json.dumps(tuned['best']['params'])}")
            result["tuning"] = {
                "tune_minutes": tune_minutes,
                "final_minutes": final_minutes,
                "trials": tuned["trials"],
                "default_val_loss": default_loss,
                "tuned_val_loss": tuned_loss,
                "params": tuned["best"]["params"],
            }

    seeds = "_".join(map(str, args.seeds))
    trials_slug = f"_{trials}trials" if trials != 20 and not args.quick else ""
    name = (
        f"tuning_pruning{budget.slug}{trials_slug}_seeds{seeds}.json"
        if args.skip_tuning_pays
        else f"tuning{budget.slug}.json"
    )
    out = ROOT / "benchmarks" / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

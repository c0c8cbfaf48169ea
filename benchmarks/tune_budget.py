"""What a user gets for a total wall-time budget: (a) the default config trained for all of it, (b) today's
trial tuning for 70% then training the best for 30%, (c) `tune --budget`. Each runs as the README's command
(a subprocess with the machine's cores), then its saved model is scored on the whole validation split.

    python benchmarks/tune_budget.py --budgets 10m,30m --seeds 0,1,2 --corpora shakespeare,bible

Target (issue 15): (c) at or below (a) at 10 minutes, and at least 0.05 nats/char below (a) at 30 minutes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, print_table, write_results  # noqa: E402
from benchmarks.corpora import corpus_dir  # noqa: E402
from core import checkpoint as ckpt  # noqa: E402
from core.config import parse_duration  # noqa: E402
from core.evaluate import evaluate  # noqa: E402

APP = [sys.executable, str(ROOT / "app.py")]
METHODS = ("a_default", "b_trials_then_train", "c_budget")


def command(method: str, budget_s: float, seed: int, data_dir: Path, work: Path) -> list[str]:
    storage = storage_url(work)
    common = ["--data-dir", str(data_dir), "--name", method, "--models-dir", str(work / "models")]
    if method == "a_default":
        return ["train", *common, "--max-minutes", f"{budget_s / 60:.4f}", "--max-iters", "0", "--seed", str(seed)]
    if method == "b_trials_then_train":
        return ["tune", "--study", "b", "--storage", storage, "--timeout", f"{0.7 * budget_s:.0f}", "--trials",
                "1000", "--seed", str(seed), "--then-train", "--max-minutes", f"{0.3 * budget_s / 60:.4f}",
                "--max-iters", "0", *common]  # fmt: skip
    return ["tune", "--budget", f"{budget_s:.0f}", "--study", "c", "--storage", storage, "--seed", str(seed),
            "--runs-dir", str(work / "runs"), *common]  # fmt: skip


def run(method: str, budget_s: float, seed: int, data_dir: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        argv = command(method, budget_s, seed, data_dir, work)
        started = time.perf_counter()
        done = subprocess.run([*APP, *argv], cwd=work, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
        wall = time.perf_counter() - started
        if done.returncode:
            raise SystemExit(f"{method} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        loaded = ckpt.load_model(work / "models" / method)
        # the trainer's score of the kept weights over the whole validation split, per character (a BPE winner's
        # too: its own tokens of the same text); older models without it are scored here
        val = (loaded.info.get("summary") or {}).get("val_loss") or evaluate(loaded, data_dir=data_dir).nats_per_char
        shape = {k: loaded.info["model"].get(k) for k in ("n_layer", "n_embd", "block_size")}
        shape["tokenizer"] = f"{loaded.vocab.kind}-{len(loaded.vocab)}"
        return {"method": method, "seed": seed, "val": val, "wall_s": wall, "budget_s": budget_s, **shape,
                "trials": study_summary(storage_url(work), method), "log_tail": done.stderr[-1500:]}  # fmt: skip


def storage_url(work: Path) -> str:
    return f"sqlite:///{work}/studies.db"


def study_summary(storage: str, method: str) -> list[dict]:
    """What each trial of a tuning method tried and scored (a tournament's rungs included), for reading a
    result afterwards; empty for the default, which runs no study."""
    if method == "a_default":
        return []
    import optuna

    study = optuna.load_study(study_name=method[0], storage=storage)
    keys = ("n_layer", "n_embd", "block_size", "batch_size", "lr", "muon_lr")
    return [
        {"trial": t.number, "state": t.state.name, "value": t.value,
         **{k: t.user_attrs[k] for k in ("candidate", "rung", "seconds", "steps") if k in t.user_attrs},
         **{k: (t.user_attrs.get("params") or t.params).get(k) for k in keys}}
        for t in study.trials
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", default="10m,30m")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--corpora", default="shakespeare,bible")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", default="tune_budget", help="results name under benchmarks/results")
    args = parser.parse_args()
    rows, runs = [], []
    for corpus in args.corpora.split(","):
        data_dir = corpus_dir(corpus)
        for budget in args.budgets.split(","):
            budget_s = parse_duration(budget)
            for method in args.methods.split(","):
                done = [run(method, budget_s, int(seed), data_dir) for seed in args.seeds.split(",")]
                runs += [r | {"corpus": corpus} for r in done]
                rows.append({
                    "corpus": corpus, "budget": budget, "method": method,
                    "val (median)": statistics.median(r["val"] for r in done),
                    "vals": " ".join(f"{r['val']:.3f}" for r in done),
                    "wall_s (median)": statistics.median(r["wall_s"] for r in done),
                    "model": " ".join(f"{r['n_layer']}x{r['n_embd']}/{r['block_size']}" for r in done),
                })  # fmt: skip
                print_table(rows[-1:], list(rows[-1]))
                sys.stdout.flush()
                write_results(args.out, {"args": vars(args), "rows": rows, "runs": runs})  # a row a half-hour
    print(f"\nval loss on the whole validation split, seeds {args.seeds}:")
    print_table(rows, list(rows[0]))


if __name__ == "__main__":
    main()

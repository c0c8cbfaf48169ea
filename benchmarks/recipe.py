"""The training recipe at equal wall time: classic (nanoGPT 2022), each modern option alone, and the default.

    python benchmarks/recipe.py --seconds 100 --seeds 0,1,2 --corpora shakespeare,bible
    python benchmarks/recipe.py --gpu            # 6x384, context 256, batch 64 (the nanoGPT GPU recipe's shape)

Every run trains for the same wall time (evaluation excluded), then its saved model is scored on the whole
validation split (core.evaluate.split_loss). Reports the median over seeds, ms/step and MFU, and the wall
time the default needs to reach classic's val loss after --steps steps (the half-time target).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import matmul_peak, print_table, wait_for_quiet, write_results  # noqa: E402
from benchmarks.corpora import corpus_dir  # noqa: E402
from core import checkpoint as ckpt  # noqa: E402
from core.config import RECIPES, recipe_configs, replace_known  # noqa: E402
from core.data import Dataset  # noqa: E402
from core.evaluate import split_loss  # noqa: E402
from core.model import flops_per_token  # noqa: E402
from core.trainer import TrainHooks, train  # noqa: E402

CLASSIC = RECIPES["classic"]
# Each option alone on top of classic; the last row is the new default (all of them).
VARIANTS = {
    "classic": {},
    "+rope": {"pos_encoding": "rope"},
    "+rmsnorm": {"norm": "rmsnorm"},
    "+qk_norm": {"qk_norm": True},
    "+relu2": {"mlp": "relu2"},
    "+muon": {"optimizer": "muon"},
    "+wsd": {"schedule": "wsd"},
    "default": None,
}
CPU_SHAPE = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "batch_size": 12}
GPU_SHAPE = {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "batch_size": 64, "dropout": 0.2}


def configs(variant: str, shape: dict, seed: int, data_dir: Path, seconds: float, steps: int):
    overrides = VARIANTS[variant]
    model_config, train_config = recipe_configs("modern" if overrides is None else "classic")
    values = {**shape, **(overrides or {})}
    model_config = replace_known(model_config, values)
    train_config = replace_known(
        train_config,
        {
            **values,
            "data_dir": str(data_dir),
            "seed": seed,
            "max_iters": steps if steps else 10**9,
            "max_minutes": seconds / 60,
            "eval_interval": 10**9,
            "eval_iters": 1,
            "sample_chars": 0,
            "eval_train": False,
            "warmup_iters": 100,
        },
    )
    return model_config, train_config


def run(variant: str, shape: dict, seed: int, data_dir: Path, seconds: float, steps: int = 0) -> dict:
    model_config, train_config = configs(variant, shape, seed, data_dir, seconds, steps)
    dataset = Dataset(data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        wait_for_quiet(30)
        started = time.perf_counter()
        result = train(
            model_config,
            train_config,
            out_dir=Path(tmp) / "m",
            dataset=dataset,
        )
        wall = time.perf_counter() - started
        loaded = ckpt.load_model(Path(tmp) / "m")
        val = split_loss(loaded.model, dataset.tokens["val"])
    step_s = result.elapsed_s / max(result.iters, 1)
    tokens_per_step = train_config.batch_size * model_config.block_size
    flops = flops_per_token(replace_known(model_config, {"vocab_size": len(dataset.vocab)})) * tokens_per_step
    return {
        "variant": variant,
        "seed": seed,
        "val": val,
        "steps": result.iters,
        "ms_step": 1000 * step_s,
        "flops_per_s": flops / step_s,
        "wall_s": wall,
    }


def time_to_reach(shape: dict, seed: int, data_dir: Path, steps: int) -> dict:
    """Classic's val loss after `steps` steps, and the training seconds the default needs to reach it. Both are
    measured on the same 50 validation batches (the evaluation windows follow the seed and the context)."""
    dataset = Dataset(data_dir)

    def curve(variant: str, interval: int) -> tuple[list[tuple[int, float]], float]:
        model_config, train_config = configs(variant, shape, seed, data_dir, 0, steps)
        train_config = replace_known(train_config, {"max_minutes": 0.0, "eval_interval": interval, "eval_iters": 50})
        points: list[tuple[int, float]] = []
        wait_for_quiet(30)
        result = train(model_config, train_config, dataset=dataset,
                       hooks=TrainHooks(on_eval=lambda e: points.append((e.step, e.val_loss))))  # fmt: skip
        step_s = train_config.batch_size * model_config.block_size / result.tokens_per_s  # training time only
        return points, step_s

    (classic_points, classic_step_s) = curve("classic", steps)
    target = classic_points[-1][1]
    points, step_s = curve("default", 25)
    reached = next((step for step, val in points if val <= target), None)
    return {
        "classic_steps": steps, "classic_val": target, "classic_train_s": steps * classic_step_s,
        "default_step_reaching_it": reached, "default_train_s": reached * step_s if reached else None,
        "ratio": reached * step_s / (steps * classic_step_s) if reached else None,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=100)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--corpora", default="shakespeare,bible")
    parser.add_argument("--options", "--variants", dest="variants", default=",".join(VARIANTS),
                        help="recipe options to compare, comma-separated (not core.variants, the tokenized datasets)")  # fmt: skip
    parser.add_argument(
        "--steps",
        type=int,
        default=0,
        help="also: classic for this many steps, and the default's wall time to reach its val loss (0 = skip)",
    )
    parser.add_argument("--gpu", action="store_true", help="the GPU shape (6x384, context 256, batch 64)")
    parser.add_argument("--out", default="", help="results name under benchmarks/results (default: recipe[_gpu])")
    args = parser.parse_args()
    shape = GPU_SHAPE if args.gpu else CPU_SHAPE
    seeds = [int(s) for s in args.seeds.split(",")]
    peak = matmul_peak()["flops_per_s"]
    rows, runs = [], []
    for corpus in args.corpora.split(","):
        data_dir = corpus_dir(corpus)
        for variant in [v for v in args.variants.split(",") if v != "none"]:
            done = [run(variant, shape, seed, data_dir, args.seconds) | {"corpus": corpus} for seed in seeds]
            runs += done
            rows.append(
                {
                    "corpus": corpus,
                    "variant": variant,
                    "val (median)": statistics.median(r["val"] for r in done),
                    "vals": " ".join(f"{r['val']:.3f}" for r in done),
                    "steps": statistics.median(r["steps"] for r in done),
                    "ms/step": statistics.median(r["ms_step"] for r in done),
                    "MFU": statistics.median(r["flops_per_s"] for r in done) / peak,
                }
            )
            print_table(rows[-1:], list(rows[-1]))
        if args.steps:
            halftime = time_to_reach(shape, seeds[0], data_dir, args.steps)
            runs.append(halftime | {"corpus": corpus, "variant": "time to classic's loss"})
            print(f"{corpus}: {halftime}")
    if rows:
        print(f"\nval loss on the whole validation split after {args.seconds:g} s of training, seeds {seeds}:")
        print_table(rows, list(rows[0]))
    write_results(
        args.out or "recipe" + ("_gpu" if args.gpu else ""),
        {"args": vars(args), "rows": rows, "runs": runs, "matmul_peak_flops": peak},
    )


if __name__ == "__main__":
    main()

"""`train`: one model trained and saved under models/NAME, from flags, a recipe or a study's best."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from cli.common import StopOnSignal
from cli.flags import add_dataclass_flags, given
from core import checkpoint as ckpt
from core.config import DEFAULT_STORAGE, RECIPES, ModelConfig, TrainConfig
from core.data import ensure_default_dataset
from core.distributed import DistContext, init_from_env, shutdown
from core.runs import ModelTaken, claim_model_dir, record_source, run_configs
from core.trainer import TrainHooks, progress_fraction, train


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model and save it under models/NAME")
    add_train_arguments(p)
    p.add_argument("--from-study", metavar="STUDY", help="start from the best params of this study")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="storage of --from-study")
    p.set_defaults(func=run)


def add_train_arguments(p: argparse.ArgumentParser, with_data_dir: bool = True) -> None:
    p.add_argument("--name", default="default", help="model name: saved under models/NAME (default: default)")
    p.add_argument("--models-dir", default="models", help="where saved models live")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of --name")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model of that name")
    p.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default=None,
        help="defaults for the fields you do not set: modern (the default: rotary positions, RMSNorm, QK-norm, "
        "ReLU², Muon, warmup-stable-decay; measured best per CPU-minute) or classic (nanoGPT 2022, reproduced "
        "exactly); a run with --init-from keeps its base's",
    )
    add_dataclass_flags(p, ModelConfig, "model")
    skip = () if with_data_dir else ("data_dir", "device", "seed", "eval_interval", "eval_iters")
    add_dataclass_flags(p, TrainConfig, "final training", skip=skip)


def run(args: argparse.Namespace) -> int:
    tuned = None
    if args.from_study:
        from core.tune.results import best_params
        from core.tune.storage import open_study

        tuned = best_params(open_study(args.from_study, args.storage))
        print(f"using trial {tuned['trial']} of study {tuned['study']} (val {tuned['val_loss']:.4f})", file=sys.stderr)
    return run_training(args, tuned)


def run_training(args: argparse.Namespace, tuned: dict[str, Any] | None = None) -> int:
    """Train `args.name`; `tuned` is a study's best-params record (see core.tune.results.best_params).

    Under torchrun every rank runs this; rank 0 alone prepares folders, prints and writes.
    """
    dist = init_from_env()
    try:
        return _run_training(args, tuned, dist)
    finally:
        shutdown(dist)


def _run_training(args: argparse.Namespace, tuned: dict[str, Any] | None, dist: DistContext) -> int:
    from tqdm import tqdm

    out_dir = ckpt.model_dir(args.name, args.models_dir)
    flags = given(args, ModelConfig) | given(args, TrainConfig)
    if dist.is_main and flags.get("init_from"):  # the base's vocabulary reads the text before training starts
        ensure_default_dataset(flags.get("data_dir", TrainConfig.data_dir))
    model_config, train_config = run_configs(
        out_dir, recipe=args.recipe, flags=flags, tuned=tuned, resume=args.resume, models_dir=args.models_dir
    )
    info = None
    if dist.is_main:
        claim(out_dir, resume=args.resume, overwrite=args.overwrite)
        ensure_default_dataset(train_config.data_dir)
        info = record_source(out_dir, tuned)
    dist.barrier()
    # A time budget owns the bar (elapsed of total seconds, ETA from it); else the step count does.
    by_time = train_config.max_minutes > 0
    bar = tqdm(
        total=round(train_config.max_minutes * 60) if by_time else train_config.max_iters,
        desc=args.name,
        unit="s" if by_time else "it",
        dynamic_ncols=True,
        file=sys.stderr,
        mininterval=0.5,
        disable=not dist.is_main,
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}s [{elapsed}<{remaining}{postfix}]" if by_time else None,
    )

    def on_step(event) -> None:
        if not by_time and bar.n == 0 and event.step > 1:
            bar.n = event.step - 1
        bar.update(progress_fraction(event, train_config) * bar.total - bar.n)
        steps = {"step": f"{event.step:,}" + (f"/{event.max_iters:,}" if event.max_iters else "")} if by_time else {}
        bar.set_postfix(
            **steps, loss=f"{event.loss:.3f}", lr=f"{event.lr:.1e}", tok_s=f"{event.tokens_per_s:,.0f}", refresh=False
        )

    def on_eval(event) -> None:
        if not dist.is_main:
            return
        mark = " *" if event.improved else ""
        train_part = f"train {event.train_loss:.4f}, " if math.isfinite(event.train_loss) else ""
        bar.write(f"step {event.step}: {train_part}val {event.val_loss:.4f}{mark}")
        if event.sample:
            bar.write("  | " + event.sample.replace("\n", "\n  | "))

    with StopOnSignal() as stop:
        try:
            result = train(
                model_config,
                train_config,
                out_dir=out_dir,
                resume=args.resume,
                hooks=TrainHooks(on_step=on_step, on_eval=on_eval, should_stop=stop),
                info=info,
                dist=dist,
            )
        finally:
            bar.close()
    if not dist.is_main:
        return 0
    if result.stop_reason != "max_iters":
        print(f"stopped: {result.stop_reason.replace('_', ' ')} at step {result.iters}", file=sys.stderr)
    print(f"saved {out_dir} (val loss {result.shown_val_loss:.4f} nats/char over the whole validation split, the "
          f"weights of step {result.best_step})", file=sys.stderr)  # fmt: skip
    print(result.final_line())
    return 0


def claim(out_dir, *, resume: bool, overwrite: bool) -> None:
    try:
        claim_model_dir(out_dir, resume=resume, overwrite=overwrite)
    except ModelTaken as err:
        raise ModelTaken(err.out_dir, "add --resume to continue it, --overwrite to replace it") from None

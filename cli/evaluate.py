"""`evaluate`: a saved model's loss per character on the validation split or any text file."""

from __future__ import annotations

import argparse
import sys

from core import checkpoint as ckpt
from core.data import DEFAULT_DATA_DIR


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="a saved model's loss per character on the validation split or any text")
    p.add_argument("--model", default=None, help="model name in models/ or a folder (default: the newest)")
    p.add_argument("--models-dir", default="models", help="where saved models live")
    p.add_argument("--text", metavar="FILE", help="a UTF-8 text file to score (default: the validation split)")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="dataset whose validation split is scored")
    p.add_argument("--stride", type=int, default=0,
                   help="tokens the context slides by; each is predicted once (default: half the context)")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from core.device import pick_device
    from core.evaluate import evaluate

    loaded = ckpt.load_model(args.model, args.models_dir, device=pick_device(args.device))
    where = args.text or f"the validation split of {args.data_dir}"
    with tqdm(total=None, unit="window", desc=f"evaluate {loaded.name}", file=sys.stderr, mininterval=0.5,
              delay=0.5) as bar:  # fmt: skip

        def on_progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        result = evaluate(
            loaded, text_file=args.text or None, data_dir=args.data_dir, stride=args.stride, on_progress=on_progress
        )
    print(f"{loaded.name} on {where}: {result.nats_per_char:.4f} nats ({result.bits_per_char:.4f} bits) per character",
          file=sys.stderr)  # fmt: skip
    print(result.line())
    return 0

"""`prepare`: a dataset folder from text files, folders or archives (or the default corpus)."""

from __future__ import annotations

import argparse
import math

from cli.common import CliError
from core.data import DEFAULT_DATA_DIR, prepare


def add_parser(sub) -> None:
    p = sub.add_parser("prepare", help="build dataset/ from text files or folders (default: Shakespeare)")
    p.add_argument("inputs", nargs="*", help="text files or folders (none: the default corpus)")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="output folder (default: dataset)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of text kept for validation")
    p.add_argument(
        "--errors", choices=["strict", "replace"], default="strict", help="undecodable bytes: fail or replace"
    )
    p.add_argument(
        "--tokenizer",
        choices=["char", "bpe"],
        default="char",
        help="char: one token a character (default); bpe: a byte-level BPE trained on the training split",
    )
    p.add_argument("--tokenizer-from", metavar="MODEL",
                   help="prepare the text for a run built on this saved model (name or folder): a BPE model's own "
                   "tokenizer encodes it, none is trained (see train --init-from)")  # fmt: skip
    p.add_argument("--models-dir", default="models", help="where --tokenizer-from looks for the model")
    p.add_argument("--vocab-size", type=int, default=2048, help="--tokenizer bpe: tokens in its vocabulary (256-65535)")  # fmt: skip
    p.add_argument("--max-unpacked-gb", type=float, default=2.0,
                   help="the most archives and compressed files may expand to, in billions of characters (default 2)")  # fmt: skip
    p.set_defaults(func=run)


def unpacked_limit(gigachars: float) -> int:
    if not (gigachars > 0 and math.isfinite(gigachars)):
        raise CliError(f"--max-unpacked-gb must be a positive number, got {gigachars}")
    return int(gigachars * 1e9)


def saved_tokenizer(args: argparse.Namespace):
    """The tokenizer of --tokenizer-from's model; --tokenizer or --vocab-size beside it would contradict it."""
    if not args.tokenizer_from:
        return None
    from core.bpe import load_tokenizer
    from core.checkpoint import resolve_model

    if args.tokenizer != "char" or args.vocab_size != 2048:
        raise CliError("--tokenizer-from uses the saved model's tokenizer; drop --tokenizer and --vocab-size")
    return load_tokenizer(resolve_model(args.tokenizer_from, args.models_dir))


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    with tqdm(total=100, unit="%", desc="prepare", bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}") as bar:

        def on_progress(fraction: float, message: str) -> None:
            bar.set_description(message)
            bar.update(round(fraction * 100) - bar.n)

        stats = prepare(
            args.inputs or None,
            args.data_dir,
            val_fraction=args.val_fraction,
            errors=args.errors,
            on_progress=on_progress,
            tokenizer=args.tokenizer,
            vocab_size=args.vocab_size,
            max_unpacked_chars=unpacked_limit(args.max_unpacked_gb),
            tokenizer_from=saved_tokenizer(args),
        )
    print(stats.summary())
    return 0

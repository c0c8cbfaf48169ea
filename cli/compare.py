"""`compare`: saved models side by side, their configs, losses and one prompt continued."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="saved models side by side: configs, curves' best, one prompt continued")
    p.add_argument("models", nargs="+", help="two or more model names in models/")
    p.add_argument("--models-dir", default="models", help="where saved models live")
    p.add_argument("--prompt", default="\\n", help="the text every model continues (\\n for a newline)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, the same for every model")
    p.add_argument("--chars", type=int, default=200, help="characters each model writes")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from core.compare import compare

    prompt = args.prompt.replace("\\n", "\n")
    result = compare(args.models, args.models_dir, prompt, args.seed, args.chars)
    width = max(len(row[0]) for row in result.table)
    print(" " * width + "  " + "  ".join(f"{name:>14}" for name in result.names))
    for field_name, *values in result.table:
        print(f"{field_name:<{width}}  " + "  ".join(f"{v:>14}" for v in values))
    for name, text in result.continuations.items():
        print(f"\n--- {name} (seed {args.seed}) ---\n{prompt}{text}")
    return 0

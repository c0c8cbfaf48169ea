"""`push`: a saved model's Hugging Face export uploaded to the Hub."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("push", help="upload a saved model to the Hugging Face Hub (its export/hf folder, made and "
                       "checked first if missing or older than the model)")  # fmt: skip
    p.add_argument("--model", default=None, help="model name in models/ or a folder (default: the newest)")
    p.add_argument("--models-dir", default="models", help="where saved models live")
    p.add_argument("--repo", required=True, metavar="USER/NAME", help="the Hub model repository (created if absent)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--dry-run", action="store_true", help="show the folder and files it would upload, upload nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from core.export import ready_export
    from core.hf import check_repo, push_hf, push_plan

    check_repo(args.repo)  # before minutes of exporting
    folder = ready_export(args.model, args.models_dir, log=lambda line: print(line, file=sys.stderr))
    files = push_plan(folder)
    print(f"{'would upload' if args.dry_run else 'uploading'} {folder} to {args.repo}: {', '.join(files)}",
          file=sys.stderr)  # fmt: skip
    if args.dry_run:
        return 0
    url = push_hf(folder, args.repo, private=args.private)  # the token: HF_TOKEN or `hf auth login`
    print(f"pushed {url}")
    return 0

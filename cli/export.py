"""`export`: a saved model in a format other tools run, with its tokenizer and card."""

from __future__ import annotations

import argparse
import sys

WHAT = {"onnx": "model.onnx, tokenizer, README.md", "hf": "a transformers folder: weights, config, tokenizer, card"}


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a saved model as ONNX or a Hugging Face transformers folder, with "
                       "its tokenizer and card (models/NAME/export, models/NAME/export/hf)")  # fmt: skip
    p.add_argument("--model", default=None, help="model name in models/ or a folder (default: the newest)")
    p.add_argument("--models-dir", default="models", help="where saved models live")
    p.add_argument("--format", choices=["onnx", "hf"], default="onnx",
                   help="onnx (default) or hf: a folder transformers' from_pretrained and pipeline load")  # fmt: skip
    p.add_argument("--check", action="store_true",
                   help="run the export (onnxruntime, or transformers and its pipeline) beside PyTorch; fail above "
                   "1e-4 logit difference")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from core.export import export_model

    print(f"exporting {args.model or 'the newest model'} to {args.format}...", file=sys.stderr)
    result = export_model(args.model, args.models_dir, fmt=args.format, check=args.check)
    if result.max_abs_diff is not None:
        runner = "onnxruntime" if args.format == "onnx" else "transformers"
        print(f"checked in {runner}: largest logit difference from PyTorch {result.max_abs_diff:.2e}",
              file=sys.stderr)  # fmt: skip
    if result.sample:
        print(f"transformers' pipeline wrote: {result.sample!r}", file=sys.stderr)
    print(f"wrote {result.folder} ({WHAT[args.format]}) in {result.seconds:.1f}s", file=sys.stderr)
    print(result.line())
    return 0

"""`export`: a saved model in a format other tools run, with its tokenizer and card."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a saved model as ONNX with its tokenizer and card (models/NAME/export)")
    p.add_argument("--model", default=None, help="model name in models/ or a folder (default: the newest)")
    p.add_argument("--models-dir", default="models", help="where saved models live")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="export format (default: onnx)")
    p.add_argument("--check", action="store_true",
                   help="run the export in onnxruntime beside PyTorch; fail above 1e-4 logit difference")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from core.export import export_model

    print(f"exporting {args.model or 'the newest model'} to {args.format}...", file=sys.stderr)
    result = export_model(args.model, args.models_dir, fmt=args.format, check=args.check)
    if result.max_abs_diff is not None:
        print(f"checked in onnxruntime: largest logit difference from PyTorch {result.max_abs_diff:.2e}",
              file=sys.stderr)  # fmt: skip
    print(f"wrote {result.folder} (model.onnx, tokenizer, README.md) in {result.seconds:.1f}s", file=sys.stderr)
    print(result.line())
    return 0

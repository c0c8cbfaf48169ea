"""`python app.py`: one parser for the workbench and every command (so no flag is listed twice).

Each command is a module of cli/ with its parser (`add_parser`) beside what it does.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import torch

from cli import chat, compare, evaluate, export, prepare, push, serve_api, studies, train, tune
from cli.common import CliError
from core import checkpoint as ckpt
from core.config import DEFAULT_STORAGE, ConfigError
from core.data import DataError
from core.trainer import LossDiverged

COMMANDS = (
    prepare,
    train,
    compare,
    evaluate,
    export,
    push,
    serve_api,
    chat,
    tune,
    studies,
)  # in the order --help lists


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python app.py",
        description="Train a character-level GPT on your text, tune it with Optuna, and chat with it. "
        "Without a command, opens the workbench.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    p = sub.add_parser("serve", help="open the workbench (the default without a command)")
    add_serve_flags(p)
    # `python app.py --port 8000` opens the workbench too; absent flags stay absent here, so that no default of
    # the workbench's lands in a command's namespace (tune's --storage has its own)
    add_serve_flags(parser, argparse.SUPPRESS)
    return parser


def add_serve_flags(parser: argparse.ArgumentParser, absent: object = None) -> None:
    """The workbench's flags: one list, for `python app.py [serve] ...` alike."""

    def default(value: object) -> object:
        return value if absent is None else absent

    group = parser.add_argument_group("workbench (python app.py [serve])")
    group.add_argument(
        "--host", default=default("127.0.0.1"), help="address to bind (default: 127.0.0.1, this machine)"
    )
    group.add_argument("--port", type=int, default=default(7860), help="port (default: 7860)")
    group.add_argument(
        "--share", action="store_true", default=default(False), help="ask Gradio for a temporary public link"
    )
    group.add_argument("--auth", default=default(None), metavar="USER:PASS", help="require this login")
    group.add_argument("--auth-file", default=default(None), metavar="FILE", help="logins, one user:password a line")
    group.add_argument(
        "--no-dashboard", action="store_true", default=default(False), help="do not start optuna-dashboard"
    )
    group.add_argument(
        "--allow-dir", action="append", default=default([]), metavar="FOLDER",
        help="a folder whose text files the Dataset tab may read by path, besides corpora/ and uploads/ (repeatable)",
    )  # fmt: skip
    group.add_argument("--storage", default=default(""), help=f"Optuna storage URL (default: {DEFAULT_STORAGE})")


CHATTY_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx", "torch._dynamo", "torch._inductor", "httpx", "urllib3")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:  # libraries' chatter (one export logged 159 INFO lines of onnxscript)
        for name in CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    if args.command in (None, "serve"):
        from workbench.app import serve

        defaults = argparse.ArgumentParser()
        add_serve_flags(defaults)  # the flags absent at the top level take the workbench's defaults
        return serve(argparse.Namespace(**{**vars(defaults.parse_args([])), **vars(args)}))
    try:
        return args.func(args)
    except (CliError, ConfigError, DataError, ckpt.ModelError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except LossDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except (MemoryError, torch.OutOfMemoryError):
        print("error: out of memory; lower --batch-size, --block-size or the model size", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130

"""`python app.py`: one parser for the workbench and every command (so no flag is listed twice)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import torch

from cli.commands import (
    CliError,
    cmd_chat,
    cmd_compare,
    cmd_dashboard,
    cmd_evaluate,
    cmd_export,
    cmd_prepare,
    cmd_proxy,
    cmd_serve_api,
    cmd_studies,
    cmd_train,
    cmd_tune,
)
from cli.flags import add_dataclass_flags
from core import checkpoint as ckpt
from core.config import DEFAULT_STORAGE, RECIPES, ConfigError, ModelConfig, TrainConfig
from core.data import DEFAULT_DATA_DIR, DataError
from core.sampling import SamplingConfig
from core.trainer import LossDiverged

# --- parser ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python app.py",
        description="Train a character-level GPT on your text, tune it with Optuna, and chat with it. "
        "Without a command, opens the workbench.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

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
    p.add_argument("--vocab-size", type=int, default=2048, help="--tokenizer bpe: tokens in its vocabulary (256-65535)")  # fmt: skip
    p.add_argument("--max-unpacked-gb", type=float, default=2.0,
                   help="the most archives and compressed files may expand to, in billions of characters (default 2)")  # fmt: skip
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train a model and save it under models/NAME")
    add_train_arguments(p)
    p.add_argument("--from-study", metavar="STUDY", help="start from the best params of this study")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="storage of --from-study")
    p.set_defaults(func=cmd_train)

    _add_model_commands(sub)
    _add_study_commands(sub)
    p = sub.add_parser("serve", help="open the workbench (the default without a command)")
    add_serve_flags(p)
    # `python app.py --port 8000` opens the workbench too; absent flags stay absent here, so that no default of
    # the workbench's lands in a command's namespace (tune's --storage has its own)
    add_serve_flags(parser, argparse.SUPPRESS)
    return parser


def _add_model_commands(sub) -> None:
    """The commands that use a saved model: compare, evaluate, export, serve-api, chat."""
    p = sub.add_parser("compare", help="saved models side by side: configs, curves' best, one prompt continued")
    p.add_argument("models", nargs="+", help="two or more model names in models/")
    p.add_argument("--models-dir", default="models", help="where saved models live")
    p.add_argument("--prompt", default="\\n", help="the text every model continues (\\n for a newline)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, the same for every model")
    p.add_argument("--chars", type=int, default=200, help="characters each model writes")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("evaluate", help="a saved model's loss per character on the validation split or any text")
    p.add_argument("--model", default=None, help="model name in models/ or a folder (default: the newest)")
    p.add_argument("--models-dir", default="models", help="where saved models live")
    p.add_argument("--text", metavar="FILE", help="a UTF-8 text file to score (default: the validation split)")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="dataset whose validation split is scored")
    p.add_argument("--stride", type=int, default=0,
                   help="tokens the context slides by; each is predicted once (default: half the context)")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="write a saved model as ONNX with its tokenizer and card (models/NAME/export)")
    p.add_argument("--model", default=None, help="model name in models/ or a folder (default: the newest)")
    p.add_argument("--models-dir", default="models", help="where saved models live")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="export format (default: onnx)")
    p.add_argument("--check", action="store_true",
                   help="run the export in onnxruntime beside PyTorch; fail above 1e-4 logit difference")  # fmt: skip
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve-api", help="serve a saved model as an OpenAI-style completion API")
    p.add_argument("--model", default=None, help="model name in models/ or a folder (default: the newest)")
    p.add_argument("--models-dir", default="models", help="where saved models live")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (beyond 127.0.0.1 needs --api-key)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (default: $CHARGPT_API_KEY; none on 127.0.0.1)")  # fmt: skip
    p.add_argument("--max-tokens-limit", type=int, default=4096, help="the most max_tokens a request may ask")
    p.add_argument("--max-prompt-bytes", type=int, default=1_000_000, help="the longest prompt, in UTF-8 bytes")
    p.add_argument("--max-stop-chars", type=int, default=1_000, help="the longest stop string, in characters")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="a browser page that may call the API (e.g. http://localhost:3000; '*' for any); "
                   "repeat for more; by default browsers are refused")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=cmd_serve_api)

    p = sub.add_parser("chat", help="chat with a saved model in the terminal")
    p.add_argument("--model", default=None, help="model name in models/ or a folder (default: the newest)")
    p.add_argument("--models-dir", default="models", help="where saved models live")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    add_dataclass_flags(p, SamplingConfig, "sampling")
    p.set_defaults(func=cmd_chat)


def _add_study_commands(sub) -> None:
    """The commands of Optuna studies: tune, studies, proxy, dashboard."""
    from core.tune.config import TuneConfig

    p = sub.add_parser("tune", help="search hyperparameters with Optuna (resumable, shareable by many workers)")
    add_dataclass_flags(p, TuneConfig, "study")
    p.add_argument("--space", help="search space JSON file (fields not given keep their defaults)")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    p.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--create-only", action="store_true", help="create the study and exit (before starting workers)")
    p.add_argument("--then-train", action="store_true", help="train the final model with the best params")
    add_train_arguments(p, with_data_dir=False)
    p.set_defaults(func=cmd_tune, from_study=None)

    p = sub.add_parser("studies", help="list the studies of a storage")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help=f"Optuna storage URL (default: {DEFAULT_STORAGE})")
    p.set_defaults(func=cmd_studies)

    p = sub.add_parser("proxy", help="serve a storage to many workers through Optuna's gRPC proxy")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="the storage behind the proxy")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for other machines)")
    p.add_argument("--port", type=int, default=13000)
    p.add_argument("--heartbeat", type=int, default=10, help="seconds between trial heartbeats")
    p.set_defaults(func=cmd_proxy)

    p = sub.add_parser("dashboard", help="serve optuna-dashboard on the study storage (127.0.0.1)")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="Optuna storage URL")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (the dashboard has no login)")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(func=cmd_dashboard)


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


def add_train_arguments(p: argparse.ArgumentParser, with_data_dir: bool = True) -> None:
    p.add_argument("--name", default="default", help="model name: saved under models/NAME (default: default)")
    p.add_argument("--models-dir", default="models", help="where saved models live")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of --name")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model of that name")
    p.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default="modern",
        help="defaults for the fields you do not set: modern (rotary positions, RMSNorm, QK-norm, ReLU², Muon, "
        "warmup-stable-decay; measured best per CPU-minute) or classic (nanoGPT 2022, reproduced exactly)",
    )
    add_dataclass_flags(p, ModelConfig, "model")
    skip = () if with_data_dir else ("data_dir", "device", "seed", "eval_interval", "eval_iters")
    add_dataclass_flags(p, TrainConfig, "final training", skip=skip)


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

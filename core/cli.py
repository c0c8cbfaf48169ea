"""The command line: `python app.py <command>`. Each subcommand is a thin call into core/.

Flags for ModelConfig, TrainConfig and SamplingConfig are generated from the dataclass fields, so every
field is a flag named after it (`n_layer` -> `--n-layer`) with the field's help text.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from core import checkpoint as ckpt
from core.config import DEFAULT_STORAGE, RECIPES, ConfigError, ModelConfig, TrainConfig, replace_known, to_dict
from core.data import DataError, prepare
from core.distributed import DistContext, init_from_env, shutdown
from core.runs import claim_model_dir, record_source, run_configs
from core.sampling import SamplingConfig
from core.trainer import LossDiverged, TrainHooks, train

log = logging.getLogger("chargpt")
DEFAULT_DATA_DIR = "dataset"


class CliError(RuntimeError):
    """An error to show the user as one line, without a traceback."""


# --- flags from dataclasses ------------------------------------------------------------------------


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, title: str, skip: Sequence[str] = ()) -> None:
    """One flag per field; absent flags stay absent (SUPPRESS), so callers can layer defaults."""
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.metadata.get("cli", True):
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        shown = f"{default:g}" if isinstance(default, float) else default
        help_text = f"{f.metadata.get('help', '')} (default: {shown})"
        if f.type in (bool, "bool"):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            kind = (
                _friendly(f.metadata["type"]) if "type" in f.metadata else _PLAIN_TYPES.get(str(f.type), type(default))
            )
            group.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=help_text, metavar=f.name.upper())


_PLAIN_TYPES = {"int": int, "float": float, "str": str}


def _friendly(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Let argparse show the parser's own error message instead of 'invalid value'."""

    def wrapped(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return wrapped


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of `cls` the user set on the command line."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}


# --- prepare ---------------------------------------------------------------------------------------


def ensure_dataset(data_dir: str) -> None:
    """Prepare the default corpus when the default dataset folder is empty (first run)."""
    folder = Path(data_dir)
    if (folder / "vocab.txt").exists() or data_dir != DEFAULT_DATA_DIR:
        return
    log.info("no dataset in %s/ yet: preparing the default corpus (Shakespeare)", data_dir)
    print(prepare(None, folder).summary(), file=sys.stderr)


def cmd_prepare(args: argparse.Namespace) -> int:
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
        )
    print(stats.summary())
    return 0


# --- train -----------------------------------------------------------------------------------------


class StopOnSignal:
    """First Ctrl-C (or SIGTERM) asks the run to stop and save; a second one aborts."""

    def __init__(self) -> None:
        self.requested = False
        self.on_request: Callable[[], None] | None = None

    def __enter__(self) -> StopOnSignal:
        self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.on_request:
            self.on_request()
        print("\nstopping after this step and saving (Ctrl-C again to abort)", file=sys.stderr)

    def __call__(self) -> bool:
        return self.requested


def run_training(args: argparse.Namespace, tuned: dict[str, Any] | None = None) -> int:
    """Train `args.name`; `tuned` is a study's best-params record (see core.tuning.best_params).

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
    if out_dir.exists() and any(out_dir.iterdir()) and not (args.resume or args.overwrite):
        raise CliError(
            f"{out_dir} already holds a model; add --resume to continue it, --overwrite to replace it, "
            "or choose another --name"
        )
    flags = given(args, ModelConfig) | given(args, TrainConfig)
    model_config, train_config = run_configs(out_dir, recipe=args.recipe, flags=flags, tuned=tuned, resume=args.resume)
    info = None
    if dist.is_main:
        claim_model_dir(out_dir, resume=args.resume, overwrite=args.overwrite)
        ensure_dataset(train_config.data_dir)
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
        done = min(event.elapsed_s, bar.total) if by_time else event.step
        if not by_time and bar.n == 0 and event.step > 1:
            bar.n = event.step - 1
        bar.update(done - bar.n)
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
    print(f"saved {out_dir} (best val {result.val_loss:.4f} at step {result.best_step})", file=sys.stderr)
    print(result.final_line())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    tuned = None
    if args.from_study:
        from core.tuning import best_params, open_study

        tuned = best_params(open_study(args.from_study, args.storage))
        print(f"using trial {tuned['trial']} of study {tuned['study']} (val {tuned['val_loss']:.4f})", file=sys.stderr)
    return run_training(args, tuned)


# --- tune ------------------------------------------------------------------------------------------


def tune_config(args: argparse.Namespace):
    from core.tuning import TuneConfig

    return replace_known(TuneConfig(), given(args, TuneConfig)).validate()


def cmd_tune(args: argparse.Namespace) -> int:
    import subprocess

    from core.tuning import SearchSpace, TuneConfig, create_study, run_study, worker_env

    config = tune_config(args)
    if "budget" in given(args, TuneConfig):
        return run_budgeted(args, config)
    space = SearchSpace.for_device(config.device)
    if args.space:
        space = SearchSpace.load(args.space, base=space)
    space.validate()
    ensure_dataset(config.data_dir)
    create_study(config)  # once, before any worker, so that workers never race on the schema
    if args.create_only:
        print(f"study {config.study} is ready in {config.storage}")
        return 0
    if args.workers > 1:
        per_worker = [config.trials // args.workers + (i < config.trials % args.workers) for i in range(args.workers)]
        argv = strip_options(sys.argv[1:], {"--workers": True, "--trials": True, "--then-train": False})
        procs = []
        for worker, trials in enumerate(per_worker):
            if trials:
                command = [sys.executable, sys.argv[0], *argv, "--trials", str(trials), "--worker-index", str(worker)]
                procs.append(subprocess.Popen(command, env=worker_env(worker, args.workers)))
        codes = [p.wait() for p in procs]
        if any(codes):
            raise CliError(f"worker(s) failed with exit codes {codes}")
    else:

        def report(event) -> None:
            if event.state != "RUNNING":
                value = f"{event.val_loss:.4f}" if event.val_loss is not None else "-"
                print(f"trial {event.trial}: {event.state.lower()} at step {event.step}, val {value}", file=sys.stderr)

        with StopOnSignal() as stop:
            import threading

            stop_event = threading.Event()
            stop.on_request = stop_event.set
            run_study(config, space, stop=stop_event, on_event=report, worker=args.worker_index or 0)
    from core.tuning import best_params, open_study, write_best_params

    study = open_study(config.study, config.storage)
    path = write_best_params(study, config.storage)
    tuned = best_params(study)
    print(f"best: trial {tuned['trial']} val_loss={tuned['val_loss']:.4f} params={json.dumps(tuned['params'])}")
    print(f"best params written to {path}")
    if args.then_train:
        return run_training(args, tuned)
    return 0


def run_budgeted(args: argparse.Namespace, config) -> int:
    """`tune --budget`: a tournament whose survivor is saved as models/NAME (see core.tournament)."""
    import subprocess
    import threading

    from core.tournament import has_plan, prepare_tournament, run_tournament
    from core.tuning import SearchSpace, worker_env

    if not config.budget > 0:
        raise CliError("--budget must be a positive duration, e.g. --budget 10m or --budget 1h")
    space = SearchSpace.for_budget(config.device)
    if args.space:
        space = SearchSpace.load(args.space, base=space)
    space.validate()
    fixed = given(args, ModelConfig) | given(args, TrainConfig)  # the user's flags hold for every candidate
    config = dataclasses.replace(config, overrides=fixed)
    out_dir = ckpt.model_dir(args.name, args.models_dir)
    continuing = has_plan(config)  # a re-run continues its own final model
    claim_model_dir(out_dir, resume=continuing, overwrite=args.overwrite)
    ensure_dataset(config.data_dir)
    spawned = args.worker_index is not None  # a worker process started by the command below
    if not spawned:
        _, plan = prepare_tournament(config, space, workers=args.workers)
        verb = "continuing" if continuing else "planned"
        print(f"tournament {config.study} ({verb}): {plan.describe()}; budget {config.budget:.0f}s", file=sys.stderr)
    if args.workers > 1 and not spawned:
        argv = strip_options(sys.argv[1:], {"--workers": True})
        procs = [
            subprocess.Popen(
                [sys.executable, sys.argv[0], *argv, "--workers", str(args.workers), "--worker-index", str(worker)],
                env=worker_env(worker, args.workers),
            )
            for worker in range(args.workers)
        ]
        codes = [p.wait() for p in procs]
        if any(codes):
            raise CliError(f"worker(s) failed with exit codes {codes}")
        print(f"saved {out_dir}", file=sys.stderr)
        return 0

    def report(event) -> None:
        left = f"{event.time_left_s / 60:.1f} min left"
        if event.kind == "end":
            score = f"val {event.score:.4f}" if event.score is not None else event.message
            print(
                f"rung {event.rung}: candidate {event.candidate} (trial {event.trial}) {score} after "
                f"{event.seconds:.0f}s · {left}",
                file=sys.stderr,
            )
        elif event.kind == "promote":
            print(event.message, file=sys.stderr)

    with StopOnSignal() as stop:
        stop_event = threading.Event()
        stop.on_request = stop_event.set
        final = run_tournament(
            config,
            space,
            name=args.name,
            models_dir=args.models_dir,
            worker=args.worker_index or 0,
            workers=args.workers,
            stop=stop_event,
            on_event=report,
        )
    if final is not None:
        from core.tuning import best_params_path

        print(f"saved {final}; best params in {best_params_path(config.study, config.storage)}", file=sys.stderr)
    elif stop_event.is_set():
        print("stopped; run the same command again to continue the tournament", file=sys.stderr)
    return 0


def strip_options(argv: list[str], options: dict[str, bool]) -> list[str]:
    """`argv` without the named options; the bool says whether the option takes a value."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in options:
            skip = options[name] and "=" not in arg
            continue
        out.append(arg)
    return out


def cmd_studies(args: argparse.Namespace) -> int:
    from core.tuning import list_studies

    studies = list_studies(args.storage)
    if not studies:
        print(f"no studies in {args.storage}")
    for summary in studies:
        print(summary.line())
    return 0


def cmd_proxy(args: argparse.Namespace) -> int:
    from optuna.storages import run_grpc_proxy_server

    from core.tuning import make_storage

    storage = make_storage(args.storage, heartbeat=args.heartbeat)
    print(
        f"Optuna gRPC proxy for {args.storage} on {args.host}:{args.port}; workers use --storage grpc://HOST:{args.port}"
    )
    run_grpc_proxy_server(storage, host=args.host, port=args.port)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from optuna_dashboard import run_server

    from core.tuning import make_storage

    print(f"optuna-dashboard for {args.storage} at http://{args.host}:{args.port} (Ctrl-C to stop)")
    run_server(make_storage(args.storage, heartbeat=0), host=args.host, port=args.port)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
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


# --- chat ------------------------------------------------------------------------------------------

CHAT_HELP = """commands: /help this help, /reset forget the conversation, quit or exit (or Ctrl-D) to leave
Each message is appended to the conversation; the model continues it until a blank line."""


def cmd_chat(args: argparse.Namespace) -> int:
    from core.chat import ChatSession
    from core.device import pick_device

    loaded = ckpt.load_model(args.model, args.models_dir, device=pick_device(args.device))
    settings = replace_known(SamplingConfig(), given(args, SamplingConfig)).validate()
    session = ChatSession(loaded, settings)
    if hasattr(sys.stdin, "reconfigure"):  # bytes that are not UTF-8 arrive as U+FFFD, which the notice names
        sys.stdin.reconfigure(errors="replace")
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {loaded.name} ({loaded.model.num_params() / 1e6:.2f}M parameters). {CHAT_HELP}")
    while True:
        try:
            message = input("you> " if interactive else "")
        except EOFError:
            break
        except KeyboardInterrupt:
            print()
            break
        command = message.strip()
        if command.lower() in ("quit", "exit", "/quit", "/exit"):
            break
        if command == "/help":
            print(CHAT_HELP)
            continue
        if command == "/reset":
            session.reset()
            print("(conversation cleared)")
            continue
        if not command:
            continue
        notice = session.unknown_notice(message)
        if notice:
            print(notice, file=sys.stderr)
        if interactive:
            print("bot> ", end="", flush=True)
        try:
            for piece in session.reply(message):
                print(piece, end="", flush=True)
        except KeyboardInterrupt:
            print(" (interrupted)", end="")
        print(flush=True)
    return 0


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
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train a model and save it under models/NAME")
    add_train_arguments(p)
    p.add_argument("--from-study", metavar="STUDY", help="start from the best params of this study")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="storage of --from-study")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="saved models side by side: configs, curves' best, one prompt continued")
    p.add_argument("models", nargs="+", help="two or more model names in models/")
    p.add_argument("--models-dir", default="models", help="where saved models live")
    p.add_argument("--prompt", default="\\n", help="the text every model continues (\\n for a newline)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, the same for every model")
    p.add_argument("--chars", type=int, default=200, help="characters each model writes")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("chat", help="chat with a saved model in the terminal")
    p.add_argument("--model", default=None, help="model name in models/ or a folder (default: the newest)")
    p.add_argument("--models-dir", default="models", help="where saved models live")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    add_dataclass_flags(p, SamplingConfig, "sampling")
    p.set_defaults(func=cmd_chat)

    from core.tuning import TuneConfig

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

    for register in _extra_commands:
        register(sub)
    return parser


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


_extra_commands: list[Callable[[Any], None]] = []


def register_commands(register: Callable[[Any], None]) -> None:
    """Let other modules (tuning, workbench) add subcommands without core.cli importing them."""
    _extra_commands.append(register)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
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


__all__ = ["main", "build_parser", "register_commands", "run_training", "to_dict"]

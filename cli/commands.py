"""The subcommands: each turns its flags into core configs, calls core/, and prints for a terminal."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import signal
import sys
from collections.abc import Callable
from typing import Any

from cli.flags import given
from core import checkpoint as ckpt
from core.config import ModelConfig, TrainConfig, replace_known
from core.data import ensure_default_dataset, prepare
from core.distributed import DistContext, init_from_env, shutdown
from core.runs import ModelTaken, claim_model_dir, record_source, run_configs
from core.sampling import SamplingConfig
from core.trainer import TrainHooks, progress_fraction, train

log = logging.getLogger("chargpt")
ONLY_FOR_TRIALS = ("trials", "then_train", "create_only", "timeout", "trial_iters", "trial_seconds", "trial_flops",
                   "pruner", "evals_per_trial", "pruner_percentile", "pruner_startup_trials")  # fmt: skip
ONLY_FOR_BUDGET = ("eta", "final_share", "search_rungs", "runs_dir")


class CliError(RuntimeError):
    """An error to show the user as one line, without a traceback."""


# --- prepare ---------------------------------------------------------------------------------------


def unpacked_limit(gigachars: float) -> int:
    if not (gigachars > 0 and math.isfinite(gigachars)):
        raise CliError(f"--max-unpacked-gb must be a positive number, got {gigachars}")
    return int(gigachars * 1e9)


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
            tokenizer=args.tokenizer,
            vocab_size=args.vocab_size,
            max_unpacked_chars=unpacked_limit(args.max_unpacked_gb),
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
    model_config, train_config = run_configs(out_dir, recipe=args.recipe, flags=flags, tuned=tuned, resume=args.resume)
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


def cmd_train(args: argparse.Namespace) -> int:
    tuned = None
    if args.from_study:
        from core.tune.results import best_params
        from core.tune.storage import open_study

        tuned = best_params(open_study(args.from_study, args.storage))
        print(f"using trial {tuned['trial']} of study {tuned['study']} (val {tuned['val_loss']:.4f})", file=sys.stderr)
    return run_training(args, tuned)


# --- tune ------------------------------------------------------------------------------------------


def tune_config(args: argparse.Namespace):
    from core.tune.config import TuneConfig

    return replace_known(TuneConfig(), given(args, TuneConfig)).validate()


def cmd_tune(args: argparse.Namespace) -> int:
    import subprocess

    from core.tune.config import TuneConfig
    from core.tune.space import SearchSpace
    from core.tune.storage import create_study
    from core.tune.study import run_study, worker_env

    config = tune_config(args)
    budgeted = "budget" in given(args, TuneConfig)
    ignored = [name for name in (ONLY_FOR_TRIALS if budgeted else ONLY_FOR_BUDGET) if getattr(args, name, False)]
    if ignored:
        flags = ", ".join("--" + name.replace("_", "-") for name in ignored)
        raise CliError(
            f"{flags} {'do' if len(ignored) > 1 else 'does'} not apply "
            + ("to tune --budget (a tournament plans its own rungs and trains the winner)" if budgeted
               else "without --budget (they shape a budgeted tournament)")
        )  # fmt: skip
    if budgeted:
        return run_budgeted(args, config)
    space = SearchSpace.for_device(config.device)
    if args.space:
        space = SearchSpace.load(args.space, base=space)
    space.validate()
    ensure_default_dataset(config.data_dir)
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
                print(event.text(), file=sys.stderr)

        with StopOnSignal() as stop:
            import threading

            stop_event = threading.Event()
            stop.on_request = stop_event.set
            run_study(config, space, stop=stop_event, on_event=report, worker=args.worker_index or 0)
    from core.tune.results import best_params, write_study_best_params
    from core.tune.storage import open_study

    study = open_study(config.study, config.storage)
    path = write_study_best_params(study, config.storage)
    tuned = best_params(study)
    print(f"best: trial {tuned['trial']} val_loss={tuned['val_loss']:.4f} params={json.dumps(tuned['params'])}")
    print(f"best params written to {path}")
    if args.then_train:
        return run_training(args, tuned)
    return 0


def run_budgeted(args: argparse.Namespace, config) -> int:
    """`tune --budget`: a tournament whose survivor is saved as models/NAME (see core.tune)."""
    import subprocess
    import threading

    from core.tune.record import begin_tournament, prepare_tournament
    from core.tune.rungs import run_tournament
    from core.tune.space import SearchSpace
    from core.tune.study import worker_env

    fixed = given(args, ModelConfig) | given(args, TrainConfig)  # the user's flags hold for every candidate
    config = dataclasses.replace(config, overrides=fixed)
    space = SearchSpace.load(args.space, base=SearchSpace.for_budget(config.device)) if args.space else None
    ensure_default_dataset(config.data_dir)
    try:
        out_dir, space, continuing = begin_tournament(
            config, space, args.name, args.models_dir, overwrite=args.overwrite
        )
    except ModelTaken as err:
        raise ModelTaken(err.out_dir, "add --overwrite to replace it") from None
    spawned = args.worker_index is not None  # a worker process started by the command below
    if not spawned:
        _, plan = prepare_tournament(config, space, workers=args.workers)
        verb = "continuing" if continuing else "planned"
        print(f"tournament {config.study} ({verb}): {plan.describe()}; budget {config.budget:.0f}s", file=sys.stderr)
        if not plan.searches:
            print("(--search-rungs 1 searches even a short budget)", file=sys.stderr)
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
        if event.kind in ("end", "promote"):
            print(f"{event.text()} · {event.time_left_s / 60:.1f} min left", file=sys.stderr)

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
        from core.tune.results import best_params_path

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
    from core.tune.results import list_studies

    studies = list_studies(args.storage)
    if not studies:
        print(f"no studies in {args.storage}")
    for summary in studies:
        print(summary.line())
    return 0


def cmd_proxy(args: argparse.Namespace) -> int:
    from optuna.storages import run_grpc_proxy_server

    from core.tune.storage import make_storage

    storage = make_storage(args.storage, heartbeat=args.heartbeat)
    print(
        f"Optuna gRPC proxy for {args.storage} on {args.host}:{args.port}; workers use --storage grpc://HOST:{args.port}"
    )
    run_grpc_proxy_server(storage, host=args.host, port=args.port)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from optuna_dashboard import run_server

    from core.tune.storage import make_storage

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


def cmd_evaluate(args: argparse.Namespace) -> int:
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


# --- chat ------------------------------------------------------------------------------------------

CHAT_HELP = """commands: /help this help, /reset forget the conversation, quit or exit (or Ctrl-D) to leave
Each message is appended to the conversation; the model continues it until a blank line once its reply holds
--min-reply-chars characters."""


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


# --- taking a model out ----------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    from core.export import export_model

    print(f"exporting {args.model or 'the newest model'} to {args.format}...", file=sys.stderr)
    result = export_model(args.model, args.models_dir, fmt=args.format, check=args.check)
    if result.max_abs_diff is not None:
        print(f"checked in onnxruntime: largest logit difference from PyTorch {result.max_abs_diff:.2e}",
              file=sys.stderr)  # fmt: skip
    print(f"wrote {result.folder} (model.onnx, tokenizer, README.md) in {result.seconds:.1f}s", file=sys.stderr)
    print(result.line())
    return 0


def cmd_serve_api(args: argparse.Namespace) -> int:
    import os

    import uvicorn

    from api.server import Access, Limits, create_app, normal_origin
    from core.device import pick_device
    from core.net import is_local

    api_key = args.api_key or os.environ.get("CHARGPT_API_KEY") or None
    if not is_local(args.host) and not api_key:
        raise CliError(f"--host {args.host} lets other machines call the API: give --api-key KEY (or set "
                       "CHARGPT_API_KEY), which every request must send as 'Authorization: Bearer KEY'")  # fmt: skip
    for flag in ("max_tokens_limit", "max_prompt_bytes", "max_stop_chars"):
        if getattr(args, flag) < 1:
            raise CliError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    loaded = ckpt.load_model(args.model, args.models_dir, device=pick_device(args.device))
    limits = Limits(max_tokens=args.max_tokens_limit, prompt_bytes=args.max_prompt_bytes,
                    stop_chars=args.max_stop_chars)  # fmt: skip
    access = Access(api_key=api_key, local=is_local(args.host), origins=tuple(map(normal_origin, args.allow_origin)))
    app = create_app(loaded, limits=limits, access=access)
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"serving {loaded.name} at http://{shown}:{args.port}/v1 (POST /v1/completions, GET /v1/models)"
          f"{', API key required' if api_key else ''}; Ctrl+C stops", file=sys.stderr)  # fmt: skip
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0

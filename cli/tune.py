"""`tune`: a study of trials, or with --budget a tournament whose survivor is saved as a model."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from cli.common import CliError, StopOnSignal, run_workers, strip_options
from cli.flags import add_dataclass_flags, given
from cli.train import add_train_arguments, run_training
from core.config import ModelConfig, TrainConfig, replace_known
from core.data import ensure_default_dataset
from core.runs import ModelTaken
from core.tune.config import StudyConfig, TournamentConfig, TuneConfig

COMMON_FLAGS = tuple(f.name for f in dataclasses.fields(TuneConfig))
# The flags of one mode; given in the other, they are refused rather than ignored.
TRIALS_FLAGS = (*StudyConfig.own_fields(), "create_only", "then_train")
BUDGET_FLAGS = (*TournamentConfig.own_fields(), "init_from")  # a study of trials searches shapes from scratch


def add_parser(sub) -> None:
    p = sub.add_parser("tune", help="search hyperparameters with Optuna (resumable, shareable by many workers)")
    add_dataclass_flags(p, TuneConfig, "study")
    trials = add_dataclass_flags(p, StudyConfig, "a study of trials (without --budget)", skip=COMMON_FLAGS)
    trials.add_argument("--create-only", action="store_true", default=argparse.SUPPRESS,
                        help="create the study and exit (before starting workers)")  # fmt: skip
    trials.add_argument("--then-train", action="store_true", default=argparse.SUPPRESS,
                        help="train the final model with the best params")  # fmt: skip
    add_dataclass_flags(p, TournamentConfig, "a tournament (--budget)", skip=COMMON_FLAGS)
    p.add_argument("--space", help="search space JSON file (fields not given keep their defaults)")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    p.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    add_train_arguments(p, with_data_dir=False)
    p.set_defaults(func=run, from_study=None)


def mode_config(args: argparse.Namespace) -> StudyConfig | TournamentConfig:
    """The config of the mode the flags ask for (--budget: a tournament); a flag of the other mode is an error."""
    budgeted = hasattr(args, "budget")
    mode = TournamentConfig if budgeted else StudyConfig
    stray = [name for name in (TRIALS_FLAGS if budgeted else BUDGET_FLAGS) if hasattr(args, name)]
    if stray:
        flags = ", ".join("--" + name.replace("_", "-") for name in stray)
        raise CliError(
            f"{flags} {'do' if len(stray) > 1 else 'does'} not apply "
            + ("to tune --budget (a tournament plans its own rungs and trains the winner)" if budgeted
               else "without --budget (they shape a budgeted tournament)")
        )  # fmt: skip
    return replace_known(mode(), given(args, mode)).validate()


def run(args: argparse.Namespace) -> int:
    from core.tune.space import SearchSpace
    from core.tune.storage import create_study
    from core.tune.study import run_study

    config = dataclasses.replace(mode_config(args), report_to=getattr(args, "report_to", "none")).validate()
    if isinstance(config, TournamentConfig):
        return run_budgeted(args, config)
    space = SearchSpace.for_device(config.device)
    if args.space:
        space = SearchSpace.load(args.space, base=space)
    space.validate()
    ensure_default_dataset(config.data_dir)
    create_study(
        config, pruner=config.make_pruner()
    )  # once, before any worker, so that workers never race on the schema
    if getattr(args, "create_only", False):
        print(f"study {config.study} is ready in {config.storage}")
        return 0
    if args.workers > 1:
        per_worker = [config.trials // args.workers + (i < config.trials % args.workers) for i in range(args.workers)]
        argv = strip_options(sys.argv[1:], {"--workers": True, "--trials": True, "--then-train": False})
        run_workers([[*argv, "--trials", str(n), "--worker-index", str(i)] for i, n in enumerate(per_worker) if n])
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
    if getattr(args, "then_train", False):
        return run_training(args, tuned)
    return 0


def run_budgeted(args: argparse.Namespace, config: TournamentConfig) -> int:
    """`tune --budget`: a tournament whose survivor is saved as models/NAME (see core.tune)."""
    import threading

    from core.tune.record import begin_tournament, prepare_tournament
    from core.tune.rungs import run_tournament
    from core.tune.space import SearchSpace

    fixed = given(args, ModelConfig) | given(args, TrainConfig)  # the user's flags hold for every candidate
    fixed.pop("report_to", None)  # where the numbers go (config.report_to), not how a candidate trains
    config = dataclasses.replace(config, overrides=fixed)
    default_space = SearchSpace.for_fine_tune if fixed.get("init_from") else SearchSpace.for_budget
    space = SearchSpace.load(args.space, base=default_space(config.device)) if args.space else None
    ensure_default_dataset(config.data_dir)
    try:
        begun = begin_tournament(config, space, args.name, args.models_dir, overwrite=args.overwrite)
    except ModelTaken as err:
        raise ModelTaken(err.out_dir, "add --overwrite to replace it") from None
    config, space, out_dir = begun.config, begun.space, begun.out_dir
    spawned = args.worker_index is not None  # a worker process started by the command below
    if not spawned:
        _, plan = prepare_tournament(config, space, workers=args.workers)
        verb = "continuing" if begun.continuing else "planned"
        print(f"tournament {config.study} ({verb}): {plan.describe()}; budget {config.budget:.0f}s", file=sys.stderr)
        if not plan.searches:
            instead = "searches instead" if plan.grown else "searches even a short budget"
            print(f"(--search-rungs 1 {instead})", file=sys.stderr)
    if args.workers > 1 and not spawned:
        argv = strip_options(sys.argv[1:], {"--workers": True})
        run_workers([[*argv, "--workers", str(args.workers), "--worker-index", str(i)] for i in range(args.workers)])
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

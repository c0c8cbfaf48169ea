"""`studies`, `proxy` and `dashboard`: a study storage listed, shared with workers, and shown."""

from __future__ import annotations

import argparse

from core.config import DEFAULT_STORAGE


def add_parser(sub) -> None:
    p = sub.add_parser("studies", help="list the studies of a storage")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help=f"Optuna storage URL (default: {DEFAULT_STORAGE})")
    p.set_defaults(func=run_studies)

    p = sub.add_parser("proxy", help="serve a storage to many workers through Optuna's gRPC proxy")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="the storage behind the proxy")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for other machines)")
    p.add_argument("--port", type=int, default=13000)
    p.add_argument("--heartbeat", type=int, default=10, help="seconds between trial heartbeats")
    p.set_defaults(func=run_proxy)

    p = sub.add_parser("dashboard", help="serve optuna-dashboard on the study storage (127.0.0.1)")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="Optuna storage URL")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (the dashboard has no login)")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(func=run_dashboard)


def run_studies(args: argparse.Namespace) -> int:
    from core.tune.results import list_studies

    studies = list_studies(args.storage)
    if not studies:
        print(f"no studies in {args.storage}")
    for summary in studies:
        print(summary.line())
    return 0


def run_proxy(args: argparse.Namespace) -> int:
    from optuna.storages import run_grpc_proxy_server

    from core.tune.storage import make_storage

    storage = make_storage(args.storage, heartbeat=args.heartbeat)
    print(
        f"Optuna gRPC proxy for {args.storage} on {args.host}:{args.port}; workers use --storage grpc://HOST:{args.port}"
    )
    run_grpc_proxy_server(storage, host=args.host, port=args.port)
    return 0


def run_dashboard(args: argparse.Namespace) -> int:
    from optuna_dashboard import run_server

    from core.tune.storage import make_storage

    print(f"optuna-dashboard for {args.storage} at http://{args.host}:{args.port} (Ctrl-C to stop)")
    run_server(make_storage(args.storage, heartbeat=0), host=args.host, port=args.port)
    return 0

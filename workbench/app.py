"""The Gradio workbench: four tabs over core/, background jobs, and optuna-dashboard beside it.

python app.py                      # http://127.0.0.1:7860
python app.py --share --auth me:secret
python app.py serve --host 0.0.0.0 --port 8000 --auth-file users.txt
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

# Imported before the page is served, not lazily by a job's first optimizer or first plot: torch._dynamo's
# import holds the GIL for seconds (1.3 s alone, 3.7 s beside a starting study, by py-spy), and the page
# stopped answering clicks for that long whenever a job started.
import optuna.visualization  # noqa: E402, F401
import plotly.graph_objects as go  # noqa: E402
import torch._dynamo  # noqa: E402, F401
from starlette.middleware import Middleware  # noqa: E402

from core.net import is_local  # noqa: E402
from workbench.dashboard import Dashboard, LoggedInDashboard  # noqa: E402
from workbench.jobs import JobManager  # noqa: E402
from workbench.login import ClientKeyMiddleware, LoginGuard  # noqa: E402
from workbench.project import UPLOAD_LIMIT_MB, Project  # noqa: E402
from workbench.studies import StudyReader  # noqa: E402
from workbench.tabs.chat import build_chat  # noqa: E402
from workbench.tabs.dataset import build_dataset  # noqa: E402
from workbench.tabs.train import build_train  # noqa: E402
from workbench.tabs.tune import build_tune  # noqa: E402
from workbench.ui import CSS  # noqa: E402

log = logging.getLogger("workbench")
THEME = gr.themes.Soft()


def build_app(
    project: Project, jobs: JobManager | None = None, dashboard_url: str | None = None
) -> tuple[gr.Blocks, JobManager]:
    """The workbench page. Jobs live in `jobs` (one manager per server), not in the page."""
    jobs = jobs or JobManager(journal=project.root / ".workbench" / "jobs.json")
    reader = StudyReader(project.storage)
    with gr.Blocks(title="chargpt workbench") as demo:
        gr.Markdown(
            "# chargpt workbench\nTrain a character-level GPT on your own text, tune it with Optuna, chat with it. "
            "Jobs keep running on the server when you close or reload this page."
        )
        with gr.Tabs():
            with gr.Tab("Dataset", id="dataset"):
                build_dataset(project, jobs)
            with gr.Tab("Tune", id="tune"):
                on_load = build_tune(project, jobs, reader, dashboard_url)
            with gr.Tab("Train", id="train") as train_tab:
                train = build_train(project, jobs, reader)
            with gr.Tab("Chat", id="chat") as chat_tab:
                chat = build_chat(project)
        refresh_models, model = chat["refresh"]
        chat_tab.select(refresh_models, model, model, api_visibility="private")
        refresh_lists, current, lists = train["refresh"]
        train_tab.select(refresh_lists, current, lists, api_visibility="private")
        # lists filled on every visit, not only when the server started (a restart, a study begun elsewhere)
        loads = [*on_load, *train["load"], (refresh_lists, current, lists), (refresh_models, model, model)]
        for fn, inputs, outputs in loads:
            # one call of each at a time, beside the same function's other events (the plan measures for seconds)
            demo.load(fn, inputs, outputs, api_visibility="private", show_progress="hidden",
                      concurrency_id=fn.__name__, concurrency_limit=1)  # fmt: skip
    demo.queue(default_concurrency_limit=4)
    return demo, jobs


# --- launch ----------------------------------------------------------------------------------------


def read_auth(auth: str | None, auth_file: str | None) -> list[tuple[str, str]]:
    """user:password pairs from --auth and --auth-file (one pair a line; blank lines and # comments skipped)."""
    pairs = []
    lines = [auth] if auth else []
    if auth_file:
        try:
            lines += Path(auth_file).read_text(encoding="utf-8").splitlines()
        except OSError as err:
            raise SystemExit(f"error: cannot read --auth-file {auth_file}: {err.strerror}") from None
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise SystemExit("error: credentials must look like user:password")
        pairs.append((user, password))
    return pairs


def pay_one_off_costs() -> None:
    """What would otherwise hold the GIL, so that no request is answered, while a study runs (py-spy of a
    starting study): plotly reading its validators, a JSON file, at its first figure (0.8 s); and Optuna's
    collection after every trial walking the 550k objects that the imports and the page made (1.0 s beside
    training, 0.3 s idle). Frozen, those objects are no longer walked (6 us)."""
    go.Figure(layout={"title": {"text": "warm-up"}})
    gc.collect()
    gc.freeze()


def launch(
    host: str = "127.0.0.1",
    port: int = 7860,
    *,
    share: bool = False,
    auth: list[tuple[str, str]] | None = None,
    root: str | Path = ".",
    storage: str = "",
    dashboard: bool = True,
    block: bool = True,
    allow_dirs: Sequence[str] = (),
    auth_file: str | None = None,
) -> tuple[gr.Blocks, JobManager, Dashboard | None]:
    """Serve the workbench; with `block=False` return at once (tests)."""
    project = Project(
        Path(root), storage=storage, allowed_roots=[Path(d) for d in allow_dirs],
        private_files=[Path(auth_file)] if auth_file else [],
    )  # fmt: skip
    if not project.has_dataset():
        from core.data import prepare

        print(prepare(None, project.data_dir).summary(), file=sys.stderr)
    board, middleware = None, [Middleware(ClientKeyMiddleware)]
    if dashboard and auth:  # behind the login, read-only, on this server (and so through a share link)
        middleware.append(Middleware(LoggedInDashboard, storage_url=project.storage))
    elif dashboard:
        try:
            board = Dashboard(project.storage)
        except Exception as err:  # the workbench works without it
            print(f"optuna-dashboard could not start: {err}", file=sys.stderr)
    if (share or not is_local(host)) and not auth:
        where = "a public share link" if share else f"--host {host}"
        print(
            f"WARNING: {where} without --auth lets anyone who can reach it use this workbench "
            "(train, upload, read its models). Add --auth user:password.",
            file=sys.stderr,
        )
    dashboard_url = board.url if board else ("/dashboard/" if dashboard and auth else None)
    demo, jobs = build_app(project, dashboard_url=dashboard_url)
    pay_one_off_costs()
    demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        auth=LoginGuard(auth).check if auth else None,
        app_kwargs={"middleware": middleware},
        max_file_size=f"{UPLOAD_LIMIT_MB}mb",
        prevent_thread_lock=True,
        quiet=True,  # Gradio's own hints name its Python API; ours below name this program's flags
        theme=THEME,
        css=CSS,
        footer_links=["api", "gradio"],
    )
    if share and not getattr(demo, "share_url", None):
        print(
            f"No public share link could be created (no internet access?). The workbench is still served "
            f"at http://{host}:{port}",
            file=sys.stderr,
        )
    _announce(host, demo, share=share, block=block, board=board, logged_in=bool(dashboard and auth))
    if block:
        try:
            demo.block_thread()
        except KeyboardInterrupt:
            pass
        finally:
            print("stopping: running jobs save and end…", file=sys.stderr)
            jobs.shutdown()
            demo.close()
            if board:
                board.close()
    return demo, jobs, board


def _announce(host: str, demo: gr.Blocks, *, share: bool, block: bool, board: Dashboard | None,
              logged_in: bool) -> None:  # fmt: skip
    """Where the workbench and its dashboard can be reached, said once on the terminal."""
    port = demo.server_port
    if block:
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        print(f"Workbench: http://{shown}:{port}/  (Ctrl-C stops it)", file=sys.stderr)
        if share and getattr(demo, "share_url", None):
            print(f"Public link (about a week): {demo.share_url}", file=sys.stderr)
        elif not share:
            print("A temporary public link: python app.py --share --auth user:password", file=sys.stderr)
    if board:
        print(f"optuna-dashboard: {board.url} (this machine only: it has no login)", file=sys.stderr)
    elif logged_in:
        print(f"optuna-dashboard: http://{host}:{port}/dashboard/ (behind the login, read-only)",
              file=sys.stderr)  # fmt: skip


def serve(args: argparse.Namespace) -> int:
    """`python app.py [serve] ...`: the flags come from the one parser in cli.main."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests
    launch(
        args.host,
        args.port,
        share=args.share,
        auth=read_auth(args.auth, args.auth_file),
        storage=args.storage,
        dashboard=not args.no_dashboard,
        allow_dirs=args.allow_dir,
        auth_file=args.auth_file,
    )
    return 0

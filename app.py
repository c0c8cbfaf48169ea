"""chargpt-workbench entry point.

python app.py              open the workbench (prepares the default corpus on first run)
python app.py serve ...    the same, with --host/--port/--share/--auth/--auth-file
python app.py COMMAND ...  the command line: prepare, train, chat, tune, studies, dashboard
"""

from __future__ import annotations

import sys

from core.cli import main, register_commands

WORKBENCH_FLAGS = ("--host", "--port", "--share", "--auth", "--auth-file", "--storage", "--no-dashboard")


def opens_workbench(argv: list[str]) -> bool:
    """No command, `serve`, or only workbench flags: the workbench; anything else: the CLI."""
    return not argv or argv[0] == "serve" or argv[0].split("=", 1)[0] in WORKBENCH_FLAGS


def _register_serve(sub) -> None:
    sub.add_parser("serve", help="open the workbench (python app.py serve --help lists its flags)")


if __name__ == "__main__":
    argv = sys.argv[1:]
    if opens_workbench(argv):
        from workbench.app import main as workbench_main

        sys.exit(workbench_main(argv[1:] if argv and argv[0] == "serve" else argv))
    register_commands(_register_serve)
    sys.exit(main(argv))

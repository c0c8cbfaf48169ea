"""What every command shares: its one-line error, Ctrl-C handling, and starting worker processes."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable


class CliError(RuntimeError):
    """An error to show the user as one line, without a traceback."""


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


def run_workers(argvs: list[list[str]]) -> None:
    """Run this command again once per worker (`argvs[i]` for worker i), each with its share of the machine."""
    from core.tune.study import worker_env

    procs = [
        subprocess.Popen([sys.executable, sys.argv[0], *argv], env=worker_env(worker, len(argvs)))
        for worker, argv in enumerate(argvs)
    ]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise CliError(f"worker(s) failed with exit codes {codes}")

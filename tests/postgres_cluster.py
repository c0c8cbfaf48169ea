"""A throwaway PostgreSQL cluster from Debian's postgresql package, for tests and benchmarks."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import free_port


def available() -> bool:
    return bool(glob.glob("/usr/lib/postgresql/*/bin/initdb"))


@contextlib.contextmanager
def cluster(database: str = "optuna") -> Iterator[str]:
    """Start a cluster on a free loopback port; yield a SQLAlchemy URL to `database`; remove it all after."""
    bindir = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))[-1]).parent
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # initdb refuses root
    workdir = Path(tempfile.mkdtemp(prefix="chargpt-pg-"))
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres")
    data, port = workdir / "data", free_port()
    subprocess.run(
        [*as_postgres, bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust"], check=True, capture_output=True
    )
    subprocess.run(
        [
            *as_postgres,
            bindir / "pg_ctl",
            "-D",
            data,
            "-w",
            "-l",
            workdir / "log",
            "-o",
            f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c max_connections=200",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            [*as_postgres, bindir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database],
            check=True,
            capture_output=True,
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/{database}"
    finally:
        subprocess.run([*as_postgres, bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)

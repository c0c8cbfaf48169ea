"""`--compile auto`: compile the training step when it measurably pays here, and remember that it did or not.

Whether compiled steps are faster depends on the machine (RESULTS.md, Against nanoGPT), and compiling itself
takes a while on a small CPU. So a run of at least COMPILE_MIN_MINUTES times its eager steps, compiles, times
as many compiled steps, and keeps the faster. What it measured (both paces and the compile's seconds) is kept
per machine, model and batch shape, precision and PyTorch version (`verdict_key`), in the user's cache folder;
the next such run compiles only when its time left repays the compile (`repays`), without timing again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import statistics
from pathlib import Path
from typing import Any

import torch

from core.config import COMPILE_MIN_MINUTES
from core.fileio import atomic_write_text
from core.model import GPT

log = logging.getLogger(__name__)

COMPILING = "compiling the training step (once; no steps for up to a minute on 2 cores)"
VERDICTS_FILE = "compile_verdicts.json"
MIN_GAIN = 0.03  # compiled steps must be this much faster than eager ones to be kept


def cache_dir() -> Path | None:
    """The user's cache folder for this tool; None where there is no home to find (verdicts are not kept)."""
    try:
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chargpt-workbench"
    except RuntimeError:  # no HOME and no passwd entry
        return None


def verdict_key(device: str, shape: dict[str, Any]) -> str:
    """What a verdict holds for: this machine (its device in words: CPU model and threads, or GPU; the kernels
    PyTorch picked for the CPU), the step's shapes and precision, and this PyTorch."""
    machine = [device, torch.backends.cpu.get_cpu_capability()]
    return json.dumps([machine, torch.__version__, shape], sort_keys=True, default=str)


def read_verdict(key: str) -> dict[str, float] | None:
    """What an earlier run measured for `key`: eager and compiled step seconds and the compile's seconds."""
    folder = cache_dir()
    if folder is None:
        return None
    try:
        verdict = json.loads((folder / VERDICTS_FILE).read_text(encoding="utf-8")).get(key)
        values = {name: float(verdict[name]) for name in ("eager_step_s", "compiled_step_s", "compile_s")}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return None
    paces_positive = values["eager_step_s"] > 0 and values["compiled_step_s"] > 0
    sane = paces_positive and values["compile_s"] >= 0 and all(map(math.isfinite, values.values()))
    return values if sane else None  # a hand-edited or damaged entry is measured again


def write_verdict(key: str, eager_s: float, compiled_s: float, compile_s: float) -> None:
    verdict = {"verdict": "compiled" if pays_per_step(eager_s, compiled_s) else "eager", "eager_step_s": eager_s,
               "compiled_step_s": compiled_s, "compile_s": compile_s}  # fmt: skip
    _update_verdicts(key, verdict)


def forget_verdict(key: str) -> None:
    _update_verdicts(key, None)


def _update_verdicts(key: str, verdict: dict[str, Any] | None) -> None:
    """Set (or with None drop) one key's verdict in the cache file, keeping the others."""
    folder = cache_dir()
    if folder is None:
        return
    path = folder / VERDICTS_FILE
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
        known = known if isinstance(known, dict) else {}
    except (OSError, ValueError):
        known = {}
    if verdict is None:
        known.pop(key, None)
    else:
        known[key] = verdict
    with contextlib.suppress(OSError):  # a read-only home measures again next time
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(known, indent=2) + "\n")


def pays_per_step(eager_s: float, compiled_s: float) -> bool:
    return compiled_s < eager_s * (1 - MIN_GAIN)


def repays(verdict: dict[str, float], seconds_left: float) -> bool:
    """Whether compiling now saves more than it costs: the steps left at the eager pace, each shortened by
    what compiling saved, against what compiling took."""
    eager_s, compiled_s = verdict["eager_step_s"], verdict["compiled_step_s"]
    if not pays_per_step(eager_s, compiled_s):
        return False
    return seconds_left / eager_s * (eager_s - compiled_s) > verdict["compile_s"]


def _frames_compiled() -> int:
    """Frames dynamo has compiled in this process (one that failed and ran eagerly is not counted)."""
    from torch._dynamo.utils import counters

    return int(counters["frames"]["ok"])


class AutoCompile:
    """The decision, step by step: `observe` each step's seconds; it says "compile" once, then (a first
    measurement) "eager" if the compiled steps were not faster (the run goes back to its eager model). Compilation errors (no C++ compiler,
    an unsupported op) run eagerly instead of failing the run."""

    SETTLE_STEPS = 10  # the first steps are slower (allocations, caches); paces are read after them
    TIMED_STEPS = 10  # eager steps timed, then as many compiled ones
    COMPILED_WARM_STEPS = 3  # the compile itself and its first recompilations

    def __init__(self, key: str = "") -> None:
        self.key, self.steps, self.phase = key, 0, "eager"
        self.known = read_verdict(key) if key else None
        self.eager: list[float] = []
        self.compiled_steps: list[float] = []
        self.frames_compiled = 0

    def observe(self, step_s: float, seconds_left: float) -> str | None:
        """ "compile", "eager" (back to the eager model) or None (go on as it is)."""
        self.steps += 1
        if self.phase == "eager" and self.steps > self.SETTLE_STEPS:
            self.eager.append(step_s)
            if len(self.eager) >= self.TIMED_STEPS:
                return self._decide(seconds_left)
        elif self.phase in ("timing", "kept"):
            self.compiled_steps.append(step_s)
            if len(self.compiled_steps) >= self.COMPILED_WARM_STEPS + self.TIMED_STEPS:
                return self._judge() if self.phase == "timing" else self._check_kept()
        return None

    def _check_kept(self) -> str | None:
        """A run that compiled on an earlier verdict checks it: compiled steps no faster than the verdict's eager
        ones (the machine or its load changed) go back to eager, and the verdict is forgotten, so the next long
        run measures both again."""
        self.phase = "done"
        compiled_s = statistics.median(self.compiled_steps[self.COMPILED_WARM_STEPS :])
        if pays_per_step(self.known["eager_step_s"], compiled_s):
            return None
        log.info("compiled steps %.1f ms, no faster than the %.1f ms measured eager: back to eager steps, measured "
                 "again next run", compiled_s * 1000, self.known["eager_step_s"] * 1000)  # fmt: skip
        forget_verdict(self.key)
        return "eager"

    def _decide(self, seconds_left: float) -> str | None:
        if self.known is not None:  # measured before: compile where the time left repays it
            self.phase = "kept" if repays(self.known, seconds_left) else "done"
            log.info("%s: compiled steps measured %.1f ms against eager %.1f, compiling %.0f s, %.0f s left",
                     "compiling" if self.phase == "kept" else "not compiling", self.known["compiled_step_s"] * 1000,
                     self.known["eager_step_s"] * 1000, self.known["compile_s"], seconds_left)  # fmt: skip
            return "compile" if self.phase == "kept" else None
        if seconds_left < COMPILE_MIN_MINUTES * 60:
            self.phase = "done"
            return None
        self.phase, self.frames_compiled = "timing", _frames_compiled()
        return "compile"

    def _judge(self) -> str | None:
        self.phase = "done"
        eager_s = statistics.median(self.eager)
        compiled_s = statistics.median(self.compiled_steps[self.COMPILED_WARM_STEPS :])
        compile_s = max(
            0.0, sum(self.compiled_steps[: self.COMPILED_WARM_STEPS]) - self.COMPILED_WARM_STEPS * compiled_s
        )
        faster = pays_per_step(eager_s, compiled_s)
        log.info("compiled steps %.1f ms against eager %.1f ms (compiling took %.0f s): %s", compiled_s * 1000,
                 eager_s * 1000, compile_s, "kept" if faster else "back to eager steps")  # fmt: skip
        if self.key and _frames_compiled() > self.frames_compiled:  # a failed compile ran eagerly: no verdict
            write_verdict(self.key, eager_s, compiled_s, compile_s)
        return None if faster else "eager"

    @staticmethod
    def compiled(model: GPT) -> torch.nn.Module:
        log.info("compiling the training step (--compile auto: a long run left; timed against eager steps)")
        return compile_model(model, strict=False)


def compile_model(model: GPT, strict: bool) -> torch.nn.Module:
    """torch.compile, where a failed compile raises (`strict`: --compile on) or runs eagerly (auto). The switch is
    process-wide, so each call sets it: the workbench runs one job after another in one process."""
    import torch._dynamo

    torch._dynamo.config.suppress_errors = not strict
    return torch.compile(model)

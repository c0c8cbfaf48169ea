"""`--compile auto`: compile the training step once the run shows it has time left to repay the compiling."""

from __future__ import annotations

import logging

import torch

from core.config import COMPILE_MIN_MINUTES
from core.model import GPT

log = logging.getLogger(__name__)

COMPILING = "compiling the training step (once; no steps for up to a minute on 2 cores)"


class AutoCompile:
    """`--compile auto`: after the first steps, compile once if the run has COMPILE_MIN_MINUTES or more left.

    Compilation errors (no C++ compiler, an unsupported op) fall back to eager steps instead of failing the run.
    """

    SETTLE_STEPS = 10  # the first steps are slower (allocations, caches); the run's pace is read after them

    def __init__(self) -> None:
        self.steps, self.decided = 0, False

    def observe(self, step_s: float, seconds_left: float) -> bool:
        """Whether to compile now (true at most once a run)."""
        self.steps += 1
        if self.decided or self.steps < self.SETTLE_STEPS:
            return False
        self.decided = True
        return seconds_left >= COMPILE_MIN_MINUTES * 60

    @staticmethod
    def compiled(model: GPT) -> torch.nn.Module:
        import torch._dynamo

        torch._dynamo.config.suppress_errors = True  # a failed compile runs eagerly
        log.info("compiling the training step (--compile auto: a long run left)")
        return torch.compile(model)

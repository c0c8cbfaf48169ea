"""The learning-rate schedule: warmup, then cosine decay or warmup-stable-decay (wsd)."""

from __future__ import annotations

import math

from core.config import TrainConfig


def lr_at(progress: float, step: int, config: TrainConfig) -> float:
    """Linear warmup, then (cosine) decay to `final_lr` as progress goes 0 -> 1, or (wsd) the peak rate until
    the last `cooldown_fraction` of the run and a linear decay to `final_lr` over it.

    The warmup lasts `warmup_fraction` of the run when that is set (so it fits a budget in minutes as well as
    one in steps), else `warmup_iters` steps.
    """
    if config.warmup_fraction:
        warm, one_step = config.warmup_fraction, 1 / config.step_limit
        if progress < warm:
            return config.lr * (progress + one_step) / (warm + one_step)
    else:
        if step < config.warmup_iters:
            return config.lr * (step + 1) / (config.warmup_iters + 1)
        warm = config.warmup_iters / config.step_limit
    if config.schedule == "wsd":
        decay_from = 1.0 - config.cooldown_fraction
        if progress <= decay_from:
            return config.lr
        ratio = min(1.0, (progress - decay_from) / max(1e-9, config.cooldown_fraction))
        return config.lr + ratio * (config.final_lr - config.lr)
    ratio = min(1.0, max(0.0, (progress - warm) / max(1e-9, 1.0 - warm)))
    return config.final_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (config.lr - config.final_lr)

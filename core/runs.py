"""Setting up a training run, once for every front end (the CLI's `train`, `tune --then-train`, the Train tab).

    model_config, train_config = run_configs(out_dir, recipe="modern", flags={"lr": 2e-3}, tuned=record)
    claim_model_dir(out_dir, resume=False, overwrite=True)      # refuses or clears an existing model
    info = record_source(out_dir, record)                       # best_params.json + where the params came from

Configs are layered in one order: the recipe's defaults (or, to resume, the checkpoint's own configs), then a
study's tuned parameters, then the fields the user set, which always win.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from core import checkpoint as ckpt
from core.config import ModelConfig, TrainConfig, recipe_configs, replace_known


class ModelTaken(ckpt.ModelError):
    """A run would write over a saved model; each front end says how to resume, overwrite or rename."""

    def __init__(self, out_dir: Path, hint: str = "resume to continue it, overwrite to replace it"):
        self.out_dir, self.free = out_dir, free_name(out_dir)
        super().__init__(
            f"{shown_model(out_dir)} already holds a model; {hint}, or choose another name ({self.free} is free)"
        )


def run_configs(
    out_dir: Path | None = None,
    *,
    recipe: str = "modern",
    flags: dict[str, Any] | None = None,
    tuned: dict[str, Any] | None = None,
    resume: bool = False,
) -> tuple[ModelConfig, TrainConfig]:
    """The validated configs of a run of `out_dir` (see the module docstring for the order)."""
    from core.tune.space import apply_params

    flags = flags or {}
    model_config, train_config = recipe_configs(recipe)
    checkpoint = ckpt.latest_checkpoint(out_dir) if resume and out_dir is not None else None
    if checkpoint is not None:
        model_config = ModelConfig.from_saved(checkpoint.state["model_config"])
        train_config = TrainConfig.from_saved(checkpoint.state["train_config"])
    model_config, train_config = replace_known(model_config, flags), replace_known(train_config, flags)
    if tuned and checkpoint is None:
        model_config, train_config = apply_params(tuned["params"], model_config, train_config, keep=set(flags))
    return model_config.validate(), train_config.validate()


def claim_model_dir(out_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to train over an existing model unless asked to resume it or to overwrite it (then clear it)."""
    if not (out_dir.exists() and any(out_dir.iterdir())) or resume:
        return
    if not overwrite:
        raise ModelTaken(out_dir)
    shutil.rmtree(out_dir)


def shown_model(out_dir: Path) -> str:
    """A model folder as messages name it: models/NAME, never the server's absolute path."""
    return f"{out_dir.parent.name}/{out_dir.name}"


def free_name(out_dir: Path) -> str:
    """The first NAME-2, NAME-3, ... with no model folder beside `out_dir`."""
    stem = out_dir.name.rsplit("-", 1)[0] if out_dir.name.rsplit("-", 1)[-1].isdigit() else out_dir.name
    number = 2
    while (candidate := out_dir.parent / f"{stem}-{number}").exists() and any(candidate.iterdir()):
        number += 1
    return candidate.name


def record_source(out_dir: Path, tuned: dict[str, Any] | None) -> dict[str, Any] | None:
    """Write a study's best-params record beside the model; the `info` that config.json keeps of it."""
    if not tuned:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt.write_best_params(out_dir, tuned)
    return {"source": {k: v for k, v in tuned.items() if k != "params"}}

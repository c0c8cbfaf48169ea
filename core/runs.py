"""Setting up a training run, once for every front end (the CLI's `train`, `tune --then-train`, the Train tab).

    model_config, train_config = run_configs(out_dir, recipe="modern", flags={"lr": 2e-3}, tuned=record)
    claim_model_dir(out_dir, resume=False, overwrite=True)      # refuses or clears an existing model
    info = record_source(out_dir, record)                       # best_params.json + where the params came from

Configs are layered in one order: the recipe's defaults (or, to resume, the checkpoint's own configs; or, for a
run from a saved model, its shape and recipe), then a study's tuned parameters, then the fields the user set,
which always win.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from core import checkpoint as ckpt
from core.config import ConfigError, ModelConfig, TrainConfig, recipe_configs, replace_known


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
    recipe: str | None = None,
    flags: dict[str, Any] | None = None,
    tuned: dict[str, Any] | None = None,
    resume: bool = False,
    models_dir: str | Path = "models",
) -> tuple[ModelConfig, TrainConfig]:
    """The validated configs of a run of `out_dir` (see the module docstring for the order); with `init_from`
    among the flags, the base model's shape and recipe replace the recipe's (core.base)."""
    from core.tune.space import apply_params

    flags = dict(flags or {})
    if not flags.get("init_from") and (tuned or {}).get("params", {}).get("init_from"):
        flags["init_from"] = tuned["params"]["init_from"]  # a tournament from a base: its winner is built on it
    if flags.get("init_from"):
        from core.base import base_path

        flags["init_from"] = str(base_path(flags["init_from"], models_dir))
        if out_dir is not None and Path(flags["init_from"]).resolve() == Path(out_dir).resolve():
            raise ConfigError(f"{shown_model(Path(out_dir))} is the model the run starts from; save the new one "
                              "under another --name")  # fmt: skip
    checkpoint = ckpt.latest_checkpoint(out_dir) if resume and out_dir is not None else None
    if checkpoint is not None:
        model_config = ModelConfig.from_saved(checkpoint.state["model_config"])
        train_config = TrainConfig.from_saved(checkpoint.state["train_config"])
        _check_same_base(out_dir, train_config.init_from, flags.get("init_from", ""))
        return replace_known(model_config, flags).validate(), replace_known(train_config, flags).validate()
    if flags.get("init_from"):
        return _base_configs(recipe, flags, tuned)
    model_config, train_config = recipe_configs(recipe or "modern")
    model_config, train_config = replace_known(model_config, flags), replace_known(train_config, flags)
    if tuned:
        model_config, train_config = apply_params(tuned["params"], model_config, train_config, keep=set(flags))
    return model_config.validate(), train_config.validate()


def _base_configs(recipe: str | None, flags: dict[str, Any], tuned: dict[str, Any] | None):
    from core.base import check_tokenizer_kind, fine_tune_configs, load_base, refuse_shape_flags
    from core.tune.space import apply_params

    base = load_base(flags["init_from"])
    if recipe is not None:
        raise ConfigError(f"--recipe {recipe} would change the recipe of {base.name}: a run started from it keeps "
                          "its recipe; drop --recipe")  # fmt: skip
    model_config, train_config = fine_tune_configs(base, TrainConfig(), flags)
    if tuned:  # a study's fine-tuning parameters; a shape or tokenizer it chose is refused like a flag
        params = {k: v for k, v in tuned["params"].items() if k not in ("tokenizer", "vocab_size")}
        model_config, train_config = apply_params(params, model_config, train_config, keep=set(flags))
        refuse_shape_flags(dataclasses.asdict(model_config), base)
    check_tokenizer_kind(base, train_config.data_dir)
    return model_config.validate(), train_config.validate()


def _check_same_base(out_dir: Path, started_from: str, asked: str) -> None:
    """--resume with --init-from continues the run only if that run was itself started from the same base."""
    if asked and (not started_from or Path(started_from).resolve() != Path(asked).resolve()):
        began = f"was started from {Path(started_from).name}" if started_from else "was trained from scratch"
        raise ConfigError(
            f"{shown_model(out_dir)} {began}, so --resume continues it as it was; --init-from {Path(asked).name} "
            "applies to a new run only: drop --init-from to resume, or give a new --name to start from the base"
        )


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

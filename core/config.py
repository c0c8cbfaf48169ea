"""Configuration dataclasses shared by the CLI, the trainer, tuning and the workbench.

Each field carries its own help text in `metadata["help"]`; the CLI builds one flag per field from it, so
the dataclass is the single source of truth for names, defaults and documentation.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

# Where studies live unless a storage URL says otherwise: one constant for the CLI, tuning and the workbench.
STUDIES_DIR = "studies"
STUDY_DATABASE = "gpt_tuning.db"
DEFAULT_STORAGE = f"sqlite:///{STUDIES_DIR}/{STUDY_DATABASE}"


# `--compile auto` compiles a run with at least this long left after its first steps: compiling the small model
# took ~20 s on 2 CPU cores and saved ~25% of each step, so it repays itself after ~80 s (benchmarks/RESULTS.md).
COMPILE_MIN_MINUTES = 2.0
COMPILE_MODES = ("auto", "on", "off")
MUON_LR = 0.02  # Muon's rate for the hidden matrices: the recipe's default, the model's and the search space's
DTYPES = ("auto", "float32", "bfloat16", "float16")  # autocast precisions a run can ask for


class ConfigError(ValueError):
    """A configuration value is out of range or inconsistent; the message names the field and the fix."""


def _help(text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text}, **kwargs)


# Far beyond what trains on one machine; a config past them is a typo or a hostile file, refused before building.
MODEL_LIMITS = {"n_layer": 1_024, "n_head": 1_024, "n_embd": 65_536, "block_size": 65_536}


@dataclass
class ModelConfig:
    """Shape of the GPT. `vocab_size` comes from the dataset's vocab, not from the user."""

    n_layer: int = _help("number of transformer blocks", default=4)
    n_head: int = _help("attention heads per block; must divide n_embd", default=4)
    n_embd: int = _help("embedding width", default=128)
    block_size: int = _help("context length in characters", default=64)
    dropout: float = _help("dropout probability in [0, 1)", default=0.0)
    bias: bool = _help("use bias in Linear and LayerNorm layers", default=False)
    pos_encoding: str = _help("position encoding: rope (rotary) or learned (nanoGPT's embedding table)", default="rope")
    norm: str = _help("normalisation: rmsnorm or layernorm", default="rmsnorm")
    mlp: str = _help("MLP activation: relu2 (squared ReLU) or gelu", default="relu2")
    qk_norm: bool = _help("RMS-normalise queries and keys per head before attention", default=True)
    tie_head: bool = _help("share the output head with the token embedding", default=True)
    logit_softcap: float | None = field(
        default=None,
        metadata={"help": "squash logits into (-C, C) with C*tanh(x/C); must be > 0 (default: off)", "type": float},
    )
    vocab_size: int = field(default=0, metadata={"help": "set from the dataset", "cli": False})

    def validate(self) -> ModelConfig:
        for name, most in MODEL_LIMITS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= most:
                raise ConfigError(f"{name} must be a positive integer up to {most:,}, got {value!r}")
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head}); "
                f"try n_embd={self.n_head * max(1, round(self.n_embd / self.n_head))}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.vocab_size < 0:
            raise ConfigError(f"vocab_size must be >= 0, got {self.vocab_size}")
        _check_choice("pos_encoding", self.pos_encoding, ("rope", "learned"))
        _check_choice("norm", self.norm, ("rmsnorm", "layernorm"))
        _check_choice("mlp", self.mlp, ("relu2", "gelu"))
        if self.pos_encoding == "rope" and (self.n_embd // self.n_head) % 2:
            raise ConfigError(
                f"rope needs an even head size, got n_embd/n_head = {self.n_embd}/{self.n_head} = "
                f"{self.n_embd // self.n_head}; change n_head or n_embd, or use --pos-encoding learned"
            )
        if self.logit_softcap is not None and not self.logit_softcap > 0:
            raise ConfigError(f"logit_softcap must be > 0 (leave it out to turn it off), got {self.logit_softcap}")
        return self

    @classmethod
    def from_saved(cls, values: dict[str, Any]) -> ModelConfig:
        """A config saved by any version: fields older files lack take the classic recipe's values."""
        return replace_known(cls(), {**RECIPES["classic"], **values})


def _check_choice(name: str, value: Any, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"{name} must be one of {', '.join(options)}, got {value!r}")


@dataclass
class TrainConfig:
    """How to train: budget, optimiser, schedule, evaluation and checkpoints."""

    data_dir: str = _help("folder with output_train.txt, output_val.txt and vocab.txt", default="dataset")
    init_from: str = _help(
        "start from a saved model's weights (a name in models/ or a folder): its shape, vocabulary and recipe, with "
        "a fresh optimizer, schedule and step count (core.base)",
        default="",
    )
    batch_size: int = _help("sequences per optimiser step (per micro-batch)", default=12)
    grad_accum: int = _help("micro-batches accumulated per optimiser step", default=1)
    max_iters: int = _help("optimiser steps to run (0 = no step limit: train for max_minutes)", default=2000)
    max_minutes: float = _help("stop after this many minutes of training (0 = no limit)", default=0.0)
    lr: float = _help("peak learning rate", default=1e-3)
    min_lr: float = _help("final learning rate of the cosine decay (-1 = lr / 10)", default=-1.0)
    warmup_iters: int = _help("linear warmup steps", default=100)
    warmup_fraction: float = _help(
        "linear warmup over this fraction of the run, in steps or minutes (0 = use warmup_iters)", default=0.0
    )
    schedule: str = _help(
        "learning-rate schedule after warmup: wsd (constant, then a linear cooldown over the last cooldown_fraction "
        "of the run, so a run can be continued) or cosine",
        default="wsd",
    )
    cooldown_fraction: float = _help("wsd: share of the run (steps or minutes) spent decaying to min_lr", default=0.3)
    optimizer: str = _help("adamw, or muon (Muon for hidden matrices, AdamW for the rest)", default="muon")
    muon_lr: float = _help("muon: learning rate of the hidden matrices", default=MUON_LR)
    weight_decay: float = _help("AdamW weight decay, applied to matrices only", default=0.1)
    muon_weight_decay: float = _help(
        "muon: decoupled weight decay of the hidden matrices (each step shrinks them by muon_lr x this)", default=0.0
    )
    beta1: float = _help("AdamW beta1", default=0.9)
    beta2: float = _help("AdamW beta2", default=0.99)
    grad_clip: float = _help("clip gradient norm to this value (0 = off)", default=1.0)
    eval_interval: int = _help("evaluate train/val loss every N steps", default=250)
    eval_seconds: float = _help(
        "evaluate every N seconds of the run instead of every eval_interval steps (0 = by steps)", default=0.0
    )
    eval_iters: int = _help("batches averaged per evaluation", default=50)
    eval_train: bool = _help("evaluate the train split too, not only val (tuning trials skip it)", default=True)
    checkpoint_interval: int = _help("write a resumable checkpoint every N steps (0 = at evals)", default=0)
    patience: int = _help("stop after N evals without val improvement (0 = never)", default=0)
    sample_chars: int = _help("characters sampled at each eval (0 = none)", default=200)
    seed: int = _help("random seed for init, data order and sampling", default=1337)
    device: str = _help("auto, cpu, cuda or cuda:N", default="auto")
    dtype: str = _help(
        "autocast precision: auto (bf16 on CUDA and on CPUs with native bf16, else fp32), float32, bfloat16 or float16",
        default="auto",
    )
    compile: str = _help(
        "torch.compile the training step: on, off, or auto (on once the first steps show the run has at least "
        f"{COMPILE_MIN_MINUTES:g} minutes left, where compiling repays its cost; never for shorter runs)",
        default="auto",
    )
    report_to: str = _help(
        "also report the run's numbers to a dashboard: none, tensorboard or trackio (under tracking/)", default="none"
    )
    report_run: str = field(
        default="", metadata={"help": "GROUP/NAME the dashboard files the run under (tune sets it)", "cli": False}
    )

    @property
    def final_lr(self) -> float:
        return self.lr / 10 if self.min_lr < 0 else self.min_lr

    @property
    def step_limit(self) -> float:
        return self.max_iters or math.inf

    @property
    def checkpoint_every(self) -> int:
        return self.checkpoint_interval or self.eval_interval

    def validate(self) -> TrainConfig:
        positive_ints = ("batch_size", "grad_accum", "eval_interval", "eval_iters")
        if not isinstance(self.max_iters, int) or self.max_iters < 0:
            raise ConfigError(f"max_iters must be >= 0 (0 = no step limit), got {self.max_iters!r}")
        if self.max_iters == 0 and not self.max_minutes > 0:
            raise ConfigError("max_iters 0 means no step limit, so give a time budget: --max-minutes N")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("warmup_iters", "checkpoint_interval", "patience", "sample_chars"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.min_lr > self.lr:
            raise ConfigError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        if min(self.weight_decay, self.muon_weight_decay, self.grad_clip, self.max_minutes, self.eval_seconds) < 0:
            raise ConfigError("weight_decay, muon_weight_decay, grad_clip, max_minutes and eval_seconds must be >= 0")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError(f"betas must be in [0, 1), got {self.beta1}, {self.beta2}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be {', '.join(DTYPES[:-1])} or {DTYPES[-1]}, got {self.dtype!r}")
        _check_choice("schedule", self.schedule, ("wsd", "cosine"))
        _check_choice("compile", self.compile, COMPILE_MODES)
        _check_choice("optimizer", self.optimizer, ("muon", "adamw"))
        _check_choice("report_to", self.report_to, ("none", "tensorboard", "trackio"))
        if not 0 <= self.cooldown_fraction <= 1:
            raise ConfigError(f"cooldown_fraction must be in [0, 1], got {self.cooldown_fraction}")
        if not self.muon_lr > 0:
            raise ConfigError(f"muon_lr must be > 0, got {self.muon_lr}")
        return self

    @classmethod
    def from_saved(cls, values: dict[str, Any]) -> TrainConfig:
        """A config saved by any version: fields older files lack take the classic recipe's values."""
        values = dict(values)
        if isinstance(values.get("compile"), bool):  # saved before auto: a switch
            values["compile"] = "on" if values["compile"] else "off"
        return replace_known(cls(), {**RECIPES["classic"], **values})


# The dataclass defaults are the recipe that measured best (benchmarks/recipe.py); `classic` is nanoGPT's 2022
# model and optimiser, which is also what a config saved before these fields existed means.
RECIPES: dict[str, dict[str, Any]] = {
    "modern": {},
    "classic": {
        "pos_encoding": "learned",
        "norm": "layernorm",
        "mlp": "gelu",
        "qk_norm": False,
        "tie_head": True,
        "logit_softcap": None,
        "schedule": "cosine",
        "optimizer": "adamw",
    },
}


def recipe_configs(name: str = "modern") -> tuple[ModelConfig, TrainConfig]:
    """The default configs of recipe `name`."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; use one of {', '.join(RECIPES)}")
    return replace_known(ModelConfig(), RECIPES[name]), replace_known(TrainConfig(), RECIPES[name])


def parse_duration(text: str) -> float:
    """Seconds from `90`, `90s`, `20m`, `1.5h`; a clear error otherwise."""
    return _parse_with_unit(text, {"s": 1, "m": 60, "h": 3600}, "duration", "90, 90s, 20m or 1.5h")


def parse_flops(text: str) -> float:
    """FLOPs from `5e11`, `500G`, `0.5T`, `2P`; a clear error otherwise."""
    return _parse_with_unit(text, {"g": 1e9, "t": 1e12, "p": 1e15}, "FLOPs", "5e11, 500G or 0.5T")


def _parse_with_unit(text: str, units: dict[str, float], what: str, examples: str) -> float:
    text = str(text).strip().lower()
    scale = units.get(text[-1:])
    number = text[:-1] if scale else text
    try:
        value = float(number) * (scale or 1)
    except ValueError:
        raise ConfigError(f"cannot read {what} {text!r}; use e.g. {examples}") from None
    if not value >= 0:
        raise ConfigError(f"{what} must be >= 0, got {text!r}")
    return value


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls: type, values: dict[str, Any], *, strict: bool = True) -> Any:
    """Build `cls` from a dict; unknown keys are an error when `strict`, else ignored."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown and strict:
        raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    return cls(**{k: v for k, v in values.items() if k in names})


def replace_known(config: Any, values: dict[str, Any]) -> Any:
    """Return a copy of `config` with the entries of `values` that name one of its fields."""
    names = {f.name for f in dataclasses.fields(config)}
    return dataclasses.replace(config, **{k: v for k, v in values.items() if k in names})

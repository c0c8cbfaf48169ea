"""The search space: ranges and choices read from JSON, sampled by Optuna as conditional parameters, and
applied to the model and training configs."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from core.base import FINE_TUNE
from core.bpe import MAX_VOCAB, MIN_VOCAB
from core.config import (
    MUON_LR,
    ModelConfig,
    TrainConfig,
    replace_known,
)
from core.device import device_kind
from core.tune.config import TuningError
from core.variants import AS_PREPARED, TOKENIZER_CHOICES, variant_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    step: int = 1


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class Choice:
    options: tuple


Spec = IntRange | FloatRange | Choice | int | float | str | bool


# Fields that must be positive whatever their spec; the others must be >= 0.
_POSITIVE = {"lr", "n_layer", "n_head", "head_size", "batch_size", "block_size"}


_FRACTIONS = {"dropout", "warmup_fraction", "min_lr_ratio"}


_CATEGORICAL = {"optimizer", "pos_encoding", "norm", "mlp", "qk_norm", "tokenizer"}


def _gpu_shapes() -> dict[str, Any]:
    """The shapes worth searching on a GPU: wider and deeper than on a CPU."""
    return {"n_layer": IntRange(4, 8), "n_head": Choice((4, 6, 8)), "head_size": Choice((32, 64)),
            "batch_size": Choice((32, 64)), "block_size": Choice((128, 256))}  # fmt: skip


@dataclass
class SearchSpace:
    """What a trial may vary. Each field is a range, a choice, or a fixed value.

    Width is drawn as `n_head * head_size`, so an invalid n_embd/n_head pair is never sampled.
    JSON form (`--space space.json`): `[low, high]` is a range (integers if both are), `{"low": .., "high":
    .., "log": true}` a log range, `{"choices": [...]}` a choice, and a plain number a fixed value.
    """

    lr: Spec = FloatRange(3e-4, 3e-3, log=True)
    n_layer: Spec = IntRange(2, 4)
    n_head: Spec = Choice((2, 4))
    head_size: Spec = Choice((16, 32))
    dropout: Spec = FloatRange(0.0, 0.2)
    batch_size: Spec = Choice((8, 16, 32))
    block_size: Spec = Choice((32, 64, 128))
    weight_decay: Spec = FloatRange(0.0, 0.2)
    warmup_fraction: Spec = FloatRange(0.0, 0.1)
    min_lr_ratio: Spec = 0.1
    # The recipe's options (ModelConfig/TrainConfig fields): fixed to the default recipe unless a space file
    # gives choices, e.g. {"optimizer": {"choices": ["muon", "adamw"]}, "muon_lr": [0.01, 0.04]}.
    optimizer: Spec = "muon"
    muon_lr: Spec = MUON_LR
    pos_encoding: Spec = "rope"
    norm: Spec = "rmsnorm"
    mlp: Spec = "relu2"
    qk_norm: Spec = True
    # The tokenizer: the dataset as prepared unless a space file gives choices, e.g. {"tokenizer": {"choices":
    # ["char", "bpe"]}, "vocab_size": [256, 4096]}; each is cached under dataset/tokenized/ (core.variants).
    tokenizer: Spec = AS_PREPARED
    vocab_size: Spec = 2048

    @classmethod
    def for_device(cls, device: str = "auto") -> SearchSpace:
        """Defaults sized for the device: small models on CPU, wider and deeper ones on a GPU."""
        return cls(**_gpu_shapes()) if device_kind(device).startswith("cuda") else cls()

    @classmethod
    def for_budget(cls, device: str = "auto") -> SearchSpace:
        """The space of a budgeted tournament: around the default model and up to a few times its size, since
        candidates that survive are trained for minutes, where bigger models and lower rates win. Warmup is
        by steps (a continued candidate must not warm up again), so warmup_fraction is fixed at 0."""
        device = device_kind(device)
        common = {"dropout": 0.0, "weight_decay": 0.1, "warmup_fraction": 0.0}
        if device.startswith("cuda"):
            return cls(
                **common,
                **_gpu_shapes(),
                lr=FloatRange(3e-4, 3e-3, log=True),
                muon_lr=FloatRange(0.01, 0.04, log=True),
            )
        return cls(
            **common,
            n_layer=IntRange(3, 6),
            n_head=Choice((4,)),
            head_size=Choice((32, 48, 64)),
            batch_size=Choice((12, 16, 24)),
            block_size=Choice((64, 128, 256)),
            lr=FloatRange(5e-4, 3e-3, log=True),
            muon_lr=FloatRange(0.004, 0.04, log=True),  # the long tournaments chose 0.005-0.01 (RESULTS.md)
        )

    @classmethod
    def for_fine_tune(cls, device: str = "auto") -> SearchSpace:
        """The space of a tournament from a saved model (core.base): its shape and recipe are fixed by the
        tournament's overrides; the rates are searched around the fine-tuning defaults, and dropout and
        weight decay, which a small corpus may need."""
        rates = {"lr": FINE_TUNE["lr"], "muon_lr": FINE_TUNE["muon_lr"]}
        return dataclasses.replace(
            cls.for_budget(device),
            **{name: FloatRange(rate / 3, rate * 3, log=True) for name, rate in rates.items()},
            dropout=FloatRange(0.0, 0.2),
            weight_decay=FloatRange(0.0, 0.2),
        )

    def validate(self) -> SearchSpace:
        for f in dataclasses.fields(self):
            spec = getattr(self, f.name)
            values: list[float] = []
            if isinstance(spec, (IntRange, FloatRange)):
                if spec.low > spec.high:
                    raise TuningError(f"search space {f.name}: low ({spec.low}) is greater than high ({spec.high})")
                if isinstance(spec, FloatRange) and spec.log and spec.low <= 0:
                    raise TuningError(f"search space {f.name}: a log range needs low > 0, got {spec.low}")
                values = [spec.low, spec.high]
            elif isinstance(spec, Choice):
                if not spec.options:
                    raise TuningError(f"search space {f.name}: the list of choices is empty")
                values = list(spec.options)
            elif isinstance(spec, (int, float)) and not isinstance(spec, bool):
                values = [spec]
            elif not isinstance(spec, (str, bool)):
                raise TuningError(f"search space {f.name}: cannot use {spec!r}")
            if f.name in _CATEGORICAL or isinstance(spec, (str, bool)):
                values = []  # names and switches: their ModelConfig/TrainConfig validation checks them
            for value in values:
                if f.name in _POSITIVE and not value > 0:
                    raise TuningError(f"search space {f.name}: values must be > 0, got {value}")
                if value < 0:
                    raise TuningError(f"search space {f.name}: values must be >= 0, got {value}")
                if f.name in _FRACTIONS and value >= 1:
                    raise TuningError(f"search space {f.name}: values must be < 1, got {value}")
                if f.name == "vocab_size" and not (isinstance(value, int) and MIN_VOCAB <= value <= MAX_VOCAB):
                    raise TuningError(f"search space vocab_size: values must be integers in [{MIN_VOCAB}, "
                                      f"{MAX_VOCAB}], got {value}")  # fmt: skip
        tokenizers = self.tokenizer.options if isinstance(self.tokenizer, Choice) else (self.tokenizer,)
        unknown = [t for t in tokenizers if t not in TOKENIZER_CHOICES]
        if unknown:
            raise TuningError(f"search space tokenizer: {unknown[0]!r} is none of {', '.join(TOKENIZER_CHOICES)}")
        return self

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            spec = getattr(self, f.name)
            if isinstance(spec, IntRange):
                out[f.name] = [spec.low, spec.high] if spec.step == 1 else dataclasses.asdict(spec)
            elif isinstance(spec, FloatRange):
                out[f.name] = {"low": spec.low, "high": spec.high, "log": spec.log}
            elif isinstance(spec, Choice):
                out[f.name] = {"choices": list(spec.options)}
            else:
                out[f.name] = spec
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], base: SearchSpace | None = None) -> SearchSpace:
        """Fields missing from `data` keep the values of `base` (default: the CPU defaults)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise TuningError(f"unknown search space field(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return dataclasses.replace(base or cls(), **{k: _parse_spec(k, v) for k, v in data.items()}).validate()

    @classmethod
    def load(cls, path: str | Path, base: SearchSpace | None = None) -> SearchSpace:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as err:
            raise TuningError(f"cannot read search space {path}: {err.strerror}") from None
        except ValueError as err:
            raise TuningError(f"{path} is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise TuningError(f"{path} must hold a JSON object of field: range")
        return cls.from_json(data, base)

    def allows(self, name: str, value: Any) -> bool:
        """Whether field `name` of this space can take `value`."""
        spec = getattr(self, name)
        if isinstance(spec, (IntRange, FloatRange)):
            return spec.low <= value <= spec.high and (
                isinstance(spec, FloatRange) or (value - spec.low) % spec.step == 0
            )
        if isinstance(spec, Choice):
            return value in spec.options
        return value == spec

    def fixing(self, values: dict[str, Any]) -> SearchSpace:
        """This space with the fields the user fixed (`values`: model and training fields) no longer searched,
        so trials neither draw nor record them. A fixed width fixes the head size where the head count is
        fixed too."""
        names = {f.name for f in dataclasses.fields(self)}
        fixed = {k: v for k, v in values.items() if k in names}
        heads = fixed.get("n_head", self.n_head)
        if isinstance(heads, Choice) and len(heads.options) == 1:
            heads = heads.options[0]
        if "n_embd" in values and isinstance(heads, int) and not isinstance(heads, bool):
            fixed["head_size"] = values["n_embd"] // heads
        return dataclasses.replace(self, **fixed)

    @staticmethod
    def in_space_terms(params: dict[str, Any]) -> dict[str, Any]:
        """`params` with the width as the space draws it: `head_size`, beside n_embd and n_head."""
        return params | {"head_size": params["n_embd"] // params["n_head"]}

    def searched_values(self, params: dict[str, Any]) -> dict[str, Any] | None:
        """The values of the searched fields in a full set of `params` (what a trial of this space records),
        or None when one lies outside the space."""
        values = self.in_space_terms(params)
        searched = [
            f.name
            for f in dataclasses.fields(self)
            if isinstance(spec := getattr(self, f.name), (IntRange, FloatRange))
            or (isinstance(spec, Choice) and len(spec.options) > 1)
        ]
        if not all(name in values and self.allows(name, values[name]) for name in searched):
            return None
        return {name: values[name] for name in searched}

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Draw one set of parameters; fixed fields are recorded but not searched."""
        params = {f.name: _suggest(trial, f.name, getattr(self, f.name)) for f in dataclasses.fields(self)}
        params["n_embd"] = params["n_head"] * params["head_size"]
        return params


def _parse_spec(name: str, value: Any) -> Spec:
    if name in _CATEGORICAL and isinstance(value, (str, bool)):
        return value
    if isinstance(value, bool):
        raise TuningError(f"search space {name}: {value!r} is not a number")
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        low, high = value
        if isinstance(low, int) and isinstance(high, int):
            return IntRange(low, high)
        return FloatRange(float(low), float(high), log=name == "lr")
    if isinstance(value, dict) and "choices" in value:
        return Choice(tuple(value["choices"]))
    if isinstance(value, dict) and {"low", "high"} <= value.keys():
        if isinstance(value["low"], int) and isinstance(value["high"], int) and not value.get("log"):
            return IntRange(value["low"], value["high"], int(value.get("step", 1)))
        return FloatRange(float(value["low"]), float(value["high"]), bool(value.get("log", False)))
    raise TuningError(
        f'search space {name}: cannot read {value!r}; use [low, high], {{"low": .., "high": .., "log": true}}, '
        '{"choices": [...]} or a single number'
    )


def _suggest(trial: optuna.Trial, name: str, spec: Spec) -> Any:
    if isinstance(spec, IntRange):
        return spec.low if spec.low == spec.high else trial.suggest_int(name, spec.low, spec.high, step=spec.step)
    if isinstance(spec, FloatRange):
        return spec.low if spec.low == spec.high else trial.suggest_float(name, spec.low, spec.high, log=spec.log)
    if isinstance(spec, Choice):
        return spec.options[0] if len(spec.options) == 1 else trial.suggest_categorical(name, list(spec.options))
    return spec


def apply_params(
    params: dict[str, Any], model_config: ModelConfig, train_config: TrainConfig, keep: set[str] = frozenset()
) -> tuple[ModelConfig, TrainConfig]:
    """Configs with the tuned `params` applied; fields named in `keep` (set by the user) are left alone.

    `warmup_fraction` applies to the run's own budget (steps or minutes); `min_lr_ratio` becomes `min_lr`;
    `tokenizer` and `vocab_size` choose the dataset (`core.variants`), not a config field.
    """
    values = {k: v for k, v in params.items() if k not in keep}
    tokenizer, vocab_size = values.pop("tokenizer", AS_PREPARED), values.pop("vocab_size", 0)
    if tokenizer != AS_PREPARED:  # the run's dataset (the user's --data-dir too) under that tokenizer
        values["data_dir"] = str(variant_dir(train_config.data_dir, tokenizer, vocab_size))
    if "warmup_iters" in keep:
        values.pop("warmup_fraction", None)
    if "min_lr_ratio" in values and "min_lr" not in keep:
        values["min_lr"] = values["min_lr_ratio"] * values.get("lr", train_config.lr)
    return replace_known(model_config, values), replace_known(train_config, values)

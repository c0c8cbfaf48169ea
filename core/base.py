"""Building on a saved model (`--init-from`): a run that starts from its weights, on new text.

    base = load_base("shakespeare", "models")
    model_config, train_config = fine_tune_configs(base, train_config, flags)   # shape and recipe from the base
    weights = base.weights_for(dataset.vocab)                                    # rows for new characters

The base gives the shape (every model field but dropout) and the recipe (optimizer, batch, decay); the run
gets a fresh optimizer, schedule, step count and seed, with the fine-tuning rates of `FINE_TUNE` (measured:
benchmarks/fine_tune.py, "Building on a model" in RESULTS.md). A character base reads the new text with its
own characters first and the text's new ones after them (`core.variants.tokenized_as`); a BPE base's tokenizer
encodes the new text as it is, never a retrained one.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core import checkpoint as ckpt
from core.bpe import BpeTokenizer, load_tokenizer, read_kind
from core.config import ConfigError, ModelConfig, TrainConfig, replace_known
from core.data import DataError
from core.vocab import Vocab

log = logging.getLogger(__name__)

# What a fine-tuning run changes from its base's recipe unless the user sets it: a tenth of the pre-training
# rates, a short warmup and a decay over the second half (benchmarks/fine_tune.py --part rates chose them).
FINE_TUNE: dict[str, Any] = {
    "lr": 1e-4,
    "muon_lr": 0.002,
    "warmup_iters": 20,
    "warmup_fraction": 0.0,
    "schedule": "wsd",
    "cooldown_fraction": 0.5,
    "min_lr": -1.0,
}
# The base's training fields a fine-tuning run keeps: how its weights were shaped by their optimizer.
RECIPE_FIELDS = (
    "optimizer", "batch_size", "grad_accum", "weight_decay", "muon_weight_decay", "beta1", "beta2", "grad_clip",
)  # fmt: skip
VOCAB_KEYS = ("wte.weight", "lm_head.weight")  # the tensors with a row a token


@dataclass
class Base:
    """A saved model a run starts from."""

    path: Path
    model_config: ModelConfig
    train_config: TrainConfig
    vocab: Vocab | BpeTokenizer
    weights: dict[str, torch.Tensor]
    info: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.name

    def record(self) -> dict[str, Any]:
        return base_record(self.path, self.info, self.vocab)

    def weights_for(self, vocab: Vocab | BpeTokenizer) -> dict[str, torch.Tensor]:
        """The base's weights for a model whose vocabulary is `vocab`: the base's own first, as
        `core.variants.tokenized_as` orders it; each new token's rows start at the mean of the base's, so a new
        character begins as an average one rather than at random scale."""
        if list(vocab.chars[: len(self.vocab)]) != list(self.vocab.chars):
            raise DataError(f"the dataset's vocabulary does not begin with {self.name}'s; it was not built from it")
        added = len(vocab) - len(self.vocab)
        if added == 0:
            return self.weights
        grown = dict(self.weights)
        for key in VOCAB_KEYS:
            if key in grown:
                rows = grown[key]
                grown[key] = torch.cat([rows, rows.mean(dim=0, keepdim=True).expand(added, -1)])
        return grown


def base_record(folder: Path, info: dict[str, Any] | None = None, vocab: Any = None) -> dict[str, Any]:
    """What a model built on the one in `folder` keeps of it (config.json's `base`, the card, Compare)."""
    info = info if info is not None else ckpt.read_config(folder)
    vocab = vocab if vocab is not None else load_tokenizer(folder)
    data, summary = info.get("data") or {}, info.get("summary") or {}
    return {
        "name": folder.name,
        "val_loss": summary.get("val_loss", summary.get("best_val_loss")),
        "tokenizer": vocab.kind,
        "vocab_size": len(vocab),
        "data": {k: data.get(k) for k in ("sources", "chars") if k in data},
        "base": (info.get("base") or {}).get("name"),
    }


def base_path(name_or_path: str | Path, models_dir: str | Path = "models") -> Path:
    """The folder of the model to start from, a name in `models_dir` or a folder."""
    try:
        return ckpt.resolve_model(str(name_or_path), models_dir)
    except ckpt.ModelError as err:
        raise ckpt.ModelError(f"cannot start from {name_or_path}: {err}") from None


def load_base(name_or_path: str | Path, models_dir: str | Path = "models") -> Base:
    """A saved model to start from, checked as `core.checkpoint.load_model` checks any (the folder, its config, its
    tokenizer, its weights' shapes); the message says which base is at fault."""
    try:
        loaded = ckpt.load_model(str(name_or_path), models_dir, device="cpu")
    except ckpt.ModelError as err:
        raise ckpt.ModelError(f"cannot start from {Path(name_or_path).name}: {err}") from None
    weights = {k: v.detach().clone() for k, v in ckpt.weights_for_saving(loaded.model).items()}
    train_config = TrainConfig.from_saved(loaded.info.get("train") or {})
    return Base(loaded.path, loaded.model.config, train_config, loaded.vocab, weights, loaded.info)


def refuse_shape_flags(flags: dict[str, Any], base: Base) -> None:
    """A run from a base keeps its shape: a flag that would change it is an error, not ignored."""
    shape = [f.name for f in dataclasses.fields(ModelConfig) if f.name not in ("dropout", "vocab_size")]
    given = [name for name in shape if name in flags and flags[name] != getattr(base.model_config, name)]
    if given:
        said = ", ".join(f"--{n.replace('_', '-')} {flags[n]}" for n in given)
        kept = ", ".join(f"{n}={getattr(base.model_config, n)}" for n in given)
        raise ConfigError(
            f"{said} would change the model {base.name} gives: a run started from it keeps its shape ({kept}); "
            "drop the flag, or train from scratch without --init-from"
        )


def fine_tune_configs(base: Base, defaults: TrainConfig, flags: dict[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    """The configs of a run from `base`: its shape and recipe, `FINE_TUNE`'s rates, then the user's flags
    (which always win); dropout may change, the shape not."""
    refuse_shape_flags(flags, base)
    model_config = dataclasses.replace(base.model_config, dropout=flags.get("dropout", base.model_config.dropout))
    recipe = {name: getattr(base.train_config, name) for name in RECIPE_FIELDS}
    train_config = replace_known(defaults, {**recipe, **FINE_TUNE, **flags})
    return model_config.validate(), train_config.validate()


def check_tokenizer_kind(base: Base, data_dir: str | Path) -> None:
    """A character base reads characters and a BPE base its own tokens: a dataset prepared the other way is
    refused with the command that prepares it for this base (a check only: nothing is encoded)."""
    _refuse_other_kind(data_dir, base.vocab.kind, base.name)


def base_data_dir(data_dir: str | Path, init_from: str | Path) -> Path:
    """The run's text as the base reads it (its tokenizer only is loaded, not its weights)."""
    folder = base_path(init_from)
    return read_with(data_dir, load_tokenizer(folder), folder.name)


def read_with(data_dir: str | Path, vocab: Vocab | BpeTokenizer, name: str) -> Path:
    """`data_dir`'s text read with the vocabulary of model `name` (core.variants.tokenized_as); a dataset
    prepared with the other kind of tokenizer is refused with the command that prepares it for the model."""
    from core.variants import tokenized_as

    _refuse_other_kind(data_dir, vocab.kind, name)
    return tokenized_as(data_dir, vocab)


def _refuse_other_kind(data_dir: str | Path, kind: str, name: str) -> None:
    from core.variants import variant_source

    prepared = read_kind(variant_source(data_dir))
    if prepared != kind:
        raise DataError(
            f"{data_dir} was prepared with {'a BPE' if prepared == 'bpe' else 'characters'}, but {name} reads "
            f"{'a BPE' if kind == 'bpe' else 'characters'}: prepare the text for it with "
            f"`python app.py prepare FILES --tokenizer-from {name}`"
        )


def tuning_overrides(base: Base) -> dict[str, Any]:
    """What every candidate of a tournament from `base` keeps: the base itself, its shape and its recipe; the
    candidates search the fine-tuning fields that remain (core.tune.space.SearchSpace.for_fine_tune)."""
    shape = {f.name: getattr(base.model_config, f.name) for f in dataclasses.fields(ModelConfig)
             if f.name not in ("dropout", "vocab_size")}  # fmt: skip
    recipe = {name: getattr(base.train_config, name) for name in RECIPE_FIELDS if name != "weight_decay"}
    return {**shape, **recipe, "init_from": str(base.path)}


@dataclass
class Start:
    """How a run with `init_from` begins: the base (None when resumed: its weights are in the checkpoint), what
    config.json keeps of it, and the folder of the text as the model reads it."""

    base: Base | None
    record: dict[str, Any] | None
    data_dir: Path


def starting_from(train_config: TrainConfig, shape: dict[str, Any], out: Path | None, resuming: bool) -> Start:
    """A new run loads the base (and refuses a `shape` that is not its own); a resumed one reads its vocabulary
    from its own folder (the base may be gone since) or, for a copy of a checkpoint alone (a tournament's
    cooldown branch), from the base's tokenizer, which grows to the same vocabulary."""
    base = None
    if resuming and out is not None and (out / ckpt.CONFIG_JSON).is_file():
        vocab, record = load_tokenizer(out), ckpt.read_config(out).get("base")
    elif resuming:
        folder = base_path(train_config.init_from)
        vocab, record = load_tokenizer(folder), base_record(folder)
    else:
        base = load_base(train_config.init_from)
        refuse_shape_flags(shape, base)
        vocab, record = base.vocab, base.record()
    return Start(base, record, read_with(train_config.data_dir, vocab, Path(train_config.init_from).name))


NEW_TEXT_WARNING = 0.3  # of the training text in characters the base has never seen


def unseen_share(tokens: Any, base_vocab_size: int, sample: int = 10_000_000) -> float:
    """The share of the training text (its first `sample` tokens) spelled with tokens the base lacks: the rows a
    run from it must learn from nothing."""
    import numpy as np

    ids = np.asarray(tokens[:sample])
    return float((ids >= base_vocab_size).mean()) if ids.size else 0.0


def unseen_note(share: float, name: str) -> str:
    """Said when most of a text is new to its base: the base's head start is then small, and the fine-tuning
    rates learn new letters slowly (RESULTS.md, "Building on a model": a Cyrillic text)."""
    if share <= NEW_TEXT_WARNING:
        return ""
    return (
        f"{share:.0%} of this text is in characters {name} has never seen: starting from it may do worse than "
        "training from scratch (measured on a Cyrillic text); compare both, or raise --lr"
    )


def start_weights(model: torch.nn.Module, dataset: Any, base: Base | None, init_from: str) -> str:
    """Load the base's weights, grown to the dataset's vocabulary, into a new run's `model`; returns what to
    tell the user when most of the text is new to the base (else "")."""
    base = base or load_base(init_from)
    ckpt.load_weights(model, base.weights_for(dataset.vocab), base.path)
    return unseen_note(unseen_share(dataset.tokens["train"], len(base.vocab)), base.name)

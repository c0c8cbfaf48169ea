"""Saved models side by side: validation curves, configurations, and each one's continuation of one prompt.

    comparison = compare(["tiny", "best"], models_dir="models", prompt="ROMEO:", seed=1)

A model built on another (`--init-from`) is shown beside its base when the base is still saved. The CLI's
`compare` and the Train tab's comparison view both call this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import checkpoint as ckpt
from core.config import TrainConfig
from core.sampling import SamplingConfig, complete

# The rows of the side-by-side table: the shape, the recipe, and what training reached.
CONFIG_ROWS = (
    "started_from", "tokenizer", "vocab_size", "n_layer", "n_head", "n_embd", "block_size", "pos_encoding", "norm", "mlp", "qk_norm", "tie_head",
    "optimizer", "lr", "muon_lr", "schedule", "batch_size", "val_loss", "best_val_loss", "best_step", "iters",
    "parameters",
)  # fmt: skip


@dataclass
class Comparison:
    names: list[str]
    curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # (million characters seen, val)
    table: list[list[Any]] = field(default_factory=list)  # one row per CONFIG_ROWS entry: name, value per model
    continuations: dict[str, str] = field(default_factory=dict)


def compare(
    names: list[str], models_dir: str | Path = "models", prompt: str = "\n", seed: int = 0, chars: int = 200
) -> Comparison:
    names = with_bases(names, models_dir)
    if len(names) < 2:
        raise ckpt.ModelError("choose two or more saved models to compare (or one built on a saved model)")
    result = Comparison(names=list(names))
    columns: list[dict[str, Any]] = []
    settings = SamplingConfig(temperature=0.8, max_new_tokens=chars, seed=seed).validate()
    for name in names:
        loaded = ckpt.load_model(name, models_dir)
        info = loaded.info
        train_info, summary = info.get("train", {}), info.get("summary", {})
        tokens_per_step = (
            train_info.get("batch_size", 0) * train_info.get("grad_accum", 1) * loaded.model.config.block_size
        )
        chars_per_step = tokens_per_step / summary.get("tokens_per_char", 1.0)  # a BPE token spells several
        result.curves[name] = [
            (record["step"] * chars_per_step / 1e6, record["val_loss"]) for record in ckpt.read_metrics(loaded.path)
        ]
        model_values = vars(loaded.model.config)  # older configs read as classic, as they load
        train_values = vars(TrainConfig.from_saved(train_info))
        base = info.get("base") or {}
        columns.append({**train_values, **model_values, **summary, "tokenizer": loaded.vocab.kind,
                        "parameters": f"{loaded.model.num_params() / 1e6:.3g}M",
                        "started_from": base.get("name", "scratch")})  # fmt: skip
        result.continuations[name] = complete(loaded.model, loaded.vocab, prompt, settings)
    for row in CONFIG_ROWS:
        values = [column.get(row, "-") for column in columns]
        result.table.append([row, *(f"{v:.4g}" if isinstance(v, float) else str(v) for v in values)])
    return result


def with_bases(names: list[str], models_dir: str | Path) -> list[str]:
    """`names`, each followed by the saved model it was built on unless that one is named already."""
    shown: list[str] = []
    for name in names:
        shown.append(name)
        try:
            base = (ckpt.read_config(ckpt.resolve_model(name, models_dir)).get("base") or {}).get("name")
        except ckpt.ModelError:
            continue  # compare's own load says what is wrong with it
        if base and base not in names and base not in shown and (Path(models_dir) / base).is_dir():
            shown.append(base)
    return shown

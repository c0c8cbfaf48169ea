"""Saved models and resumable checkpoints, in safetensors + JSON (nothing is ever unpickled).

models/<name>/
    config.json          ModelConfig, TrainConfig, vocab size, training summary, where the params came from
    model.safetensors    weights with the best validation loss
    vocab.txt            the vocabulary the model was trained with
    metrics.jsonl        one line per evaluation
    best_params.json     the tuned parameters, when the model came from a study
    README.md            the model card, rendered from config.json at every save (core.card)
    export/              model.onnx, the tokenizer and the card, after `export` (core.export)
    checkpoint/step-N/   weights, optimiser, RNG and trainer state; the newest valid one is resumed

Every file is written atomically; a checkpoint folder is complete once renamed into place, and its
state.json records a hash of each file, so a damaged checkpoint is detected and skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from core.bpe import TOKENIZER_JSON, BpeTokenizer
from core.card import write_card
from core.config import ConfigError, ModelConfig, from_dict
from core.fileio import atomic_path, atomic_write_text, fsync_dir, remove_stale_temps, valid_name
from core.model import GPT
from core.vocab import Vocab, VocabError

log = logging.getLogger(__name__)

CONFIG_JSON, WEIGHTS, VOCAB_TXT, METRICS, BEST_PARAMS = (
    "config.json",
    "model.safetensors",
    "vocab.txt",
    "metrics.jsonl",
    "best_params.json",
)
CHECKPOINT_DIR = "checkpoint"
_TMP_PREFIX = ".tmp-"  # a checkpoint folder being written; renamed to step-N when whole
KEEP_CHECKPOINTS = 2
TIED_KEY = "lm_head.weight"  # with tie_head, shares storage with wte.weight: saved once
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt")


class ModelError(ValueError):
    """A saved model or checkpoint is missing, damaged, or does not match; the message says which file."""


# --- names and folders -----------------------------------------------------------------------------


def check_name(name: str) -> str:
    if not valid_name(name):
        raise ModelError(
            f"invalid model name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def model_dir(name: str, models_root: str | Path = "models") -> Path:
    """The folder of model `name` inside `models_root`; names cannot point outside it."""
    root = Path(models_root).resolve()
    path = (root / check_name(name)).resolve()
    if path.parent != root:
        raise ModelError(f"model name {name!r} leaves {root}")
    return path


def resolve_model(name_or_path: str | None, models_root: str | Path = "models") -> Path:
    """A model folder from a name in `models_root` or a path; None means the most recently saved model."""
    if not name_or_path:
        models = list_models(models_root)
        if not models:
            raise ModelError(f"no saved models in {models_root}/; train one first: python app.py train --name NAME")
        return models[0]
    path = Path(name_or_path)
    if path.is_dir() and (path / CONFIG_JSON).exists():
        return path
    folder = model_dir(name_or_path, models_root)
    if not folder.is_dir():
        known = ", ".join(p.name for p in list_models(models_root)) or "none"
        raise ModelError(f"no model named {name_or_path!r} in {models_root}/ (saved models: {known})")
    return folder


def list_models(models_root: str | Path = "models") -> list[Path]:
    """Saved model folders, newest first."""
    root = Path(models_root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if (p / WEIGHTS).is_file() and (p / CONFIG_JSON).is_file()]
    return sorted(found, key=lambda p: (p / WEIGHTS).stat().st_mtime, reverse=True)


# --- tensors <-> files -----------------------------------------------------------------------------


def weights_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights on CPU, without a tied head (it is the embedding) or a compiled model's
    `_orig_mod.` prefix."""
    state = {key.removeprefix("_orig_mod."): value for key, value in model.state_dict().items()}
    tied = TIED_KEY in state and state[TIED_KEY].data_ptr() == state["wte.weight"].data_ptr()
    return {
        key: value.detach().to("cpu", copy=True).contiguous()
        for key, value in state.items()
        if not (tied and key == TIED_KEY)
    }


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelError(f"{path} not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelError(f"{path} is truncated or corrupt ({err}); retrain or restore it") from None


def weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape from a safetensors file's header, without reading the tensors."""
    if not path.is_file():
        raise ModelError(f"{path} not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelError(f"{path} is truncated or corrupt ({err}); retrain or restore it") from None


def check_shape_before_building(config: ModelConfig, shapes: dict[str, tuple[int, ...]], source: Path) -> None:
    """Refuse a config whose model the weights cannot fill, before anything of its size is allocated (a copied
    config.json with n_layer 1e6 would take the machine's memory building it)."""
    layers = {int(key.split(".")[1]) for key in shapes if key.startswith("blocks.") and key.split(".")[1].isdigit()}
    found = {
        "n_layer": len(layers),
        "vocab_size, n_embd": shapes.get("wte.weight"),
        "block_size, n_embd": shapes.get("wpe.weight") if config.pos_encoding == "learned" else None,
    }
    said = {
        "n_layer": config.n_layer,
        "vocab_size, n_embd": (config.vocab_size, config.n_embd),
        "block_size, n_embd": (config.block_size, config.n_embd) if config.pos_encoding == "learned" else None,
    }
    wrong = [f"{name} is {said[name]} in config.json but {found[name]} in the weights" for name in found
             if found[name] != said[name]]  # fmt: skip
    if wrong:
        raise ModelError(f"{source} does not match its config.json: {'; '.join(wrong)}; the files come from "
                         "different models")  # fmt: skip


def load_weights(model: GPT, tensors: dict[str, torch.Tensor], source: Path) -> None:
    tied = model.config.tie_head
    expected = {k: v.shape for k, v in model.state_dict().items() if not (tied and k == TIED_KEY)}
    got = {k: v.shape for k, v in tensors.items()}
    missing, unexpected = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
    wrong = [
        f"{k} {tuple(got[k])} != {tuple(expected[k])}" for k in expected.keys() & got.keys() if got[k] != expected[k]
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}")
        if wrong:
            parts.append(f"wrong shape {wrong[:5]}")
        raise ModelError(f"{source} does not match its config.json: {'; '.join(parts)}")
    model.load_state_dict(tensors, strict=False)


# --- saved models ----------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    model: GPT
    vocab: Vocab
    info: dict[str, Any]
    path: Path

    @property
    def name(self) -> str:
        return self.path.name


def save_model(
    folder: Path,
    weights: dict[str, torch.Tensor],
    model_config: ModelConfig,
    vocab: Vocab,
    info: dict[str, Any],
) -> None:
    """Write config.json, the tokenizer (vocab.txt, or tokenizer.json for a BPE) and model.safetensors (each
    atomically; weights last)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model": model_config.__dict__ | {"vocab_size": len(vocab)}, "tokenizer": vocab.kind, **info}
    atomic_write_text(folder / CONFIG_JSON, json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    vocab.save(folder / (TOKENIZER_JSON if vocab.kind == "bpe" else VOCAB_TXT))
    _save_tensors(folder / WEIGHTS, weights, metadata={"format": "pt"})
    write_card(folder, json.loads(json.dumps(config, default=str)))


def read_metrics(folder: Path) -> list[dict[str, Any]]:
    """The evaluations a model folder's metrics.jsonl records (a torn last line is skipped)."""
    try:
        lines = (Path(folder) / METRICS).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def write_best_params(folder: Path, record: dict[str, Any]) -> None:
    atomic_write_text(folder / BEST_PARAMS, json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_JSON
    if not path.is_file():
        raise ModelError(f"{path} not found; {folder} is not a saved model")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ModelError(f"{path} is not valid JSON ({err})") from None


def load_model(
    name_or_path: str | Path | None, models_root: str | Path = "models", device: str | torch.device = "cpu"
) -> LoadedModel:
    """Load a saved model, checking that config, vocab and weights agree."""
    folder = resolve_model(str(name_or_path) if name_or_path else None, models_root)
    pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickles and not (folder / WEIGHTS).exists():
        raise ModelError(
            f"{folder} holds only pickle files ({', '.join(pickles)}); they are not loaded because unpickling "
            "can run arbitrary code. Convert them to model.safetensors with torch.load(weights_only=True)."
        )
    info = read_config(folder)
    try:
        saved = info.get("model", {})
        from_dict(ModelConfig, saved)  # unknown fields are an error
        model_config = ModelConfig.from_saved(saved).validate()
    except (ConfigError, TypeError) as err:
        raise ModelError(f"{folder / CONFIG_JSON}: {err}") from None
    kind = info.get("tokenizer", "char")
    tokenizer_file = folder / (TOKENIZER_JSON if kind == "bpe" else VOCAB_TXT)
    if kind == "bpe" and not tokenizer_file.is_file():
        raise ModelError(f"{tokenizer_file} is missing: this BPE model cannot read or write text without it")
    try:
        vocab = (BpeTokenizer if kind == "bpe" else Vocab).load(tokenizer_file)
    except VocabError as err:
        raise ModelError(str(err)) from None
    if len(vocab) != model_config.vocab_size:
        raise ModelError(
            f"{tokenizer_file} has {len(vocab)} tokens but config.json says vocab_size="
            f"{model_config.vocab_size}; the files come from different models"
        )
    check_shape_before_building(model_config, weight_shapes(folder / WEIGHTS), folder / WEIGHTS)
    model = GPT(model_config)
    load_weights(model, _load_tensors(folder / WEIGHTS), folder / WEIGHTS)
    model.to(device).eval()
    return LoadedModel(model=model, vocab=vocab, info=info, path=folder)


# --- checkpoints -----------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    path: Path
    state: dict[str, Any]
    weights: dict[str, torch.Tensor]
    best_weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, torch.Tensor]

    @property
    def step(self) -> int:
        return int(self.state["step"])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _optimizer_to_tensors(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for index, slots in state_dict["state"].items():
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _optimizer_from_tensors(tensors: dict[str, torch.Tensor], layout: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for name, value in layout.get("scalars", {}).items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": layout["param_groups"]}


def save_checkpoint(
    folder: Path,
    step: int,
    weights: dict[str, torch.Tensor],
    best_weights: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    rng: dict[str, torch.Tensor],
    state: dict[str, Any],
) -> Path:
    """Write checkpoint/step-N atomically (a temp folder renamed into place) and keep the newest two."""
    root = folder / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=root))
    try:
        opt_tensors, opt_layout = _optimizer_to_tensors(optimizer_state)
        files = {
            "model.safetensors": weights,
            "best.safetensors": best_weights,
            "optimizer.safetensors": opt_tensors,
            "rng.safetensors": rng,
        }
        for filename, tensors in files.items():
            save_file(tensors, str(tmp / filename))
        record = {
            **state,
            "step": step,
            "optimizer_layout": opt_layout,
            "sha256": {name: _sha256(tmp / name) for name in files},
        }
        (tmp / "state.json").write_text(json.dumps(record, default=_json_default), encoding="utf-8")
        for path in tmp.iterdir():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(tmp)
        final = root / f"step-{step:08d}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in _checkpoint_dirs(folder)[KEEP_CHECKPOINTS:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def remove_leftovers(folder: Path) -> None:
    """Delete what writes cut short by a kill left behind: temp files, half-built checkpoint folders."""
    remove_stale_temps(folder)
    for tmp in (folder / CHECKPOINT_DIR).glob(f"{_TMP_PREFIX}*"):
        shutil.rmtree(tmp, ignore_errors=True)


def has_checkpoint(folder: Path) -> bool:
    """Whether `folder` holds a checkpoint folder (intact or not: `latest_checkpoint` reads them)."""
    return bool(_checkpoint_dirs(folder))


def _checkpoint_dirs(folder: Path) -> list[Path]:
    root = folder / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    return sorted((p for p in root.glob("step-*") if p.is_dir()), reverse=True)


def read_checkpoint(path: Path) -> Checkpoint:
    state_path = path / "state.json"
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelError(f"{state_path} is missing or damaged ({err})") from None
    for name, digest in state.get("sha256", {}).items():
        if not (path / name).is_file() or _sha256(path / name) != digest:
            raise ModelError(f"{path / name} is missing or does not match its recorded hash")
    return Checkpoint(
        path=path,
        state=state,
        weights=_load_tensors(path / "model.safetensors"),
        best_weights=_load_tensors(path / "best.safetensors"),
        optimizer=_optimizer_from_tensors(_load_tensors(path / "optimizer.safetensors"), state["optimizer_layout"]),
        rng=_load_tensors(path / "rng.safetensors"),
    )


def latest_checkpoint(folder: Path) -> Checkpoint | None:
    """The newest checkpoint that reads back intact; damaged ones are skipped with a warning."""
    for path in _checkpoint_dirs(folder):
        try:
            return read_checkpoint(path)
        except ModelError as err:
            log.warning("skipping damaged checkpoint %s: %s", path, err)
    return None

"""Export a saved model to ONNX with PyTorch's own exporter, checked against PyTorch in onnxruntime, or as a
Hugging Face `transformers` folder (core.hf), checked against PyTorch in `transformers`.

models/<name>/export/
    model.onnx       input `input_ids` int64 [batch, sequence], output `logits` float32 [batch, sequence, vocab]
    vocab.txt        or tokenizer.json for a BPE model
    README.md        the model card, with an example that samples from model.onnx with numpy and onnxruntime
    hf/              the `transformers` folder (`--format hf`), kept when the ONNX files are written again

The folder is built beside its final place and renamed into it only when whole (and checked, with `check`),
so a failed export leaves the previous one, or none, never half of one.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.bpe import TOKENIZER_JSON
from core.card import CARD, write_card
from core.checkpoint import VOCAB_TXT, WEIGHTS, LoadedModel, ModelError, load_model, read_config, resolve_model
from core.fileio import fsync_dir
from core.hf import HF_DIR, HF_PACKAGES, check_hf, write_hf_folder
from core.logit_check import worst_logit_difference
from core.model import GPT
from core.runs import shown_model

EXPORT_DIR = "export"
ONNX_FILE = "model.onnx"
FORMATS = ("onnx", "hf")
MAX_ABS_DIFF = 1e-4  # `check` fails above this difference between ONNX's and PyTorch's logits
EXPORT_PACKAGES = {"onnx": ("onnx", "onnxscript", "onnxruntime"), "hf": HF_PACKAGES}
INSTALL_HINT = "pip install -r requirements-export.txt"
CHECKED = ".checked"  # in export/hf: the export was checked against PyTorch (its largest logit difference)


class ExportError(ModelError):
    """An export cannot be made or does not match PyTorch; the message says what to do."""


@dataclass
class ExportResult:
    folder: Path
    path: Path  # the weights: model.onnx, or model.safetensors of a `transformers` folder
    max_abs_diff: float | None  # None when not checked
    seconds: float
    fmt: str = "onnx"
    sample: str = ""  # what `transformers`' pipeline generated in the check

    def line(self) -> str:
        checked = f" max_abs_diff={self.max_abs_diff:.2e}" if self.max_abs_diff is not None else ""
        return f"export {self.fmt}={self.path}{checked}"


class _Logits(torch.nn.Module):
    """The model with one output, the logits of every position (what an ONNX consumer samples from)."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)[0].float()


def missing_packages(fmt: str = "onnx") -> list[str]:
    return [name for name in EXPORT_PACKAGES[fmt] if importlib.util.find_spec(name) is None]


def write_onnx(model: GPT, path: Path) -> None:
    """Trace `model` to an ONNX graph at `path`, batch and sequence dynamic (sequence up to the context)."""
    block = model.config.block_size
    batch = torch.export.Dim("batch", min=1, max=4096)
    # torch.export specialises a dimension whose example size is 1, so the example has 2 of each
    sequence = torch.export.Dim("sequence", min=1, max=block) if block > 1 else None
    example = torch.zeros((2, min(2, block)), dtype=torch.int64)
    shapes = {"input_ids": {0: batch, **({1: sequence} if sequence is not None else {})}}
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" and the like
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            _Logits(model).eval(),
            (example,),
            input_names=["input_ids"],
            output_names=["logits"],
            dynamic_shapes=shapes,
            dynamo=True,
            verbose=False,
            external_data=False,
        )
        program.save(str(path))


def max_logit_difference(model: GPT, onnx_path: Path, seed: int = 0) -> float:
    """The largest absolute difference between PyTorch's and onnxruntime's logits (core.logit_check)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    def theirs(ids: torch.Tensor) -> np.ndarray:
        return session.run(["logits"], {"input_ids": ids.numpy()})[0]

    return worst_logit_difference(model, theirs, "the ONNX graph", ExportError, seed)


LEFTOVER_PREFIXES = (".tmp-export-", ".tmp-old-export-")


def remove_export_leftovers(folder: Path) -> None:
    """What an export killed mid-way left: its half-built folder, or the export it was replacing."""
    for path in folder.iterdir():
        if path.name.startswith(LEFTOVER_PREFIXES) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


def export_model(
    name_or_path: str | Path, models_root: str | Path = "models", *, fmt: str = "onnx", check: bool = False
) -> ExportResult:
    """Export a saved model to `models/<name>/export/` (see the module docstring); with `check`, refuse to
    keep an export whose logits differ from PyTorch's by more than MAX_ABS_DIFF."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    missing = missing_packages(fmt)
    if missing:
        raise ExportError(f"{fmt} export needs {', '.join(missing)}, not installed here: {INSTALL_HINT}")
    started = time.perf_counter()
    loaded: LoadedModel = load_model(name_or_path, models_root)
    final = loaded.path / EXPORT_DIR / (HF_DIR if fmt == "hf" else "")
    fill = _fill_hf if fmt == "hf" else _fill_onnx
    difference, sample = _replace_whole(final, lambda building: fill(loaded, building, check))
    weights = final / ("model.safetensors" if fmt == "hf" else ONNX_FILE)
    return ExportResult(final, weights, difference, time.perf_counter() - started, fmt, sample)


def _fill_onnx(loaded: LoadedModel, building: Path, check: bool) -> tuple[float | None, str]:
    folder = loaded.path
    onnx_path = building / ONNX_FILE
    try:
        write_onnx(loaded.model, onnx_path)
    except OSError as err:
        raise ExportError(f"cannot write {shown_model(folder / EXPORT_DIR)}/{ONNX_FILE} ({err.strerror}); free "
                          "disk space") from None  # fmt: skip
    difference = max_logit_difference(loaded.model, onnx_path) if check else None
    _refuse_difference(difference, "the ONNX graph's")
    vocab_file = TOKENIZER_JSON if loaded.vocab.kind == "bpe" else VOCAB_TXT
    shutil.copy2(folder / vocab_file, building / vocab_file)
    write_card(folder, read_config(folder))  # a model saved before cards existed gets one now
    shutil.copy2(folder / CARD, building / CARD)
    kept = folder / EXPORT_DIR / HF_DIR
    if kept.is_dir():  # the other format's export stays
        os.replace(kept, building / HF_DIR)
    return difference, ""


def _fill_hf(loaded: LoadedModel, building: Path, check: bool) -> tuple[float | None, str]:
    write_card(loaded.path, read_config(loaded.path))
    try:
        write_hf_folder(loaded, building)
    except OSError as err:
        raise ExportError(f"cannot write {shown_model(building.parent)}/{HF_DIR} ({err.strerror}); free disk "
                          "space") from None  # fmt: skip
    if not check:
        return None, ""
    try:
        result = check_hf(loaded, building)
    except ModelError as err:  # the check's own finding, said as it is
        raise ExportError(str(err)) from None
    except Exception as err:  # noqa: BLE001 - whatever transformers raises, the export is not kept
        raise ExportError(f"transformers could not run the export ({type(err).__name__}: {err}); it was not kept. "
                          "Please report it with the model's config.json and `pip show transformers`") from err  # fmt: skip
    _refuse_difference(result.max_abs_diff, "transformers'")
    (building / CHECKED).write_text(f"{result.max_abs_diff:.3e}\n", encoding="utf-8")  # what `push` requires
    return result.max_abs_diff, result.sample


def _refuse_difference(difference: float | None, whose: str) -> None:
    if difference is not None and not difference <= MAX_ABS_DIFF:
        raise ExportError(
            f"{whose} logits differ from PyTorch's by {difference:.2e} (> {MAX_ABS_DIFF:g}); the export was not "
            "kept. Please report it with the model's config.json"
        )


def _replace_whole(final: Path, fill) -> tuple[float | None, str]:
    """`fill` a folder built beside `final`, then rename it into place only when whole."""
    parent = final.parent
    try:
        parent.mkdir(exist_ok=True)
        remove_export_leftovers(parent)
        building = Path(tempfile.mkdtemp(prefix=".tmp-export-", dir=parent))
    except OSError as err:
        raise ExportError(f"cannot write in {shown_model(parent)} ({err.strerror}); check its permissions and free "
                          "space") from None  # fmt: skip
    try:
        outcome = fill(building)
        for path in building.iterdir():
            if path.is_file():
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
        fsync_dir(building)
        if final.exists():
            old = parent / f".tmp-old-export-{os.getpid()}"
            os.replace(final, old)
            try:
                os.replace(building, final)
            except OSError:
                os.replace(old, final)  # the previous export back in its place
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(building, final)
        fsync_dir(parent)
    finally:
        if building.exists():
            if (building / HF_DIR).is_dir() and final.exists() and not (final / HF_DIR).exists():
                os.replace(building / HF_DIR, final / HF_DIR)  # a failed ONNX export gives the other one back
            shutil.rmtree(building, ignore_errors=True)
    return outcome


def ready_export(name_or_path: str | Path | None, models_root: str | Path = "models", log=lambda line: None) -> Path:
    """The model's `transformers` folder, exported and checked first when missing or older than its weights."""
    folder = resolve_model(str(name_or_path) if name_or_path else None, models_root)
    export = folder / EXPORT_DIR / HF_DIR
    checked = export / CHECKED
    if checked.is_file() and checked.stat().st_mtime >= (folder / WEIGHTS).stat().st_mtime:
        return export
    log(f"exporting {folder.name} for transformers (checked against PyTorch first)...")
    return export_model(folder, models_root, fmt="hf", check=True).folder

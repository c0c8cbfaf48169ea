"""Loss per character of a saved model on any text: the units every model is compared in.

    result = evaluate(loaded, text=None, data_dir="dataset")   # the validation split
    print(result.line())   # evaluate nats_per_char=1.4321 bits_per_char=2.0661 chars=111540

The model's context slides over the text by `stride` tokens: the first window predicts all its tokens but
the first, each later window only its last `stride`, so every token is predicted once and, past the first
window, with at least `block_size - stride` tokens before it. The loss is the summed negative log-likelihood
of the predicted tokens divided by the characters they spell (for a character model, every character but
the first).
"""

from __future__ import annotations

import itertools
import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core import checkpoint as ckpt
from core.checkpoint import LoadedModel
from core.config import ModelConfig
from core.data import DataError, Dataset, line_chunks
from core.model import GPT
from core.variants import SOURCE_JSON, open_dataset, tokenized_as, variant_dir
from core.vocab import describe_chars


@dataclass
class Evaluation:
    nats: float  # summed over the predicted tokens
    chars: int  # characters of the text
    predicted_chars: int  # characters the predicted tokens spell

    @property
    def nats_per_char(self) -> float:
        return self.nats / self.predicted_chars

    @property
    def bits_per_char(self) -> float:
        return self.nats_per_char / math.log(2)

    def line(self) -> str:
        """The last line `python app.py evaluate` prints, for scripts."""
        return (
            f"evaluate nats_per_char={self.nats_per_char:.4f} bits_per_char={self.bits_per_char:.4f} chars={self.chars}"
        )


def _windows(n_tokens: int, block: int, stride: int) -> Iterator[tuple[int, int]]:
    """(first token read, targets newly predicted) of each window over `n_tokens` (see the module)."""
    length = min(block, n_tokens - 1)
    yield 0, length
    covered = length  # targets 1..covered are predicted
    while covered < n_tokens - 1:
        end = min(covered + stride, n_tokens - 1)
        yield end - length, end - covered
        covered = end


@torch.no_grad()
def sliding_nll(model, ids: np.ndarray, stride: int, batch_size: int = 32, on_progress=None) -> tuple[float, int]:
    """(summed nats, tokens predicted) of `ids` (an array or a memory map, read a batch of windows at a time),
    the model's context slid by `stride` (see the module)."""
    block = model.config.block_size
    if not 0 < stride <= block:
        raise ValueError(f"stride must be between 1 and the context ({block}), got {stride}")
    if len(ids) < 2:
        raise DataError("the text is too short to evaluate: it needs at least 2 tokens")
    device = next(model.parameters()).device
    length = min(block, len(ids) - 1)
    total_windows = 1 + math.ceil(max(0, len(ids) - 1 - length) / stride)
    windows = _windows(len(ids), block, stride)
    was_training = model.training
    model.eval()
    total, predicted, done = 0.0, 0, 0
    while group := list(itertools.islice(windows, batch_size)):
        rows = np.stack([np.asarray(ids[start : start + length + 1], dtype=np.int64) for start, _ in group])
        x, y = torch.from_numpy(rows[:, :-1]).to(device), torch.from_numpy(rows[:, 1:]).to(device)
        logits, _ = model(x)
        nll = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none")
        new = torch.tensor([fresh for _, fresh in group], device=device)
        predicts = torch.arange(length, device=device) >= (length - new)[:, None]  # each window's last `new`
        total += nll.view(len(group), length)[predicts].sum().item()
        predicted += int(new.sum())
        done += len(group)
        if on_progress:
            on_progress(done, total_windows)
    model.train(was_training)
    return total, predicted


def encode_text_file(vocab, path: Path, out: Path) -> int:
    """Write the token ids of the UTF-8 text file `path` to `out` a chunk at a time; returns its characters.
    Only a regular file: a device or a pipe never ends."""
    if not path.is_file():
        raise DataError(
            f"{path} {'does not exist' if not path.exists() else 'is not a regular file'}; give a text file"
        )
    chars, missing = 0, set()
    with open(out, "wb") as handle:
        try:
            for raw in line_chunks(path):
                text = raw.replace("\r\n", "\n").replace("\r", "\n")  # line ends as prepare writes them
                missing = vocab.unknown(text)
                if missing:
                    break
                handle.write(vocab.encode_array(text).tobytes())
                chars += len(text)
        except UnicodeDecodeError as err:
            raise DataError(f"{path} is not UTF-8 text (near byte {err.start} of a chunk); convert it first") from None
    if missing:
        raise DataError(
            f"{path} holds {len(missing)} character(s) this model has never seen ({describe_chars(missing, 5)}); "
            "a character model cannot score them"
        )
    return chars


def _read_as_model(data_dir: str | Path, loaded: LoadedModel) -> Dataset:
    """`data_dir` with the model's vocabulary: as prepared, a study's variant of it, or (a model built on a base
    that grew its characters, or a BPE of another tokenizer) the text read with the model's own."""
    vocab, dataset = loaded.vocab, Dataset(data_dir)
    cached = variant_dir(data_dir, vocab.kind, len(vocab))  # a study's model may be trained on a variant
    if dataset.vocab != vocab and cached != Path(data_dir) and (cached / SOURCE_JSON).is_file():
        dataset = open_dataset(cached)
    readable = dataset.vocab.kind == vocab.kind and (
        vocab.kind == "bpe" or set(dataset.vocab.chars) <= set(vocab.chars)
    )
    if dataset.vocab != vocab and readable:
        dataset = open_dataset(tokenized_as(data_dir, vocab))
    if dataset.vocab != vocab:
        raise DataError(
            f"{data_dir} was prepared with another vocabulary than model {loaded.name}; evaluate it on the "
            "data it was trained on, or give --text FILE"
        )
    return dataset


def evaluate(
    loaded: LoadedModel,
    *,
    text: str | None = None,
    text_file: str | Path | None = None,
    data_dir: str | Path = "dataset",
    stride: int = 0,
    on_progress=None,
) -> Evaluation:
    """Loss per character on `text`, on the text file `text_file` (read a chunk at a time), or on the validation
    split of `data_dir` (which must share the model's vocabulary). `stride` 0 slides by half the context."""
    vocab = loaded.vocab
    if text is None and text_file is None:
        ids = np.asarray(_read_as_model(data_dir, loaded).tokens["val"])
    elif text is not None:
        missing = vocab.unknown(text)  # none for a byte-level BPE
        if missing:
            raise DataError(
                f"the text holds {len(missing)} character(s) model {loaded.name} has never seen "
                f"({describe_chars(missing, 5)}); a character model cannot score them"
            )
        ids = vocab.encode_array(text)
    if text_file is None:
        return score_ids(loaded.model, vocab, ids, stride, on_progress)
    with tempfile.TemporaryDirectory(prefix="evaluate-") as scratch:
        encoded = Path(scratch) / "ids.bin"
        encode_text_file(vocab, Path(text_file), encoded)
        ids = np.memmap(encoded, dtype=vocab.dtype, mode="r") if encoded.stat().st_size else np.zeros(0, vocab.dtype)
        return score_ids(loaded.model, vocab, ids, stride, on_progress)


def score_ids(model, vocab, ids: np.ndarray, stride: int = 0, on_progress=None) -> Evaluation:
    """Loss per character of `model` on token ids `ids`: what `evaluate` prints, and what training records of
    the weights it keeps (so the card and `evaluate` say one number). `stride` 0 slides by half the context."""
    stride = stride or max(1, model.config.block_size // 2)
    nats, _ = sliding_nll(model, ids, stride, on_progress=on_progress)
    first = int(vocab.char_counts(np.asarray(ids[:1]))[0])
    chars = _spelled(vocab, ids)  # every token but the first is predicted once
    if chars == first:  # two byte tokens of one character: the second spells none of it
        raise DataError("the text is too short to evaluate: its tokens after the first spell no character")
    return Evaluation(nats=nats, chars=chars, predicted_chars=chars - first)


def _spelled(vocab, ids: np.ndarray, piece: int = 1 << 22) -> int:
    """Characters `ids` spell, a piece at a time (a memory map of a whole book stays on disk)."""
    return sum(int(vocab.char_counts(np.asarray(ids[i : i + piece])).sum()) for i in range(0, len(ids), piece))


@torch.no_grad()
def split_loss(
    model: GPT, tokens, batch_size: int = 64, device: torch.device | str | None = None, max_chars: int = 0
) -> float:
    """Mean loss per character over a whole split: consecutive windows of the model's context, each
    character predicted once (the first of each window with less context). Use this, not `estimate_loss`,
    to compare models: random batches of two runs of one recipe differ by ~0.03. With `max_chars`, windows
    evenly spread over the split, the same for every model of that context."""
    block = model.config.block_size
    device = device or next(model.parameters()).device
    data = torch.from_numpy(tokens.astype("int64"))
    windows = (len(data) - 1) // block
    if windows < 1:
        raise DataError(f"the split has {len(data)} characters, fewer than a context of {block} + 1")
    x_all = data[: windows * block].view(windows, block)
    y_all = data[1 : windows * block + 1].view(windows, block)
    if max_chars and max_chars // block < windows:
        keep = torch.linspace(0, windows - 1, max(1, max_chars // block)).long()
        x_all, y_all, windows = x_all[keep], y_all[keep], len(keep)
    was_training = model.training
    model.eval()
    total = 0.0
    for start in range(0, windows, batch_size):
        x, y = x_all[start : start + batch_size].to(device), y_all[start : start + batch_size].to(device)
        _, loss = model(x, y)
        total += loss.item() * x.numel()
    model.train(was_training)
    return total / (windows * block)


def score_kept_weights(weights: dict[str, torch.Tensor], model_config: ModelConfig, dataset: Dataset, device):
    """The saved weights' loss per character on the whole validation split, as `evaluate` computes it."""
    with torch.random.fork_rng(devices=[]):  # building it draws initial weights: the run's random state stays
        model = GPT(model_config)
    ckpt.load_weights(model, weights, Path("the kept weights"))
    return score_ids(model.to(device), dataset.vocab, dataset.tokens["val"])

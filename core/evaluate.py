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

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.checkpoint import LoadedModel
from core.data import DataError, Dataset
from core.variants import SOURCE_JSON, open_dataset, variant_dir
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


@torch.no_grad()
def sliding_nll(model, ids: np.ndarray, stride: int, batch_size: int = 32, on_progress=None) -> tuple[float, int]:
    """(summed nats, tokens predicted) of `ids`, the model's context slid by `stride` (see the module)."""
    block = model.config.block_size
    if not 0 < stride <= block:
        raise ValueError(f"stride must be between 1 and the context ({block}), got {stride}")
    if len(ids) < 2:
        raise DataError("the text is too short to evaluate: it needs at least 2 characters")
    data = torch.from_numpy(np.asarray(ids, dtype=np.int64))
    device = next(model.parameters()).device
    # every window reads `length` tokens and predicts the targets past the previous window's last one
    length = min(block, len(data) - 1)
    starts, news, covered = [0], [length], length  # targets 1..covered are predicted
    while covered < len(data) - 1:
        end = min(covered + stride, len(data) - 1)
        starts.append(end - length)
        news.append(end - covered)
        covered = end
    was_training = model.training
    model.eval()
    total, predicted = 0.0, 0
    for first in range(0, len(starts), batch_size):
        group = range(first, min(first + batch_size, len(starts)))
        x = torch.stack([data[starts[k] : starts[k] + length] for k in group]).to(device)
        y = torch.stack([data[starts[k] + 1 : starts[k] + 1 + length] for k in group]).to(device)
        logits, _ = model(x)
        nll = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none")
        new = torch.tensor([news[k] for k in group], device=device)
        predicts = torch.arange(length, device=device) >= (length - new)[:, None]  # each window's last `new`
        total += nll.view(len(group), length)[predicts].sum().item()
        predicted += int(new.sum())
        if on_progress:
            on_progress(group[-1] + 1, len(starts))
    model.train(was_training)
    return total, predicted


def evaluate(
    loaded: LoadedModel,
    *,
    text: str | None = None,
    data_dir: str | Path = "dataset",
    stride: int = 0,
    on_progress=None,
) -> Evaluation:
    """Loss per character on `text`, or on the validation split of `data_dir` (which must share the model's
    vocabulary). `stride` 0 slides by half the context."""
    vocab = loaded.vocab
    stride = stride or max(1, loaded.model.config.block_size // 2)
    if text is None:
        dataset = Dataset(data_dir)
        cached = variant_dir(data_dir, vocab.kind, len(vocab))  # a study's model may be trained on a variant
        if dataset.vocab != vocab and cached != Path(data_dir) and (cached / SOURCE_JSON).is_file():
            dataset = open_dataset(cached)
        if dataset.vocab != vocab:
            raise DataError(
                f"{data_dir} was prepared with another vocabulary than model {loaded.name}; evaluate it on the "
                "data it was trained on, or give --text FILE"
            )
        ids = np.asarray(dataset.tokens["val"])
    else:
        missing = vocab.unknown(text)  # none for a byte-level BPE
        if missing:
            raise DataError(
                f"the text holds {len(missing)} character(s) model {loaded.name} has never seen "
                f"({describe_chars(missing, 5)}); a character model cannot score them"
            )
        ids = vocab.encode_array(text)
    nats, _ = sliding_nll(loaded.model, ids, stride, on_progress=on_progress)
    spelled = vocab.char_counts(ids)  # every token but the first is predicted once
    return Evaluation(nats=nats, chars=int(spelled.sum()), predicted_chars=int(spelled[1:].sum()))

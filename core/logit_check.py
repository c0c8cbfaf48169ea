"""Our model's logits against another runtime's (onnxruntime, transformers) over random windows: what an export is
checked on before it is kept."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from core.model import GPT

NOT_FINITE = ("the model's logits are not finite numbers (NaN or infinite weights); the export was not kept: "
              "retrain or restore the model")  # fmt: skip


def worst_logit_difference(
    model: GPT,
    theirs: Callable[[torch.Tensor], np.ndarray | torch.Tensor],
    whose: str,
    error: type[Exception],
    seed: int = 0,
) -> float:
    """The largest absolute difference between `model`'s logits and `theirs` over windows of several batch sizes and
    lengths, the full context included; `error` for logits of another shape or not finite."""
    generator = torch.Generator().manual_seed(seed)
    block, vocab = model.config.block_size, model.config.vocab_size
    worst = 0.0
    for batch, length in ((1, 1), (1, block), (3, max(1, block // 2)), (2, block)):
        ids = torch.randint(0, vocab, (batch, length), generator=generator)
        with torch.no_grad():
            ours, got = model(ids)[0].float(), torch.as_tensor(theirs(ids)).float()
        if got.shape != ours.shape:
            raise error(f"{whose} returned logits of shape {tuple(got.shape)}, PyTorch {tuple(ours.shape)}")
        if not (torch.isfinite(got).all() and torch.isfinite(ours).all()):
            raise error(NOT_FINITE)
        worst = max(worst, float((got - ours).abs().max()))
    return worst

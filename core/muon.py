"""Muon whose Newton–Schulz iteration runs in a precision the device multiplies natively.

torch.optim.Muon always orthogonalises in bf16, which a CPU without native bf16 matmuls (AVX2 only, most
desktops and many servers) emulates many times slower than fp32 (RESULTS.md, Training recipe). Same update
otherwise, and the same state, so checkpoints load in either.
"""

from __future__ import annotations

import torch
from torch.optim._muon import _adjust_lr


def orthogonalize(
    grad: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float, dtype: torch.dtype
) -> torch.Tensor:
    """The quintic Newton–Schulz iteration of torch.optim.Muon (Keller Jordan's), in `dtype`, of one matrix
    or of a stack of same-shape matrices (each normalised and orthogonalised on its own)."""
    a, b, c = coefficients
    tall = grad.size(-2) > grad.size(-1)
    x = grad.to(dtype)
    if tall:
        x = x.mT
    if x.dim() == 2:  # as torch's, operation for operation
        x = x / x.norm().clamp(min=eps)  # spectral norm at most 1
        for _ in range(steps):
            gram = x @ x.T
            x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    else:
        x = x / torch.linalg.matrix_norm(x, keepdim=True).clamp(min=eps)
        for _ in range(steps):
            gram = x @ x.mT
            x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


class Muon(torch.optim.Muon):
    """torch.optim.Muon with its Newton–Schulz iteration in `ns_dtype` (bf16 as torch's, or fp32), run once
    for all the matrices of a shape: a model's layers repeat a few shapes, and on 2 CPU cores the per-matrix
    calls of small matrices cost more than their arithmetic."""

    def __init__(self, params, *, ns_dtype: torch.dtype = torch.bfloat16, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, buffers = [], [], []
            self._init_group(group, params, grads, buffers)
            lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
            updates = []
            for grad, buffer in zip(grads, buffers):
                buffer.lerp_(grad, 1 - momentum)
                updates.append(grad.lerp(buffer, momentum) if group["nesterov"] else buffer)
            by_shape: dict[torch.Size, list[int]] = {}
            for index, update in enumerate(updates):
                by_shape.setdefault(update.shape, []).append(index)
            ns = (group["ns_coefficients"], group["ns_steps"], group["eps"], self.ns_dtype)
            for shape, indices in by_shape.items():
                same = [updates[i] for i in indices]  # a lone matrix goes through torch's 2-D operations
                orthos = [orthogonalize(same[0], *ns)] if len(same) == 1 else orthogonalize(torch.stack(same), *ns)
                rate = _adjust_lr(lr, group["adjust_lr_fn"], shape)
                for index, ortho in zip(indices, orthos):
                    params[index].mul_(1 - lr * decay)
                    params[index].add_(ortho, alpha=-rate)
        return loss

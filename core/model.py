"""A decoder-only Transformer in the style of nanoGPT, with a KV cache used only by generation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.config import ModelConfig


@dataclass
class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated to the context length."""

    keys: torch.Tensor  # (n_layer, B, n_head, block_size, head_dim)
    values: torch.Tensor
    length: int = 0

    @classmethod
    def empty(cls, config: ModelConfig, batch: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        shape = (config.n_layer, batch, config.n_head, config.block_size, config.n_embd // config.n_head)
        return cls(torch.empty(shape, device=device, dtype=dtype), torch.empty(shape, device=device, dtype=dtype))


def project(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)`, faster for the single row of a CPU decoding step.

    For one row, MKL's fp32 matrix-vector product runs on one thread (~11 GB/s of weights on this 2-core
    machine). Split into a batch of row blocks, the same product runs on every thread (~40 GB/s), which
    makes a 6x384 model's cached decoding step about 2x faster (benchmarks/generate_speed.py). The
    column's strides (0, 1, in_features) matter: a contiguous column takes a path as slow as the GEMV.
    """
    if x.numel() != x.shape[-1] or x.device.type != "cpu" or torch.is_grad_enabled():
        return layer(x)  # training and batched forwards: the normal path, nothing computed for them
    parts = math.gcd(layer.out_features, torch.get_num_threads())
    if parts < 2:
        return layer(x)
    blocks = layer.weight.view(parts, layer.out_features // parts, layer.in_features)
    column = x.reshape(-1).as_strided((parts, layer.in_features, 1), (0, 1, layer.in_features))
    y = torch.bmm(blocks, column).view(x.shape[:-1] + (layer.out_features,))
    return y + layer.bias if layer.bias is not None else y


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = project(self.qkv, x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        if cache is None:
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
            )
        else:
            start = cache.length
            cache.keys[layer, :, :, start : start + T] = k
            cache.values[layer, :, :, start : start + T] = v
            k_all = cache.keys[layer, :, :, : start + T]
            v_all = cache.values[layer, :, :, : start + T]
            if T == 1:
                y = F.scaled_dot_product_attention(q, k_all, v_all)
            else:  # prefill after `start` cached tokens: token i sees cached tokens and new tokens <= i
                mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
                y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)
        return self.resid_dropout(project(self.proj, y.transpose(1, 2).reshape(B, T, C)))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(project(self.proj, F.gelu(project(self.fc, x))))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        if config.vocab_size < 1:
            raise ValueError("ModelConfig.vocab_size must be set from the dataset's vocabulary")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        self.apply(self._init_weights)
        for name, param in self.named_parameters():
            if name.endswith("proj.weight"):  # residual projections, scaled by depth (GPT-2)
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        total = sum(p.numel() for p in self.parameters())
        return total - self.wpe.weight.numel() if non_embedding else total

    def flops_per_token(self, context: int | None = None) -> float:
        """Training FLOPs per token (forward + backward), as in the PaLM paper's appendix B."""
        cfg = self.config
        T = context or cfg.block_size
        return 6 * self.num_params() + 12 * cfg.n_layer * cfg.n_embd * T

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every position (or the last only, when generating with a cache) and the loss."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} exceeds the context of {self.config.block_size}")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer)
        x = self.ln_f(x)
        if cache is not None:
            cache.length += T
        if targets is None:
            return self.lm_head(x[:, -1:, :] if cache is not None else x), None
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def optimizer(self, lr: float, weight_decay: float, betas: tuple[float, float], device: torch.device):
        """AdamW with weight decay on matrices only (not biases, LayerNorm or nothing 1-D).

        Fused on CUDA and on CPU: on 2 CPU cores the fused step took 0.7 ms against 2.7 ms for `foreach`
        (4x128 model) and 4 ms against 33 ms (6x384), see benchmarks/train_speed.py.
        """
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = device.type in ("cuda", "cpu")
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None, foreach=None if fused else True)


def flops_per_token(config: ModelConfig) -> float:
    """`GPT.flops_per_token` of a config, counted on the meta device, so no memory is allocated."""
    with torch.device("meta"):
        return GPT(config).flops_per_token()

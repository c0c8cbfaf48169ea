"""nanoGPT's arithmetic as nanoGPT runs it on a CPU, written for the speed benchmarks to stand beside ours.

The model of karpathy/nanoGPT's model.py (learned positions, LayerNorm, GELU MLP, tied head, causal attention
through scaled_dot_product_attention) trained by a loop like its train.py on a CPU: float32, eager (compile
off, as its README's CPU command sets), AdamW with weight decay on matrices only and not fused (nanoGPT fuses it
only on CUDA), gradient clipping at 1.0, a cosine schedule, and random windows read from a memory-mapped uint16
file each step. Generation as nanoGPT's `generate`: the whole context re-read for each new character.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class NanoConfig:
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    vocab_size: int = 65
    dropout: float = 0.0
    bias: bool = False  # nanoGPT's train.py default


class LayerNorm(nn.Module):
    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class SelfAttention(nn.Module):
    def __init__(self, c: NanoConfig):
        super().__init__()
        self.c_attn = nn.Linear(c.n_embd, 3 * c.n_embd, bias=c.bias)
        self.c_proj = nn.Linear(c.n_embd, c.n_embd, bias=c.bias)
        self.n_head, self.n_embd, self.dropout = c.n_head, c.n_embd, c.dropout

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, c: NanoConfig):
        super().__init__()
        self.ln_1, self.attn = LayerNorm(c.n_embd, c.bias), SelfAttention(c)
        self.ln_2 = LayerNorm(c.n_embd, c.bias)
        self.c_fc, self.c_proj = (
            nn.Linear(c.n_embd, 4 * c.n_embd, bias=c.bias),
            nn.Linear(4 * c.n_embd, c.n_embd, bias=c.bias),
        )

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x))))


class NanoGPT(nn.Module):
    def __init__(self, c: NanoConfig):
        super().__init__()
        self.config = c
        self.wte, self.wpe = nn.Embedding(c.vocab_size, c.n_embd), nn.Embedding(c.block_size, c.n_embd)
        self.h = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = LayerNorm(c.n_embd, c.bias)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))

    @staticmethod
    def _init(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx, targets=None):
        T = idx.size(1)
        x = self.wte(idx) + self.wpe(torch.arange(T, dtype=torch.long, device=idx.device))
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None
        logits = self.lm_head(x)
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)

    def optimizer(self, weight_decay: float, lr: float, betas: tuple[float, float]) -> torch.optim.AdamW:
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=lr, betas=betas)  # fused only on CUDA in nanoGPT

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0):
        for _ in range(max_new_tokens):
            context = idx if idx.size(1) <= self.config.block_size else idx[:, -self.config.block_size :]
            logits, _ = self(context)
            probs = F.softmax(logits[:, -1, :] / temperature, dim=-1)
            idx = torch.cat((idx, torch.multinomial(probs, num_samples=1)), dim=1)
        return idx


def train_for(tokens: np.ndarray, config: NanoConfig, batch_size: int, seconds: float, seed: int = 1337,
              lr: float = 1e-3, max_iters: int = 2000) -> dict:  # fmt: skip
    """nanoGPT's training loop for `seconds` of wall time (no evaluation): steps done and median step time."""
    torch.manual_seed(seed)
    model = NanoGPT(config)
    optimizer = model.optimizer(0.1, lr, (0.9, 0.99))
    data = np.asarray(tokens, dtype=np.uint16)
    block, warmup, min_lr = config.block_size, 100, lr / 10
    step_times, step, started = [], 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step_started = time.perf_counter()
        if step < warmup:
            rate = lr * (step + 1) / (warmup + 1)
        else:
            ratio = min(1.0, (step - warmup) / max(1, max_iters - warmup))
            rate = min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)
        for group in optimizer.param_groups:
            group["lr"] = rate
        ix = torch.randint(len(data) - block, (batch_size,))
        x = torch.stack([torch.from_numpy(data[i : i + block].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + block].astype(np.int64)) for i in ix])
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # nanoGPT reads the loss every log_interval step; on a CPU this syncs nothing
        step += 1
        step_times.append(time.perf_counter() - step_started)
    wall = time.perf_counter() - started
    return {"steps": step, "wall_s": wall, "step_ms_median": 1e3 * float(np.median(step_times[10:] or step_times)),
            "loss": float(loss.item())}  # fmt: skip

"""A decoder-only Transformer in the style of nanoGPT, with a KV cache used only by generation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.config import MUON_LR, ModelConfig
from core.device import has_native_bf16
from core.muon import Muon


@dataclass
class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated to the context length."""

    keys: torch.Tensor  # (n_layer, B, n_head, block_size, head_dim)
    values: torch.Tensor
    length: int = 0
    _first_rows: list[tuple[torch.Tensor, torch.Tensor]] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def empty(cls, config: ModelConfig, batch: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        shape = (config.n_layer, batch, config.n_head, config.block_size, config.n_embd // config.n_head)
        return cls(torch.empty(shape, device=device, dtype=dtype), torch.empty(shape, device=device, dtype=dtype))

    def first_rows(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's (keys, values) of the first sequence, (n_head, block_size, head_dim): views made once,
        for the decoding step of one sequence."""
        if self._first_rows is None:
            self._first_rows = list(zip(self.keys[:, 0].unbind(0), self.values[:, 0].unbind(0)))
        return self._first_rows

    def slide(self, drop: int, rope_cos: torch.Tensor, rope_sin: torch.Tensor) -> None:
        """Forget the oldest `drop` tokens and move the rest to the front, for a model with rotary positions
        (`rope_cos`, `rope_sin`: its (block, D/2) tables). Their keys turn back by `drop` positions: scores
        depend only on the distance between a query's position and a key's, so every kept key scores as
        before, and new tokens take the positions freed at the end. (Learned positions are absolute: such a
        cache cannot slide; its tokens are encoded again.)"""
        if not 0 < drop <= self.length:
            raise ValueError(f"cannot drop {drop} of {self.length} cached tokens")
        kept = self.length - drop
        cos, sin = rope_cos[drop].to(self.keys.dtype), rope_sin[drop].to(self.keys.dtype)
        self.keys[:, :, :, :kept] = rotate(self.keys[:, :, :, drop : self.length], cos, -sin)  # a new tensor
        self.values[:, :, :, :kept] = self.values[:, :, :, drop : self.length].clone()  # the ranges overlap
        self.length = kept


FEW_ROWS = 8  # up to this many rows (a decoding step and its guesses), `project` picks its own product


def project(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)`, faster for the few rows of a CPU decoding step (`few_rows_product`)."""
    rows = x.numel() // x.shape[-1]
    if torch.compiler.is_compiling() or x.device.type != "cpu" or torch.is_grad_enabled() or rows > FEW_ROWS:
        return layer(x)  # training, batched forwards, compiled and exported graphs: the normal path
    y = few_rows_product(layer.weight, x.reshape(rows, -1)).reshape(x.shape[:-1] + (layer.out_features,))
    return y + layer.bias if layer.bias is not None else y


def few_rows_product(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`x @ weight.T` for the rows of x (T, in) on CPU, each way the fastest for its number of rows: MKL's
    one-row product runs on one thread, so one row is split into row blocks run as `bmm` on every thread (the
    column's strides (0, 1, in_features) matter: a contiguous one is as slow); 2-8 rows (guesses) read the
    weights once as `weight @ x.T`, where `F.linear`'s small GEMM is slower (RESULTS.md, Decoding speed)."""
    rows, (out_features, in_features) = x.shape[0], weight.shape
    if rows > FEW_ROWS:
        return F.linear(x, weight)
    if rows > 1:
        return torch.mm(weight, x.t()).t()
    parts = math.gcd(out_features, torch.get_num_threads())
    if parts < 2:
        return F.linear(x, weight)
    blocks = weight.view(parts, out_features // parts, in_features)
    column = x.reshape(-1).as_strided((parts, in_features, 1), (0, 1, in_features))
    return torch.bmm(blocks, column).view(1, out_features)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of `x` (..., T, D) with the (T, D/2) angles of its positions."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float) -> torch.Tensor:
    """Causal scaled-dot-product attention; on a CPU always in float32, where PyTorch's bf16 flash kernel is the
    slower by far (RESULTS.md, Against nanoGPT); the matrix products around it stay in bf16."""
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
    with torch.autocast("cpu", enabled=False):  # (with QK-norm, q and k come out of it in float32, v in bf16)
        y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), dropout_p=dropout, is_causal=True)
    return y.to(v.dtype)


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd)
    return nn.LayerNorm(config.n_embd, bias=config.bias)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head = config.n_head
        self.qk_norm = config.qk_norm
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, rope: tuple | None = None
    ) -> torch.Tensor:
        B, T, C = x.shape
        qkv = project(self.qkv, x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        if self.qk_norm or rope is not None:  # queries and keys together: half the ops of a decoding step
            qk = qkv[:2]
            if self.qk_norm:
                qk = F.rms_norm(qk, (qk.size(-1),))
            if rope is not None:
                qk = rotate(qk, *rope)
            (q, k), v = qk.unbind(0), qkv[2]
        else:  # the classic model's graph as it was: a different one changes its gradients' rounding
            q, k, v = qkv.unbind(0)
        if cache is None:
            y = causal_attention(q, k, v, self.dropout if self.training else 0.0)
        else:
            start = cache.length
            cache.keys[layer, :, :, start : start + T] = k
            cache.values[layer, :, :, start : start + T] = v
            k_all = cache.keys[layer, :, :, : start + T]
            v_all = cache.values[layer, :, :, : start + T]
            if T == 1:  # one query: two small matmuls beat SDPA's CPU kernel (46 us a call, 6x384) at decoding
                y = (q @ k_all.transpose(-2, -1) * q.size(-1) ** -0.5).softmax(dim=-1) @ v_all
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
        self.relu2 = config.mlp == "relu2"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = project(self.fc, x)
        h = F.relu(h).square() if self.relu2 else F.gelu(h)
        return self.dropout(project(self.proj, h))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, rope: tuple | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer, rope)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        if config.vocab_size < 1:
            raise ValueError("ModelConfig.vocab_size must be set from the dataset's vocabulary")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        # Modules are created in nanoGPT's order, so the classic recipe draws the same initial weights.
        self.wpe = nn.Embedding(config.block_size, config.n_embd) if config.pos_encoding == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_head:
            self.lm_head.weight = self.wte.weight
        if config.pos_encoding == "rope":
            head_size = config.n_embd // config.n_head
            inv_freq = 1.0 / (10000 ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size))
            angles = torch.outer(torch.arange(config.block_size, dtype=torch.float32), inv_freq)
            self.register_buffer("rope_cos", angles.cos(), persistent=False)
            self.register_buffer("rope_sin", angles.sin(), persistent=False)
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
        return total - self.wpe.weight.numel() if non_embedding and self.wpe is not None else total

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
        """Logits for every position (with a cache, the last only: a prompt's; decoding steps after it go
        through `core.decoding.Decoder`) and the loss."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} exceeds the context of {self.config.block_size}")
        rope = None
        if self.wpe is not None:
            x = self.drop(self.wte(idx) + self.wpe(torch.arange(start, start + T, device=idx.device)))
        else:
            x = self.drop(self.wte(idx))
            rope = (self.rope_cos[start : start + T].to(x.dtype), self.rope_sin[start : start + T].to(x.dtype))
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer, rope)
        x = self.ln_f(x)
        if cache is not None:
            cache.length += T
        if targets is None:
            return self.head(x[:, -1:, :] if cache is not None else x), None
        logits = self.head(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def head(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(x)
        cap = self.config.logit_softcap
        return logits if cap is None else cap * torch.tanh(logits / cap)

    def optimizer(
        self,
        lr: float,
        weight_decay: float,
        betas: tuple[float, float],
        device: torch.device,
        kind: str = "adamw",
        muon_lr: float = MUON_LR,
        muon_weight_decay: float = 0.0,
    ) -> torch.optim.Optimizer | CombinedOptimizer:
        """AdamW with weight decay on matrices only (not biases, norms or anything 1-D); with `kind="muon"`,
        Muon for the hidden matrices of the blocks and AdamW for embeddings, head and gains.

        Each param group records its peak learning rate as `peak_lr`, so a schedule scales every group alike.
        AdamW is fused on CUDA and on CPU, where the fused step is several times faster than `foreach`
        (RESULTS.md, train_speed.py).
        """
        params = [p for p in self.parameters() if p.requires_grad]
        hidden = (
            {id(p) for p in self.blocks.parameters() if p.dim() == 2 and p.requires_grad} if kind == "muon" else set()
        )
        if kind == "muon" and not hidden:
            raise ValueError("muon needs 2-D hidden matrices in the blocks; this model has none (use adamw)")
        rest = [p for p in params if id(p) not in hidden]
        groups = [
            {"params": [p for p in rest if p.dim() >= 2], "weight_decay": weight_decay, "peak_lr": lr},
            {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0, "peak_lr": lr},
        ]
        fused = device.type in ("cuda", "cpu")
        adamw = torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None, foreach=None if fused else True)
        if kind != "muon":
            return adamw
        matrices = [p for p in params if id(p) in hidden]
        # Muon's matrices get their own decay: decoupled decay scales with its ~20x larger learning rate.
        ns_dtype = torch.bfloat16 if has_native_bf16(device) else torch.float32
        muon = Muon(
            [{"params": matrices, "peak_lr": muon_lr}], lr=muon_lr, weight_decay=muon_weight_decay, ns_dtype=ns_dtype
        )
        return CombinedOptimizer([adamw, muon])


class CombinedOptimizer:
    """Several optimizers stepped as one, with one state dict (parameter indices numbered across all of them,
    as in a single optimizer), so checkpoints and exact resume work as for AdamW alone."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [group for opt in self.optimizers for group in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        state, groups, offset = {}, [], 0
        for opt in self.optimizers:
            part = opt.state_dict()
            state.update({index + offset: slots for index, slots in part["state"].items()})
            groups += [{**g, "params": [i + offset for i in g["params"]]} for g in part["param_groups"]]
            offset += sum(len(g["params"]) for g in part["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        groups, offset = list(state_dict["param_groups"]), 0
        if len(groups) != len(self.param_groups):
            raise ValueError(
                f"the saved optimizer has {len(groups)} parameter groups, this one {len(self.param_groups)}"
            )
        for opt in self.optimizers:
            mine, groups = groups[: len(opt.param_groups)], groups[len(opt.param_groups) :]
            indices = [i for g in mine for i in g["params"]]
            state = {int(i) - offset: state_dict["state"][i] for i in indices if i in state_dict["state"]}
            opt.load_state_dict(
                {"state": state, "param_groups": [{**g, "params": [i - offset for i in g["params"]]} for g in mine]}
            )
            offset += len(indices)


def flops_per_token(config: ModelConfig) -> float:
    """`GPT.flops_per_token` of a config, counted on the meta device, so no memory is allocated."""
    with torch.device("meta"):
        return GPT(config).flops_per_token()

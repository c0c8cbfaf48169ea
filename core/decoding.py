"""A GPT's cached decoding step as one flat function of its weights.

    step = decoder_for(model)
    logits = step([token, *guesses], cache)     # (rows, vocab); cache.length grows by the rows fed

The arithmetic is that of `GPT.forward` with a cache, every row's logits kept, for the few rows of a decoding
step (a token and its guesses); prompts and refills still go through the model. Why a second path: a small
model's module-by-module step spends more time in Python and in dispatching small ops than in reading its
weights; this path makes far fewer calls into torch. A one-row step also turns its query and key for rotary
positions with one product per layer (a turn built once a step, the attention's scale folded in) and writes
the cache through views made once per cache (RESULTS.md, Decoding speed).

With `half` (sampled replies without guesses, by default; `--exact` turns it off) a one-row step on a CPU
multiplies float16 copies of the weights: half the bytes to read; each product, rounded to float16, goes on in
float32, logits within ~1e-3 of float32's. Everything else stays float32: norms, attention, the cache, and
steps of several rows.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.model import GPT, KVCache, few_rows_product, rotate


@dataclass
class _Norm:
    kind: str
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    eps: float | None

    @classmethod
    def of(cls, module: nn.Module) -> _Norm:
        if isinstance(module, nn.RMSNorm):
            return cls("rmsnorm", module.weight, None, module.eps)
        return cls("layernorm", module.weight, module.bias, module.eps)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "rmsnorm":
            return F.rms_norm(x, x.shape[-1:], self.weight, self.eps)
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)


@dataclass
class _Linear:
    weight: torch.Tensor
    bias: torch.Tensor | None
    half: torch.Tensor | None = None  # a float16 copy of the weight, for one-row products on a CPU

    @classmethod
    def of(cls, module: nn.Linear, half: bool) -> _Linear:
        weight = module.weight.detach()
        half = half and weight.device.type == "cpu" and weight.dtype == torch.float32
        return cls(weight, module.bias, weight.half() if half else None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x @ weight.T (+ bias) for the rows of x (T, in)."""
        if self.half is not None and x.shape[0] == 1:  # half the bytes to read
            y = F.linear(x.half(), self.half).float()
        elif x.device.type == "cpu":
            y = few_rows_product(self.weight, x)
        else:
            y = F.linear(x, self.weight)
        return y if self.bias is None else y + self.bias


@dataclass
class _Layer:
    norm_1: _Norm
    qkv: _Linear
    proj: _Linear
    norm_2: _Norm
    fc: _Linear
    mlp_proj: _Linear


class Decoder:
    """The decoding step of one model, its weights captured when it was built (`decoder_for` rebuilds it
    when they change)."""

    def __init__(self, model: GPT, half: bool = False):
        cfg = model.config
        self.n_head, self.head_size = cfg.n_head, cfg.n_embd // cfg.n_head
        self.qk_norm, self.relu2, self.softcap = cfg.qk_norm, cfg.mlp == "relu2", cfg.logit_softcap

        self.linears: list[_Linear] = []

        def linear(module: nn.Linear) -> _Linear:
            self.linears.append(_Linear.of(module, half))
            return self.linears[-1]

        self.layers = [
            _Layer(
                _Norm.of(b.ln_1), linear(b.attn.qkv), linear(b.attn.proj), _Norm.of(b.ln_2), linear(b.mlp.fc),
                linear(b.mlp.proj),
            )
            for b in model.blocks
        ]  # fmt: skip
        self.wte = model.wte.weight.detach()
        self.wpe = model.wpe.weight.detach() if model.wpe is not None else None
        self.rope = (model.rope_cos, model.rope_sin) if self.wpe is None else None
        if self.rope is not None:  # x @ (diag(cos) + half_turn * sin) rotates x as `rotate` does
            D, like = self.head_size, {"device": self.wte.device, "dtype": self.wte.dtype}
            self.rope_full = tuple(torch.cat((r, r), dim=-1).to(**like) for r in self.rope)  # (block, D)
            self.half_turn = torch.zeros(D, D, **like)
            self.half_turn[D // 2 :, : D // 2] = -torch.eye(D // 2)
            self.half_turn[: D // 2, D // 2 :] = torch.eye(D // 2)
            # queries' rows scaled by 1/sqrt(D), keys' not: the attention's scale folded into the rotation
            self.qk_scale = torch.tensor([D**-0.5, 1.0], **like).view(2, 1, 1)
        self.norm_f, self.head = _Norm.of(model.ln_f), linear(model.lm_head)

    @property
    def half(self) -> bool:
        return self.head.half is not None

    @torch.inference_mode()
    def __call__(self, ids: list[int], cache: KVCache) -> torch.Tensor:
        """Logits (len(ids), vocab) of the tokens `ids` fed after the cache's; each row sees the cache and
        the rows before it. A half-precision step whose logits overflow is taken again in float32, and so
        are all later ones."""
        logits = self._step(ids, cache)
        if self.half and not bool(torch.isfinite(logits).all()):
            for linear in self.linears:
                linear.half = None
            cache.length -= len(ids)
            logits = self._step(ids, cache)
        return logits

    def _rotation(self, position: int) -> torch.Tensor:
        """(2, D, D): the rotary turn of `position` for a query (scaled by 1/sqrt(D)) and a key. One product
        per layer instead of `rotate`'s eight ops, built once per step."""
        cos, sin = (r[position] for r in self.rope_full)
        return (torch.diag(cos) + self.half_turn * sin) * self.qk_scale

    def _step(self, ids: list[int], cache: KVCache) -> torch.Tensor:
        T, start = len(ids), cache.length
        if start + T > cache.keys.size(3):
            raise ValueError(f"sequence of {start + T} exceeds the context of {cache.keys.size(3)}")
        end = start + T
        x = self.wte[ids]
        if self.wpe is not None:
            x = x + self.wpe[start:end]
        elif T == 1:
            turn = self._rotation(start)  # (2, D, D)
        else:
            cos, sin = (r[start:end].to(x.dtype) for r in self.rope)
        mask = None
        if T > 1:  # row i sees the cache and rows <= i
            mask = torch.ones(T, end, dtype=torch.bool, device=x.device).tril(diagonal=start).logical_not()
        H, D = self.n_head, self.head_size
        for layer, (keys, values) in zip(self.layers, cache.first_rows()):
            qkv = layer.qkv(layer.norm_1(x)).view(T, 3, H, D).permute(1, 2, 0, 3)  # (3, H, T, D)
            qk = qkv[:2]
            if self.qk_norm:
                qk = F.rms_norm(qk, (D,))
            if self.wpe is None and T == 1:  # times its position's turn; the query comes out scaled
                q, k = torch.bmm(qk.view(2, H, D), turn).view(2, H, 1, D).unbind(0)
            elif self.wpe is None:
                q, k = rotate(qk, cos, sin).unbind(0)
                q = q * D**-0.5
            else:
                q, k = qk.unbind(0)
            keys[:, start:end] = k
            values[:, start:end] = qkv[2]
            scores = q @ keys[:, :end].transpose(-2, -1)  # (H, T, end)
            if self.wpe is not None:
                scores = scores * D**-0.5
            if mask is not None:
                scores = scores.masked_fill(mask, float("-inf"))
            y = scores.softmax(dim=-1) @ values[:, :end]  # (H, T, D)
            y = y.view(1, H * D) if T == 1 else y.transpose(0, 1).reshape(T, H * D)
            x = x + layer.proj(y)
            h = layer.fc(layer.norm_2(x))
            h = F.relu(h).square() if self.relu2 else F.gelu(h)
            x = x + layer.mlp_proj(h)
        cache.length = end
        logits = self.head(self.norm_f(x))
        return logits if self.softcap is None else self.softcap * torch.tanh(logits / self.softcap)


_decoders: weakref.WeakKeyDictionary[GPT, dict[bool, tuple[tuple, Decoder]]] = weakref.WeakKeyDictionary()


def decoder_for(model: GPT, half: bool = False) -> Decoder:
    """The model's `Decoder` (float32 or `half`: both are kept, for chats that use both), built once and
    rebuilt after its weights change (training steps between the samples of a run; each version counter
    moves on every in-place update)."""
    key = tuple((p.device, p.dtype, 0 if p.is_inference() else p._version) for p in model.parameters())
    kept = _decoders.setdefault(model, {})
    if half not in kept or kept[half][0] != key:
        kept[half] = (key, Decoder(model, half))
    return kept[half][1]

"""A chargpt-workbench model for Hugging Face `transformers` (loaded with `trust_remote_code=True`).

The model is the one `core/model.py` trains, written again with nothing but PyTorch and `transformers`, so
that its logits match the original's: RMS or layer norm, rotary or learned positions, queries and keys
RMS-normalised per head, a squared-ReLU or GELU MLP, a tied or separate head, an optional tanh soft cap on
the logits. No architecture `transformers` ships has that combination (a squared-ReLU MLP without a gate
beside weightless per-head QK-norm), hence this file. Generation reads the whole window again at each
token (no cache): these models are small, and the window slides past the context as the workbench's does.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput


class ChargptConfig(PreTrainedConfig):
    model_type = "chargpt"
    attribute_map = {
        "hidden_size": "n_embd",
        "max_position_embeddings": "block_size",
        "num_attention_heads": "n_head",
        "num_hidden_layers": "n_layer",
    }

    def __init__(self, vocab_size=65, n_layer=4, n_head=4, n_embd=128, block_size=64, bias=False,
                 pos_encoding="rope", norm="rmsnorm", mlp="relu2", qk_norm=True, logit_softcap=None,
                 tie_word_embeddings=True, **kwargs):  # fmt: skip
        self.vocab_size, self.n_layer, self.n_head, self.n_embd = vocab_size, n_layer, n_head, n_embd
        self.block_size, self.bias, self.pos_encoding, self.norm = block_size, bias, pos_encoding, norm
        self.mlp, self.qk_norm, self.logit_softcap = mlp, qk_norm, logit_softcap
        self.tie_word_embeddings = tie_word_embeddings
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


def _norm(config: ChargptConfig) -> nn.Module:
    return nn.RMSNorm(config.n_embd) if config.norm == "rmsnorm" else nn.LayerNorm(config.n_embd, bias=config.bias)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Attention(nn.Module):
    def __init__(self, config: ChargptConfig):
        super().__init__()
        self.n_head, self.qk_norm = config.n_head, config.qk_norm
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.qk_norm:
            q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))
        if rope is not None:
            q, k = _rotate(q, *rope), _rotate(k, *rope)
        y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True).to(v.dtype)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: ChargptConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.relu2 = config.mlp == "relu2"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        return self.proj(F.relu(h).square() if self.relu2 else F.gelu(h))


class Block(nn.Module):
    def __init__(self, config: ChargptConfig):
        super().__init__()
        self.ln_1, self.attn, self.ln_2, self.mlp = _norm(config), Attention(config), _norm(config), MLP(config)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rope)
        return x + self.mlp(self.ln_2(x))


class ChargptForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = ChargptConfig
    _tied_weights_keys = {"lm_head.weight": "wte.weight"}
    _no_split_modules = ["Block"]

    def __init__(self, config: ChargptConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd) if config.pos_encoding == "learned" else None
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = _norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        head = config.n_embd // config.n_head
        inv_freq = 1.0 / (10000 ** (torch.arange(0, head, 2, dtype=torch.float32) / head))
        angles = torch.outer(torch.arange(config.block_size, dtype=torch.float32), inv_freq)
        self.register_buffer("rope_cos", angles.cos(), persistent=False)
        self.register_buffer("rope_sin", angles.sin(), persistent=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, ChargptForCausalLM):  # buffers left out of the weights file: computed again
            head = self.config.n_embd // self.config.n_head
            inv_freq = 1.0 / (10000 ** (torch.arange(0, head, 2, dtype=torch.float32) / head))
            angles = torch.outer(torch.arange(self.config.block_size, dtype=torch.float32), inv_freq)
            module.rope_cos.copy_(angles.cos())
            module.rope_sin.copy_(angles.sin())

    def get_input_embeddings(self) -> nn.Module:
        return self.wte

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, **kwargs) -> CausalLMOutput:  # fmt: skip
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("this model reads unpadded sequences: give prompts one at a time, or of one length")
        T = input_ids.size(1)
        if self.config.block_size < T:
            raise ValueError(f"{T} tokens exceed the model's context of {self.config.block_size}")
        x = self.wte(input_ids)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=input_ids.device))
        else:
            rope = (self.rope_cos[:T].to(x.dtype), self.rope_sin[:T].to(x.dtype))
        for block in self.blocks:
            x = block(x, rope)
        logits = self.lm_head(self.ln_f(x))
        if self.config.logit_softcap is not None:
            logits = self.config.logit_softcap * torch.tanh(logits / self.config.logit_softcap)
        loss = None
        if labels is not None:  # transformers' convention: labels are the inputs, shifted here
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(), labels[:, 1:].reshape(-1))
        return CausalLMOutput(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, **kwargs) -> dict:
        return {"input_ids": input_ids[:, -self.config.block_size :]}  # the window slides past the context

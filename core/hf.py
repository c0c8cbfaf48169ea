"""A saved model as a folder Hugging Face `transformers` loads with `AutoModelForCausalLM.from_pretrained`.

models/<name>/export/hf/
    config.json, model.safetensors      GPT-2's own architecture where the model is one (below), else
                                        `chargpt` with modeling_chargpt.py beside it (`trust_remote_code=True`)
    tokenizer.json, tokenizer_config.json
    generation_config.json              the workbench's sampling defaults
    README.md                           the model card, with how to load it

GPT-2 is exact for the classic recipe: learned positions, layer norm (eps 1e-5), an unscaled-by-layer
attention at 1/sqrt(head size), an exact-erf GELU MLP of 4x width (`activation_function="gelu"`, not GPT-2's
tanh `gelu_new`), a tied head, no soft cap; a model without biases gets zero biases. GPT-2 keeps its weights
transposed (`Conv1D`), so the matrices are transposed on the way out. Any other combination (the modern
recipe: rotary positions, RMS norm, squared ReLU, QK-norm) has no exact counterpart in `transformers`.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.bpe import TOKENIZER_JSON
from core.card import read_card
from core.checkpoint import LoadedModel, ModelError, weights_for_saving
from core.config import ModelConfig
from core.logit_check import worst_logit_difference
from core.sampling import SamplingConfig

HF_DIR = "hf"
REMOTE_CODE = Path(__file__).parent / "hf_remote" / "modeling_chargpt.py"
HF_PACKAGES = ("transformers",)


def missing_packages() -> list[str]:
    return [name for name in HF_PACKAGES if importlib.util.find_spec(name) is None]


def is_gpt2(config: ModelConfig) -> bool:
    """Whether GPT-2's architecture computes exactly this model (see the module docstring)."""
    return (config.pos_encoding, config.norm, config.mlp, config.qk_norm, config.logit_softcap, config.tie_head) == (
        "learned", "layernorm", "gelu", False, None, True
    )  # fmt: skip


def hf_config(config: ModelConfig) -> dict[str, Any]:
    """config.json of the export: GPT-2's where it is exact, else the chargpt architecture's."""
    common = {"vocab_size": config.vocab_size, "n_layer": config.n_layer, "n_head": config.n_head,
              "n_embd": config.n_embd, "bos_token_id": None, "eos_token_id": None, "pad_token_id": None,
              "tie_word_embeddings": config.tie_head, "dtype": "float32"}  # fmt: skip
    if is_gpt2(config):
        return {**common, "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_positions": config.block_size,
                "activation_function": "gelu", "layer_norm_epsilon": 1e-5, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
                "attn_pdrop": 0.0, "use_cache": True}  # fmt: skip
    return {**common, "model_type": "chargpt", "architectures": ["ChargptForCausalLM"],
            "auto_map": {"AutoConfig": f"{REMOTE_CODE.stem}.ChargptConfig",
                         "AutoModelForCausalLM": f"{REMOTE_CODE.stem}.ChargptForCausalLM"},
            "block_size": config.block_size, "bias": config.bias, "pos_encoding": config.pos_encoding,
            "norm": config.norm, "mlp": config.mlp, "qk_norm": config.qk_norm,
            "logit_softcap": config.logit_softcap, "use_cache": False}  # fmt: skip


_GPT2_NAMES = {"attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj", "mlp.fc": "mlp.c_fc", "mlp.proj": "mlp.c_proj"}


def gpt2_tensors(weights: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Our weights under GPT-2's names and layout: `Conv1D` matrices transposed, absent biases as zeros."""
    out = {"transformer.wte.weight": weights["wte.weight"], "transformer.wpe.weight": weights["wpe.weight"]}
    norms, linears = {"ln_f": "transformer.ln_f"}, {}
    for i in range(config.n_layer):
        norms |= {f"blocks.{i}.ln_1": f"transformer.h.{i}.ln_1", f"blocks.{i}.ln_2": f"transformer.h.{i}.ln_2"}
        linears |= {f"blocks.{i}.{ours}": f"transformer.h.{i}.{theirs}" for ours, theirs in _GPT2_NAMES.items()}
    for src, dst in norms.items():
        out[f"{dst}.weight"] = weights[f"{src}.weight"]
        out[f"{dst}.bias"] = weights.get(f"{src}.bias", torch.zeros_like(weights[f"{src}.weight"]))
    for src, dst in linears.items():
        matrix = weights[f"{src}.weight"]
        out[f"{dst}.weight"] = matrix.t().contiguous()  # Conv1D keeps (in, out)
        out[f"{dst}.bias"] = weights.get(f"{src}.bias", torch.zeros(matrix.shape[0], dtype=matrix.dtype))
    return out


def char_tokenizer(chars: list[str]):
    """The character vocabulary as a `tokenizers` model: each character one token (a BPE with no merges),
    joined back without separators; characters the vocabulary lacks are dropped, as the chat drops them."""
    from tokenizers import Tokenizer, decoders, models

    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(chars)}, merges=[]))
    tokenizer.decoder = decoders.Fuse()
    return tokenizer


def write_hf_folder(loaded: LoadedModel, folder: Path) -> None:
    """Every file of the export (the module docstring) into `folder`."""
    from safetensors.torch import save_file

    config = loaded.model.config
    gpt2 = is_gpt2(config)
    weights = weights_for_saving(loaded.model)
    tensors = gpt2_tensors(weights, config) if gpt2 else weights
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    _write_json(folder / "config.json", hf_config(config))
    if not gpt2:
        shutil.copy2(REMOTE_CODE, folder / REMOTE_CODE.name)
    if loaded.vocab.kind == "bpe":
        shutil.copy2(loaded.path / TOKENIZER_JSON, folder / TOKENIZER_JSON)
    else:
        char_tokenizer(loaded.vocab.chars).save(str(folder / TOKENIZER_JSON))
    _write_json(folder / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast",
                "model_max_length": config.block_size, "clean_up_tokenization_spaces": False})  # fmt: skip
    sampling = SamplingConfig()
    _write_json(folder / "generation_config.json", {
        "do_sample": True, "temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p,
        "max_new_tokens": 200, "use_cache": gpt2, "bos_token_id": None, "eos_token_id": None, "pad_token_id": None,
    })  # fmt: skip
    (folder / "README.md").write_text(hf_card(loaded, gpt2), encoding="utf-8")


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def hf_card(loaded: LoadedModel, gpt2: bool) -> str:
    """The model's card under the Hub's front matter, with how to load this folder."""
    remote = "" if gpt2 else ", trust_remote_code=True"
    architecture = (
        "GPT-2's architecture in `transformers` (exact for this recipe: learned positions, layer norm, GELU)"
        if gpt2
        else "its own small architecture, `modeling_chargpt.py` in this folder, which `transformers` runs with "
        "`trust_remote_code=True`: no built-in architecture has rotary positions, RMS norm, QK-norm and a "
        "squared-ReLU MLP together. Read the file before running it, as with any remote code"
    )
    front = "---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags:\n- chargpt-workbench\n---\n\n"
    usage = (
        "## In `transformers`\n\n"
        f"This folder is {architecture}.\n\n"
        "```python\n"
        "from transformers import pipeline\n\n"
        f'generate = pipeline("text-generation", model="PATH_OR_REPO"{remote})\n'
        'print(generate("\\n", max_new_tokens=200)[0]["generated_text"])\n'
        "```\n\n"
        f"The context is {loaded.model.config.block_size} tokens"
        + (": GPT-2 stops there" if gpt2 else "; generation slides the window past it")
        + ". Batches must not be padded.\n\n"
    )
    card = read_card(loaded.path).split("\nAfter `export`, `export/` holds", 1)[0]  # the ONNX example is not here
    return front + card.rstrip("\n") + "\n\n" + usage


@dataclass
class HfCheck:
    max_abs_diff: float
    sample: str


def check_hf(loaded: LoadedModel, folder: Path, seed: int = 0) -> HfCheck:
    """The exported folder loaded by `transformers`: its logits against ours over random windows (the full
    context included), and a few tokens from `pipeline("text-generation")`."""
    from transformers import AutoModelForCausalLM, pipeline
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    remote = not is_gpt2(loaded.model.config)
    theirs = AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=remote).eval()
    worst = worst_logit_difference(
        loaded.model, lambda ids: theirs(input_ids=ids).logits, "transformers", ModelError, seed
    )
    block = loaded.model.config.block_size
    generate = pipeline("text-generation", model=str(folder), trust_remote_code=remote, device="cpu")
    torch.manual_seed(seed)
    prompt = "\n" if not loaded.vocab.unknown("\n") else loaded.vocab.chars[0]  # a text without line ends
    sample = generate(prompt, max_new_tokens=min(32, block - 1), return_full_text=False)[0]["generated_text"]
    return HfCheck(worst, sample)


def push_plan(folder: Path) -> list[str]:
    """The files `push` uploads, in the order it lists them."""
    return sorted(p.name for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))


def push_hf(folder: Path, repo: str, private: bool = False, token: str | None = None) -> str:
    """Upload an export folder to the Hub as model repository `repo` (created if absent); its URL."""
    from huggingface_hub import HfApi

    check_repo(repo)
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model",
                          allow_patterns=push_plan(folder), commit_message="Upload from chargpt-workbench")  # fmt: skip
    except Exception as err:  # noqa: BLE001 - the Hub's errors (no login, no right, no network) said plainly
        raise ModelError(f"could not push to {repo} ({type(err).__name__}: {err}); log in with `hf auth login` or "
                         "set HF_TOKEN, and check the name is yours") from None  # fmt: skip
    return str(url)


def check_repo(repo: str) -> str:
    if not REPO_ID.fullmatch(repo):
        raise ModelError(f"{repo!r} is not a Hub repository name; give USER/NAME (letters, digits, - _ .)")
    return repo


REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")

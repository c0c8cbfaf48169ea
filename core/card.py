"""A saved model's card: `models/<name>/README.md`, rendered from its config.json alone, so no field of it can
drift from the model. `save_model` writes it with every save; `export` copies it beside the ONNX graph.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path, PureWindowsPath
from typing import Any

from core.chat_template import template_for
from core.fileio import atomic_write_text, printable

CARD = "README.md"


def _recipe(model: dict[str, Any]) -> str:
    parts = [
        "rotary positions" if model.get("pos_encoding") == "rope" else "learned positions",
        "RMSNorm" if model.get("norm") == "rmsnorm" else "LayerNorm",
        "squared-ReLU MLP" if model.get("mlp") == "relu2" else "GELU MLP",
        "QK-norm" if model.get("qk_norm") else "no QK-norm",
        "tied head" if model.get("tie_head") else "untied head",
    ]
    if model.get("logit_softcap"):
        parts.append(f"logits soft-capped at {model['logit_softcap']:g}")
    if model.get("bias"):
        parts.append("biases")
    return ", ".join(parts)


def _plural(count: Any, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "unknown"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _code(text: Any) -> str:
    """`text` as an inline code span that nothing in it can end (backticks, HTML, line breaks)."""
    text = " ".join(printable(str(text)).split())
    if not text:
        return "not recorded"
    fence = "`"
    while fence in text:
        fence += "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _where(path: Any) -> str:
    """A recorded path as the card shows it: a relative one as it is, an absolute one (a machine's) by its name."""
    text = str(path)
    absolute = text.startswith(("/", "\\")) or PureWindowsPath(text).is_absolute()
    return PureWindowsPath(text).name if absolute else text  # PureWindowsPath splits at / and \ alike


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _loss(summary: dict[str, Any]) -> str:
    """The model's one validation figure: the kept weights over the whole split (what `evaluate` prints)."""
    val, estimate, step = summary.get("val_loss"), summary.get("best_val_loss"), _count(summary.get("best_step"))
    if _finite(val):
        return (
            f"**{val:.4f} nats per character** ({val / math.log(2):.4f} bits per character) over the whole validation "
            f"split ({_count(summary.get('val_chars'))} characters), the weights kept at step {step}"
        )
    if _finite(estimate):  # saved before whole-split scoring: an estimate from sampled batches
        return (
            f"**{estimate:.4f} nats per character** ({estimate / math.log(2):.4f} bits per character), estimated on "
            f"sampled batches of the validation split at step {step}; `evaluate` scores the whole split"
        )
    return "not evaluated yet"


def _fence(text: str) -> str:
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}text\n{text}\n{fence}"


def onnx_example(tokenizer: str, context: int) -> str:
    """Python that samples from the exported graph with numpy and onnxruntime (and `tokenizers` for a BPE),
    run inside the export folder; tests run it as the card prints it."""
    if tokenizer == "bpe":
        load = (
            "from tokenizers import Tokenizer\n\n"
            'tokenizer = Tokenizer.from_file("tokenizer.json")\n'
            'ids = tokenizer.encode("\\n").ids\n'
        )
        show = "print(tokenizer.decode(ids))"
    else:
        load = (
            'ESCAPES = {"\\\\n": "\\n", "\\\\r": "\\r", "\\\\t": "\\t", "\\\\\\\\": "\\\\"}  # vocab.txt: one per line\n'
            'chars = [ESCAPES.get(line, line) for line in open("vocab.txt", encoding="utf-8").read().split("\\n")[:-1]]\n'
            'ids = [chars.index("\\n") if "\\n" in chars else 0]\n'
        )
        show = 'print("".join(chars[i] for i in ids))'
    return (
        "import numpy as np\n"
        "import onnxruntime as ort\n"
        f"{load}\n"
        'session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])\n'
        f"context, temperature, rng = {context}, 0.8, np.random.default_rng(0)\n"
        "for _ in range(200):\n"
        "    window = np.array([ids[-context:]], dtype=np.int64)\n"
        '    logits = session.run(["logits"], {"input_ids": window})[0][0, -1] / temperature\n'
        "    probs = np.exp(logits - logits.max())\n"
        "    ids.append(int(rng.choice(len(probs), p=probs / probs.sum())))\n"
        f"{show}\n"
    )


def _training(train: dict[str, Any], summary: dict[str, Any], config: dict[str, Any]) -> list[str]:
    return [
        f"- {_count(summary.get('iters'))} steps of {_count(train.get('batch_size'))} x "
        f"{_count(train.get('grad_accum'))} windows, {_count(summary.get('tokens_seen'))} tokens seen, "
        f"in {_duration(summary.get('seconds'))} on {config.get('device', 'an unrecorded device')}",
        f"- Optimizer {train.get('optimizer')}, learning rate {train.get('lr')}, schedule {train.get('schedule')}, "
        f"seed {train.get('seed')}",
    ]


def _built_on(base: Any) -> list[str]:
    """The saved model a fine-tuned one started from: its name, its loss on its own data, what that data was."""
    if not isinstance(base, dict) or not base.get("name"):
        return []
    data = base.get("data") or {}
    sources = ", ".join(_code(_where(s)) for s in (data.get("sources") or [])[:5]) or "sources not recorded"
    loss = (
        f"{base['val_loss']:.4f} nats/char on its own validation text"
        if _finite(base.get("val_loss"))
        else ("its loss not recorded")
    )
    return [f"- Started from the weights of {_code(base['name'])} ({loss}; trained on {sources})"]


def _parameters(config: dict[str, Any]) -> int | None:
    """The parameter count config.json records, or (a model saved before it did) counted from its shape."""
    if isinstance(config.get("parameters"), int):
        return config["parameters"]
    try:
        import torch

        from core.config import ModelConfig
        from core.model import GPT

        with torch.device("meta"):
            return GPT(ModelConfig.from_saved(config.get("model", {}))).num_params()
    except (TypeError, ValueError):
        return None


def render_card(name: str, config: dict[str, Any]) -> str:
    """The card of model `name` from its config.json (`config`)."""
    name = printable(name)  # a folder named in bytes that are not UTF-8
    quoted = shlex.quote(name)
    model, train, summary = config.get("model", {}), config.get("train", {}), config.get("summary", {})
    data, source = config.get("data", {}), config.get("source")
    tokenizer = config.get("tokenizer", "char")
    vocab_file = "tokenizer.json" if tokenizer == "bpe" else "vocab.txt"
    unit = "tokens" if tokenizer == "bpe" else "characters"
    loss = _loss(summary)
    chars = data.get("chars") or {}
    sources = data.get("sources") or []
    tuned = (
        f"tuned: parameters of trial {source.get('trial')} of study {_code(source.get('study'))}"
        if isinstance(source, dict) and source.get("study")
        else "not tuned: the recipe's defaults and the flags given"
    )
    sample = summary.get("sample") or ""
    lines = [
        f"# {name.replace('`', '')}",
        "",
        f"A decoder-only Transformer trained by chargpt-workbench on {unit} of its own text. This card is written "
        "from `config.json` each time the model is saved; do not edit it.",
        "",
        "## Model",
        f"- Shape: {_plural(model.get('n_layer'), 'layer')} x {_plural(model.get('n_head'), 'head')} x "
        f"{model.get('n_embd')} wide, "
        f"context {model.get('block_size')} {unit}, {_count(_parameters(config))} parameters "
        "(without position embeddings)",
        f"- Recipe: {_recipe(model)}",
        f"- Vocabulary: {_count(model.get('vocab_size'))} "
        + ("byte-level BPE tokens (`tokenizer.json`)" if tokenizer == "bpe" else "characters (`vocab.txt`)"),
        "",
        "## Data",
        f"- Sources: {', '.join(_code(_where(s)) for s in sources) if sources else 'not recorded'} "
        f"(prepared in {_code(_where(data.get('dir', 'dataset')))})",
        f"- Characters: {_count(chars.get('train'))} for training, {_count(chars.get('val'))} for validation",
        "",
        "## Training",
        *(
            _training(train, summary, config)
            if train
            else ["- Not recorded: this model was saved without its training."]
        ),
        f"- {tuned}",
        *_built_on(config.get("base")),
        f"- Saved {summary.get('saved_at', 'at an unrecorded time')}",
        "",
        "## Quality",
        f"- Validation loss: {loss}",
        "",
        "A sample from the evaluation that kept these weights (temperature 0.8):",
        "",
        _fence(sample) if sample else "(no sample recorded: train with --sample-chars N to record one)",
        "",
        "## Use it",
        "```bash",
        f"python app.py chat --model {quoted}",
        f"python app.py evaluate --model {quoted}                  # nats and bits per character",
        f"python app.py export --model {quoted} --format onnx --check",
        f"python app.py export --model {quoted} --format hf --check  # a transformers folder",
        f"python app.py serve-api --model {quoted} --port 8000      # OpenAI-style /v1/completions, /v1/chat/completions",
        "```",
        "",
        f"Chat template of `/v1/chat/completions`: {template_for(config).describe()}.",
        "",
        f"After `export`, `export/` holds `model.onnx` (input `input_ids` int64 [batch, sequence], output `logits` "
        f"float32 [batch, sequence, vocab]), `{vocab_file}` and this card. Sampling from it needs only numpy and "
        "onnxruntime"
        + (" (and `tokenizers` for the BPE)" if tokenizer == "bpe" else "")
        + "; run this inside `export/`:",
        "",
        "```python",
        onnx_example(tokenizer, int(model.get("block_size") or 1)).rstrip("\n"),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_card(folder: Path, config: dict[str, Any]) -> Path:
    path = Path(folder) / CARD
    atomic_write_text(path, render_card(Path(folder).name, config))
    return path


def read_card(folder: Path) -> str:
    """The card of a saved model, rendered now if the folder predates cards."""
    path = Path(folder) / CARD
    if path.is_file():
        return path.read_text(encoding="utf-8")
    config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    return render_card(Path(folder).name, config)

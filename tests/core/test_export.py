"""ONNX export (core.export, `python app.py export`) and the model card (core.card): the graph computes the
model's logits, the card's numbers are config.json's and its example samples text, and a failed export leaves
nothing half-written."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from core import checkpoint as ckpt
from core import export as export_module
from core.bpe import TOKENIZER_JSON
from core.card import CARD
from core.config import ModelConfig
from core.data import Dataset, prepare
from core.export import MAX_ABS_DIFF, ExportError, export_model
from core.model import GPT
from core.trainer import train
from tests.conftest import VERSE
from tests.helpers import run_app

MODERN = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, logit_softcap=15.0)
CLASSIC = dataclasses.replace(
    MODERN, pos_encoding="learned", norm="layernorm", mlp="gelu", qk_norm=False, tie_head=False, bias=True,
    logit_softcap=None,
)  # fmt: skip


def save_random(models, name: str, config: ModelConfig, vocab) -> None:
    torch.manual_seed(0)
    config = dataclasses.replace(config, vocab_size=len(vocab))
    model = GPT(config)
    with torch.no_grad():  # non-zero biases and gains, so a graph that dropped one would differ
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(torch.randn_like(param) * 0.1)
    ckpt.save_model(models / name, ckpt.weights_for_saving(model), config, vocab, {"summary": {}})


@pytest.mark.parametrize("config", [MODERN, CLASSIC], ids=["modern", "classic"])
def test_the_onnx_graph_computes_the_models_logits_for_every_recipe_option(tmp_path, dataset_dir, config):
    models = tmp_path / "models"
    save_random(models, "m", config, Dataset(dataset_dir).vocab)
    result = export_model("m", models, check=True)
    assert result.max_abs_diff is not None and result.max_abs_diff <= MAX_ABS_DIFF
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    (given,), (out,) = session.get_inputs(), session.get_outputs()
    assert (given.name, given.type, out.name, out.type) == ("input_ids", "tensor(int64)", "logits", "tensor(float)")
    assert all(isinstance(d, str) for d in given.shape)  # batch and sequence are dynamic
    loaded = ckpt.load_model("m", models)
    ids = torch.randint(0, len(loaded.vocab), (5, 16), generator=torch.Generator().manual_seed(1))
    got = session.run(["logits"], {"input_ids": ids.numpy()})[0]
    with torch.no_grad():
        expected = loaded.model(ids)[0].numpy()
    assert got.shape == (5, 16, len(loaded.vocab)) and np.abs(got - expected).max() <= MAX_ABS_DIFF
    assert sorted(p.name for p in result.folder.iterdir()) == [CARD, "model.onnx", "vocab.txt"]
    assert not list(result.folder.parent.glob(".tmp-*"))


def test_the_card_holds_config_json_numbers_and_its_numpy_example_samples_text(tmp_path, dataset_dir,
                                                                                tiny_model_config, tiny_train_config):  # fmt: skip
    models = tmp_path / "models"
    train(tiny_model_config, dataclasses.replace(tiny_train_config, max_iters=30, sample_chars=40),
          out_dir=models / "verse")  # fmt: skip
    config = json.loads((models / "verse" / "config.json").read_text())
    card = (models / "verse" / CARD).read_text()
    val = config["summary"]["val_loss"]  # the kept weights over the whole validation split
    assert f"{val:.4f} nats per character" in card and f"({val / math.log(2):.4f} bits per character)" in card
    model = config["model"]
    assert f"{model['n_layer']} layers x {model['n_head']} heads x {model['n_embd']} wide" in card
    assert f"context {model['block_size']} characters, {config['parameters']:,} parameters" in card
    assert f"{config['data']['chars']['train']:,} for training" in card and "corpus.txt`" in card
    assert f"{config['summary']['iters']:,} steps" in card and config["summary"]["sample"] in card

    done = run_app("export", "--model", "verse", "--check", cwd=tmp_path, timeout=240)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"export onnx=\S+model\.onnx max_abs_diff=\S+", done.stdout.strip().splitlines()[-1])
    export_dir = models / "verse" / "export"
    assert (export_dir / CARD).read_text() == card
    example = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    ran = subprocess.run([sys.executable, "-c", example], cwd=export_dir, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert len(ran.stdout) > 150 and set(ran.stdout) <= set(VERSE)


def test_a_bpe_model_exports_with_its_tokenizer_and_its_card_example_decodes_with_it(tmp_path, corpus_file):
    prepare([corpus_file], tmp_path / "bpe", tokenizer="bpe", vocab_size=300)
    models = tmp_path / "models"
    save_random(models, "b", MODERN, Dataset(tmp_path / "bpe").vocab)
    result = export_model("b", models, check=True)
    assert (result.folder / TOKENIZER_JSON).read_bytes() == (models / "b" / TOKENIZER_JSON).read_bytes()
    example = re.search(r"```python\n(.*?)```", (result.folder / CARD).read_text(), re.S).group(1)
    assert "tokenizers" in example
    ran = subprocess.run([sys.executable, "-c", example], cwd=result.folder, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert ran.returncode == 0 and len(ran.stdout) > 100, ran.stderr


@pytest.fixture
def exported(tmp_path, dataset_dir):
    models = tmp_path / "models"
    save_random(models, "m", MODERN, Dataset(dataset_dir).vocab)
    export_model("m", models)
    return models


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_failed_check_or_write_keeps_the_previous_export_whole(exported, monkeypatch):
    before = _files(exported / "m" / "export")
    monkeypatch.setattr(export_module, "max_logit_difference", lambda *a, **k: 0.5)
    with pytest.raises(ExportError, match=r"differ from PyTorch's by 5.00e-01 .*not kept"):
        export_model("m", exported, check=True)

    def disk_full(model, path):
        path.write_bytes(b"half a graph")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export_module, "write_onnx", disk_full)
    with pytest.raises(ExportError, match="No space left on device.*free disk space"):
        export_model("m", exported)
    assert _files(exported / "m" / "export") == before
    assert not list((exported / "m").glob(".tmp-*"))


def test_bad_exports_get_a_clear_message_and_write_nothing(exported, monkeypatch, dataset_dir):
    with pytest.raises(ckpt.ModelError, match="no model named 'ghost'.*saved models: m"):
        export_model("ghost", exported)
    with pytest.raises(ExportError, match="unknown export format 'gguf'"):
        export_model("m", exported, fmt="gguf")
    weights = exported / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ckpt.ModelError, match="truncated or corrupt"):
        export_model("m", exported)

    monkeypatch.setattr(export_module, "missing_packages", lambda fmt="onnx": ["onnxscript"])
    with pytest.raises(ExportError, match="needs onnxscript.*pip install -r requirements-export.txt"):
        export_model("m", exported)

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(export_module, "missing_packages", lambda fmt="onnx": [])
    monkeypatch.setattr(export_module.tempfile, "mkdtemp", read_only)
    save_random(exported, "n", MODERN, Dataset(dataset_dir).vocab)
    with pytest.raises(ExportError, match="cannot write in .*n \\(Permission denied\\)"):
        export_model("n", exported)
    assert not (exported / "n" / "export").exists()

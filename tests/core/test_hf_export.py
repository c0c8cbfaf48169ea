"""The Hugging Face export (core.hf, `export --format hf`, `push`): `transformers` loads the folder and computes
the model's logits, its tokenizer reads text as ours does, `pipeline` generates, and `push` uploads exactly
that folder (no test reaches the network: the Hub's client is replaced)."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch

pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline  # noqa: E402

from core import checkpoint as ckpt  # noqa: E402
from core import export as export_module  # noqa: E402
from core import hf  # noqa: E402
from core.config import ModelConfig  # noqa: E402
from core.data import Dataset, prepare  # noqa: E402
from core.export import MAX_ABS_DIFF, ExportError, export_model  # noqa: E402
from tests.conftest import VERSE  # noqa: E402
from tests.core.test_export import CLASSIC, MODERN, save_random  # noqa: E402
from tests.helpers import run_app  # noqa: E402

GPT2_EXACT = dataclasses.replace(CLASSIC, tie_head=True)  # nanoGPT's model: GPT-2's architecture computes it
GPT2_NO_BIAS = dataclasses.replace(GPT2_EXACT, bias=False)
DEFAULT = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16)  # the modern recipe as `train` makes it
UNTIED = dataclasses.replace(MODERN, tie_head=False)

CASES = {"gpt2": GPT2_EXACT, "gpt2-no-bias": GPT2_NO_BIAS, "modern": DEFAULT, "softcap": MODERN, "untied": UNTIED,
         "learned-untied": CLASSIC}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_transformers_loads_the_export_and_computes_the_models_logits(tmp_path, dataset_dir, name):
    config, models = CASES[name], tmp_path / "models"
    save_random(models, "m", config, Dataset(dataset_dir).vocab)
    result = export_model("m", models, fmt="hf", check=True)
    assert result.folder == models / "m" / "export" / "hf" and result.max_abs_diff <= MAX_ABS_DIFF
    written = json.loads((result.folder / "config.json").read_text())
    gpt2 = name.startswith("gpt2")
    assert written["model_type"] == ("gpt2" if gpt2 else "chargpt")
    assert (result.folder / "modeling_chargpt.py").exists() != gpt2  # remote code only where needed
    theirs = AutoModelForCausalLM.from_pretrained(result.folder, trust_remote_code=not gpt2).eval()
    ours = ckpt.load_model("m", models)
    tokenizer = AutoTokenizer.from_pretrained(result.folder)
    text = VERSE[:200]
    ids = tokenizer(text).input_ids
    assert ids == ours.vocab.encode(text) and tokenizer.decode(ids) == text  # the same tokens, and back
    window = torch.tensor([ids[: config.block_size], ids[20 : 20 + config.block_size]])
    with torch.no_grad():
        assert torch.allclose(theirs(input_ids=window).logits, ours.model(window)[0], atol=MAX_ABS_DIFF, rtol=0)
    assert set(result.sample) <= set(ours.vocab.chars)  # the check's pipeline wrote the model's characters


def test_pipeline_generates_past_the_context_and_the_card_says_how_to_load(tmp_path, dataset_dir):
    models = tmp_path / "models"
    save_random(models, "m", DEFAULT, Dataset(dataset_dir).vocab)
    folder = export_model("m", models, fmt="hf").folder
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n") and "trust_remote_code=True" in card
    assert "# m" in card  # the model's own card follows the Hub's front matter
    generate = pipeline("text-generation", model=str(folder), trust_remote_code=True)
    out = generate("To be", max_new_tokens=40, return_full_text=False)[0]["generated_text"]  # 40 > context 16
    assert len(out) == 40 and set(out) <= set(Dataset(dataset_dir).vocab.chars)


def test_a_bpe_model_exports_its_own_tokenizer(tmp_path, corpus_file):
    prepare([corpus_file], tmp_path / "bpe", tokenizer="bpe", vocab_size=300)
    models = tmp_path / "models"
    save_random(models, "b", DEFAULT, Dataset(tmp_path / "bpe").vocab)
    result = export_model("b", models, fmt="hf", check=True)
    tokenizer, ours = AutoTokenizer.from_pretrained(result.folder), ckpt.load_model("b", models)
    text = "Whether 'tis nobler — in any script: Ωμέγα"
    assert tokenizer(text).input_ids == ours.vocab.encode(text) and tokenizer.decode(ours.vocab.encode(text)) == text


def test_each_format_keeps_the_others_export_and_a_failed_check_keeps_the_last(tmp_path, dataset_dir, monkeypatch):
    models = tmp_path / "models"
    save_random(models, "m", GPT2_EXACT, Dataset(dataset_dir).vocab)
    export_model("m", models, fmt="hf")
    export_model("m", models)  # ONNX, written again beside it
    export_dir = models / "m" / "export"
    assert (export_dir / "model.onnx").exists() and (export_dir / "hf" / "model.safetensors").exists()
    before = {p: p.read_bytes() for p in export_dir.rglob("*") if p.is_file()}
    monkeypatch.setattr(export_module, "check_hf", lambda *a, **k: hf.HfCheck(0.5, ""))
    with pytest.raises(ExportError, match=r"transformers' logits differ from PyTorch's by 5.00e-01 .*not kept"):
        export_model("m", models, fmt="hf", check=True)

    def broken(*args, **kwargs):
        raise RuntimeError("a transformers that cannot read it")

    monkeypatch.setattr(export_module, "check_hf", broken)
    with pytest.raises(ExportError, match="transformers could not run the export .*RuntimeError.*not kept"):
        export_model("m", models, fmt="hf", check=True)
    assert {p: p.read_bytes() for p in export_dir.rglob("*") if p.is_file()} == before
    assert not [p for p in export_dir.iterdir() if p.name.startswith(".tmp")]


class FakeHub:
    """huggingface_hub.HfApi as `push` calls it, recording the calls instead of reaching the network."""

    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        FakeHub.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        FakeHub.calls.append(("upload_folder", kwargs))


def test_push_exports_checks_and_uploads_that_folder(tmp_path, dataset_dir, monkeypatch):
    import huggingface_hub

    models = tmp_path / "models"
    save_random(models, "m", DEFAULT, Dataset(dataset_dir).vocab)
    dry = run_app("push", "--model", "m", "--models-dir", str(models), "--repo", "me/m", "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    folder = models / "m" / "export" / "hf"
    files = hf.push_plan(folder)
    assert (
        "checked against PyTorch" in dry.stderr and f"would upload {folder} to me/m: {', '.join(files)}" in dry.stderr
    )
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "modeling_chargpt.py"} <= set(files)

    FakeHub.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    assert hf.push_hf(folder, "me/m", private=True) == "https://huggingface.co/me/m"
    (_, repo, options), (_, upload) = FakeHub.calls
    assert repo == "me/m" and options["private"] is True
    assert upload["folder_path"] == str(folder) and upload["allow_patterns"] == files
    for bad in ("m", "me/m/x", "../m", "me/ m", ""):
        with pytest.raises(ckpt.ModelError, match="not a Hub repository name"):
            hf.push_hf(folder, bad)

    def refused(self, repo_id, **kwargs):
        raise OSError("401 Unauthorized")

    monkeypatch.setattr(FakeHub, "create_repo", refused)
    with pytest.raises(ckpt.ModelError, match=r"could not push to me/m .*401.*hf auth login"):
        hf.push_hf(folder, "me/m")


def test_push_refuses_a_bad_name_before_exporting_and_checks_an_unchecked_export(tmp_path, dataset_dir):
    models = tmp_path / "models"
    save_random(models, "m", DEFAULT, Dataset(dataset_dir).vocab)
    bad = run_app("push", "--model", "m", "--models-dir", str(models), "--repo", "no-slash", "--dry-run", cwd=tmp_path)
    assert bad.returncode != 0 and "not a Hub repository name" in bad.stderr
    assert not (models / "m" / "export").exists()  # refused before any work
    export_model("m", models, fmt="hf")  # unchecked: push does not take it as it is
    assert export_module.ready_export("m", models).joinpath(export_module.CHECKED).is_file()


def test_a_model_with_nan_weights_is_not_exported(tmp_path, dataset_dir):
    models = tmp_path / "models"
    save_random(models, "m", DEFAULT, Dataset(dataset_dir).vocab)
    weights = ckpt.load_model("m", models)
    with torch.no_grad():
        weights.model.wte.weight[0, 0] = float("nan")
    ckpt.save_model(models / "m", ckpt.weights_for_saving(weights.model), weights.model.config, weights.vocab, {})
    with pytest.raises(ExportError, match="not finite numbers.*not kept"):
        export_model("m", models, fmt="hf", check=True)
    assert not (models / "m" / "export" / "hf").exists()


def test_export_hf_from_the_command_line_says_what_it_checked(tmp_path, dataset_dir):
    models = tmp_path / "models"
    save_random(models, "m", GPT2_EXACT, Dataset(dataset_dir).vocab)
    done = run_app("export", "--model", "m", "--models-dir", str(models), "--format", "hf", "--check", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"export hf=\S+model\.safetensors max_abs_diff=\S+", done.stdout.strip().splitlines()[-1])
    assert "checked in transformers" in done.stderr and "pipeline wrote" in done.stderr

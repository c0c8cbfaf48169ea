"""The training recipe's options: each trains, caches, resumes and fails clearly; classic is nanoGPT's, exactly."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core import checkpoint as ckpt
from core.config import ConfigError, ModelConfig, TrainConfig, recipe_configs
from core.decoding import Decoder
from core.model import GPT, KVCache
from core.muon import Muon, orthogonalize
from core.schedule import lr_at
from core.trainer import TrainHooks, train
from tests.helpers import run_app

FIXTURE = Path(__file__).parents[1] / "fixtures" / "classic_tiny"
# The fixture was trained and its replies recorded by the code before these options existed (commit 62a35cb):
FIXTURE_FLAGS = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
                 "--max-iters", "30", "--eval-interval", "30", "--eval-iters", "2", "--sample-chars", "0",
                 "--device", "cpu", "--dtype", "float32", "--seed", "7"]  # fmt: skip

OPTIONS = [
    {"pos_encoding": "learned"},
    {"pos_encoding": "rope"},
    {"norm": "layernorm"},
    {"mlp": "gelu"},
    {"qk_norm": False},
    {"tie_head": False},
    {"logit_softcap": 15.0},
    {"optimizer": "adamw"},
    {"schedule": "cosine"},
]


def split(option: dict) -> tuple[dict, dict]:
    model_names = {f.name for f in dataclasses.fields(ModelConfig)}
    return {k: v for k, v in option.items() if k in model_names}, {
        k: v for k, v in option.items() if k not in model_names
    }


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_each_option_trains_and_its_loss_goes_down(option, tiny_model_config, tiny_train_config):
    model_part, train_part = split(option)
    model_config = dataclasses.replace(tiny_model_config, **model_part)
    train_config = dataclasses.replace(tiny_train_config, max_iters=60, eval_iters=8, **train_part)
    result = train(model_config, train_config)
    first, last = result.history[0]["val_loss"], result.history[-1]["val_loss"]
    assert last < first - 0.2, (first, last)


COMBINATIONS = [
    {},
    recipe_configs("classic")[0].__dict__,
    {"pos_encoding": "rope", "norm": "layernorm", "qk_norm": False},
    {"pos_encoding": "learned", "mlp": "relu2", "qk_norm": True, "tie_head": False},
    {"logit_softcap": 5.0},
]


@pytest.mark.parametrize("combination", range(len(COMBINATIONS)))
def test_kv_cache_matches_full_forward_for_every_option(combination):
    options = {k: v for k, v in COMBINATIONS[combination].items() if k in ModelConfig.__dataclass_fields__}
    options |= {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16, "vocab_size": 11, "dropout": 0.0}
    torch.manual_seed(0)
    model = GPT(ModelConfig(**options)).eval()
    with torch.no_grad():
        for p in model.parameters():  # break the symmetry of zero or unit inits
            p.add_(torch.randn_like(p) * 0.05)
    idx = torch.randint(0, 11, (2, 16))
    full, _ = model(idx)
    cache = KVCache.empty(model.config, 2, torch.device("cpu"), torch.float32)
    prefix, _ = model(idx[:, :5], cache=cache)
    assert torch.allclose(prefix[:, -1], full[:, 4], atol=1e-5)
    for t in range(5, 16):
        step, _ = model(idx[:, t : t + 1], cache=cache)
        assert torch.allclose(step[:, -1], full[:, t], atol=1e-5)
    decode = Decoder(model)  # the chat's decoding step: one token, then several at once (a token and its guesses)
    cache = KVCache.empty(model.config, 1, torch.device("cpu"), torch.float32)
    model(idx[:1, :5], cache=cache)
    for start, stop in ((5, 6), (6, 7), (7, 11), (11, 16)):
        assert torch.allclose(decode(idx[0, start:stop].tolist(), cache), full[0, start:stop], atol=1e-5)
    assert cache.length == 16
    half = Decoder(model, half=True)  # the chat's default on a CPU: float16 weights for one-row steps
    cache = KVCache.empty(model.config, 1, torch.device("cpu"), torch.float32)
    model(idx[:1, :5], cache=cache)
    for t in range(5, 16):
        assert torch.allclose(half([int(idx[0, t])], cache), full[0, t : t + 1], atol=1e-2)


def test_a_half_precision_step_that_overflows_is_taken_again_in_float32():
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=8, vocab_size=11, dropout=0.0)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(1e6)  # logits far beyond float16's 65504
    full, _ = model(torch.tensor([[1, 2, 3]]))
    half = Decoder(model, half=True)
    assert half.half
    cache = KVCache.empty(model.config, 1, torch.device("cpu"), torch.float32)
    logits = torch.cat([half([token], cache) for token in (1, 2, 3)])
    assert not half.half and cache.length == 3  # float32 from the overflow on, the cache written once per token
    assert torch.allclose(logits, full[0], rtol=1e-4)


@pytest.mark.parametrize("settings", [{"optimizer": "muon"}, {"schedule": "wsd", "optimizer": "adamw"}], ids=str)
def test_resume_equals_an_uninterrupted_run(settings, tmp_path, tiny_model_config, tiny_train_config):
    config = dataclasses.replace(tiny_train_config, checkpoint_interval=10, **settings)
    full: list[float] = []
    train(tiny_model_config, config, out_dir=tmp_path / "full", hooks=TrainHooks(on_step=lambda e: full.append(e.loss)))
    first: list[float] = []
    train(
        tiny_model_config,
        config,
        out_dir=tmp_path / "split",
        hooks=TrainHooks(on_step=lambda e: first.append(e.loss), should_stop=lambda: len(first) >= 25),
    )
    second: list[float] = []
    train(
        tiny_model_config,
        config,
        out_dir=tmp_path / "split",
        resume=True,
        hooks=TrainHooks(on_step=lambda e: second.append(e.loss)),
    )
    assert len(first) == 25 and first + second == pytest.approx(full, abs=1e-6)


def test_a_resumed_run_takes_its_rates_and_decay_from_its_config_not_the_checkpoint(
    tmp_path, tiny_model_config, tiny_train_config
):
    config = dataclasses.replace(tiny_train_config, optimizer="muon", max_iters=10, checkpoint_interval=10)
    train(tiny_model_config, config, out_dir=tmp_path)
    changed = dataclasses.replace(config, max_iters=20, muon_lr=0.005, muon_weight_decay=0.5, weight_decay=0.02)
    train(tiny_model_config, changed, out_dir=tmp_path, resume=True)
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest.step == 20
    adamw_matrices, adamw_rest, muon = latest.optimizer["param_groups"]
    assert (adamw_matrices["weight_decay"], adamw_rest["weight_decay"], muon["weight_decay"]) == (0.02, 0.0, 0.5)
    assert muon["peak_lr"] == 0.005 and adamw_matrices["peak_lr"] == config.lr


def test_muon_weight_decay_shrinks_the_hidden_matrices_only(tiny_model_config, tiny_train_config):
    config = dataclasses.replace(tiny_train_config, optimizer="muon", max_iters=30, lr=1e-12, muon_lr=1e-12)
    norms = {}
    for decay in (0.0, 1e10):  # lr x decay = 1e-2 a step at the peak rate; the updates themselves ~0
        models: list[GPT] = []
        train(
            tiny_model_config,
            dataclasses.replace(config, muon_weight_decay=decay),
            hooks=TrainHooks(on_finish=models.append),
        )
        norms[decay] = (models[0].blocks[0].mlp.fc.weight.norm().item(), models[0].wte.weight.norm().item())
    assert norms[1e10][0] < 0.95 * norms[0.0][0]
    assert norms[1e10][1] == pytest.approx(norms[0.0][1], rel=1e-6)


def test_wsd_holds_the_peak_then_decays_linearly():
    config = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=100, schedule="wsd", cooldown_fraction=0.2)
    assert lr_at(0.0, 0, config) < 1e-3  # warming up
    assert lr_at(0.5, 50, config) == lr_at(0.8, 80, config) == 1e-3
    assert lr_at(0.9, 90, config) == pytest.approx(5.5e-4)
    assert lr_at(1.0, 100, config) == pytest.approx(1e-4)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"pos_encoding": "rope", "n_head": 4, "n_embd": 12}, "even head size"),
        ({"logit_softcap": 0.0}, "logit_softcap must be > 0"),
        ({"logit_softcap": -3.0}, "logit_softcap must be > 0"),
        ({"norm": "batchnorm"}, "norm must be one of"),
    ],
)
def test_bad_model_options_get_a_clear_error(values, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**values).validate()


def test_muon_without_hidden_matrices_is_refused():
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=5))
    for p in model.blocks.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="muon needs 2-D hidden matrices"):
        model.optimizer(1e-3, 0.1, (0.9, 0.99), torch.device("cpu"), kind="muon")
    with pytest.raises(ConfigError, match="optimizer must be one of"):
        TrainConfig(optimizer="sgd").validate()
    with pytest.raises(ConfigError, match="muon_weight_decay, grad_clip"):
        TrainConfig(muon_weight_decay=-0.1).validate()


def test_classic_fixture_loads_and_replies_exactly_as_before(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "models" / "classic_tiny")
    for settings, expected in ((["--temperature", "0"], "greedy.txt"), (["--seed", "3"], "sampled.txt")):
        reply = run_app(
            "chat", "--model", "classic_tiny", "--max-new-tokens", "60", *settings,
            cwd=tmp_path, stdin="To be, or not\n",
        )  # fmt: skip
        assert reply.returncode == 0, reply.stderr
        assert reply.stdout == (FIXTURE / expected).read_text()


def test_recipe_classic_reproduces_the_old_model_bit_for_bit(tmp_path, corpus_file):
    assert run_app("prepare", str(corpus_file), "--data-dir", "data", cwd=tmp_path).returncode == 0
    result = run_app("train", "--name", "again", "--recipe", "classic", "--data-dir", "data", *FIXTURE_FLAGS,
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    old = load_file(FIXTURE / "model.safetensors")
    new = load_file(tmp_path / "models" / "again" / "model.safetensors")
    assert old.keys() == new.keys()
    # Bit for bit on the machine that saved the fixture; another CPU's kernels round differently (measured
    # 1.2e-7 at most after 30 steps on one, 7e-9 on one thread), while a real change moves them far more (ReLU² for
    # GELU: 8e-3; a learning rate 1% higher: 5e-5).
    worst = max((old[k] - new[k]).abs().max().item() for k in old)
    assert worst <= 1e-6, f"classic weights differ from the old model's by up to {worst:.2e}"


def test_compare_prints_configs_side_by_side_and_each_continuation(tmp_path):
    for name in ("old", "same"):
        shutil.copytree(FIXTURE, tmp_path / "models" / name)
    result = run_app("compare", "old", "same", "--prompt", "To be", "--seed", "3", "--chars", "40", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "old" in lines[0] and "same" in lines[0]
    assert any(line.startswith("pos_encoding") and line.count("learned") == 2 for line in lines)
    texts = [block.split("\n", 1)[1].strip() for block in result.stdout.split("\n--- ")[1:]]
    assert len(texts) == 2 and texts[0] == texts[1] and texts[0].startswith("To be")  # same weights, same seed
    alone = run_app("compare", "old", cwd=tmp_path)
    assert alone.returncode == 2 and "two or more" in alone.stderr


def test_fp16_trains_with_a_grad_scaler_whose_state_is_checkpointed(
    tmp_path, monkeypatch, tiny_model_config, tiny_train_config
):
    """GPUs without bf16 (T4, V100) autocast in fp16; the scaler is exercised here with CPU fp16 autocast."""
    from core import checkpoint as ckpt
    from core import trainer

    monkeypatch.setattr(trainer, "autocast_dtype", lambda device, name: torch.float16)
    config = dataclasses.replace(tiny_train_config, checkpoint_interval=10, max_iters=40)
    full: list[float] = []
    result = train(tiny_model_config, config, out_dir=tmp_path / "full",
                   hooks=TrainHooks(on_step=lambda e: full.append(e.loss)))  # fmt: skip
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    state = ckpt.latest_checkpoint(tmp_path / "full").state["grad_scaler"]
    assert state["scale"] > 0 and "_growth_tracker" in state
    first: list[float] = []
    train(tiny_model_config, config, out_dir=tmp_path / "split",
          hooks=TrainHooks(on_step=lambda e: first.append(e.loss), should_stop=lambda: len(first) >= 15))  # fmt: skip
    second: list[float] = []
    train(tiny_model_config, config, out_dir=tmp_path / "split", resume=True,
          hooks=TrainHooks(on_step=lambda e: second.append(e.loss)))  # fmt: skip
    assert first + second == pytest.approx(full, abs=1e-6)


def _muon_runs(make, steps: int = 4, shapes=((24, 8), (8, 32))) -> tuple[list[torch.Tensor], dict]:
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(*shape)) for shape in shapes]
    optimizer = make(weights)
    for _ in range(steps):
        optimizer.zero_grad()
        sum((w.sin() ** 2).sum() for w in weights).backward()
        optimizer.step()
    return [w.detach().clone() for w in weights], optimizer.state_dict()


def test_muon_in_bf16_is_torchs_and_in_fp32_the_same_update_more_precisely():
    reference, reference_state = _muon_runs(lambda w: torch.optim.Muon(w, lr=0.02))
    same, same_state = _muon_runs(lambda w: Muon(w, lr=0.02, ns_dtype=torch.bfloat16))
    precise, precise_state = _muon_runs(lambda w: Muon(w, lr=0.02, ns_dtype=torch.float32))
    assert all(torch.equal(a, b) for a, b in zip(reference, same))
    assert all(not torch.equal(a, b) and torch.allclose(a, b, atol=2e-3) for a, b in zip(reference, precise))
    loaded = Muon([torch.nn.Parameter(w.clone()) for w in precise], lr=0.02, ns_dtype=torch.float32)
    loaded.load_state_dict(reference_state)  # checkpoints move between the two
    assert precise_state["state"].keys() == reference_state["state"].keys()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_muon_orthogonalises_same_shape_matrices_together_as_it_would_one_by_one(dtype):
    torch.manual_seed(0)
    grads = torch.randn(3, 24, 8)
    args = ((3.4445, -4.7750, 2.0315), 5, 1e-7, dtype)
    together = orthogonalize(grads, *args)
    one_by_one = torch.stack([orthogonalize(g, *args) for g in grads])
    assert together.shape == grads.shape
    assert torch.allclose(together.float(), one_by_one.float(), atol=1e-5 if dtype == torch.float32 else 2e-2)
    # a whole step: several same-shape matrices (as a model's layers) train as torch's Muon trains them
    shapes = [(24, 8)] * 3 + [(8, 32)]
    initial, _ = _muon_runs(lambda w: torch.optim.SGD(w, lr=0.0), shapes=shapes)
    reference, _ = _muon_runs(lambda w: torch.optim.Muon(w, lr=0.02), shapes=shapes)
    batched, _ = _muon_runs(lambda w: Muon(w, lr=0.02, ns_dtype=dtype), shapes=shapes)
    assert all((a - w).abs().max() > 1e-2 for a, w in zip(reference, initial))  # the steps moved every matrix
    assert all(torch.allclose(a, b, atol=2e-3) for a, b in zip(reference, batched))


@pytest.mark.parametrize("native", [True, False])
def test_muon_orthogonalises_in_bf16_only_where_the_cpu_multiplies_bf16_natively(monkeypatch, native):
    monkeypatch.setattr("core.device.cpu_has_native_bf16", lambda: native)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11))
    optimizer = model.optimizer(1e-3, 0.1, (0.9, 0.99), torch.device("cpu"), kind="muon")
    (muon,) = [opt for opt in optimizer.optimizers if isinstance(opt, Muon)]
    assert muon.ns_dtype == (torch.bfloat16 if native else torch.float32)

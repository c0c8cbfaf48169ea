"""The training loop: a function with hooks, used by the CLI, tuning trials and the workbench alike.

    result = train(ModelConfig(...), TrainConfig(...), out_dir=Path("models/tiny"), hooks=TrainHooks(...))

`on_step` and `on_eval` receive events (an `on_eval` hook may raise, e.g. optuna.TrialPruned, to end
the run); `should_stop` is polled every step and ends the run cleanly (checkpoint and model saved).
With `out_dir=None` nothing is written (tuning trials).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from core import checkpoint as ckpt
from core.config import COMPILE_MIN_MINUTES, ModelConfig, TrainConfig, to_dict
from core.data import BatchSampler, DataError, Dataset
from core.device import autocast, autocast_dtype, configure, device_name, pick_device, seed_everything
from core.distributed import SINGLE, DistContext
from core.fileio import append_line, atomic_write_text, printable
from core.model import GPT
from core.sampling import SamplingConfig, complete
from core.variants import open_dataset

log = logging.getLogger(__name__)
# Param-group fields a run takes from its config even when it resumes a checkpoint saved with others.
_CONFIGURED_GROUP_KEYS = ("peak_lr", "weight_decay")


class LossDiverged(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class StepEvent:
    step: int
    max_iters: int
    loss: float
    lr: float
    tokens_per_s: float
    elapsed_s: float  # since this call started
    run_s: float = 0.0  # the run's seconds across its resumes


@dataclass
class EvalEvent:
    step: int
    train_loss: float
    val_loss: float
    best_val_loss: float
    improved: bool
    lr: float
    tokens_per_s: float
    elapsed_s: float
    sample: str = ""

    def as_record(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "sample"}


@dataclass
class TrainHooks:
    on_step: Callable[[StepEvent], None] | None = None
    on_eval: Callable[[EvalEvent], None] | None = None
    should_stop: Callable[[], bool] | None = None
    on_finish: Callable[[GPT], None] | None = None  # the model as training left it (not the kept best weights)
    on_status: Callable[[str], None] | None = None  # a phase with no steps for a while (compiling)


@dataclass
class TrainResult:
    """`val_loss`/`train_loss` are those of the kept (best-val) weights, estimated on `eval_iters` batches (what
    chose them); `whole_val_loss` is theirs over the whole validation split, as `evaluate` scores it, when the
    run saves: the figure its card and every table show."""

    val_loss: float
    train_loss: float
    iters: int
    best_step: int
    tokens_per_s: float
    elapsed_s: float
    stop_reason: str  # max_iters, time_budget, early_stop, stopped
    out_dir: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    whole_val_loss: float | None = None

    @property
    def shown_val_loss(self) -> float:
        """The one figure to show: the whole split's when scored, else the estimate."""
        return self.whole_val_loss if self.whole_val_loss is not None else self.val_loss

    def final_line(self) -> str:
        return (
            f"final val_loss={self.shown_val_loss:.4f} train_loss={self.train_loss:.4f} "
            f"iters={self.iters} tokens_per_s={self.tokens_per_s:.0f}"
        )


def progress_fraction(event: StepEvent, config: TrainConfig) -> float:
    """How far a run is, 0 to 1: by steps, or by time when a time budget ends it sooner."""
    fraction = event.step / event.max_iters if event.max_iters else 0.0
    if config.max_minutes:
        fraction = max(fraction, event.elapsed_s / (config.max_minutes * 60))
    return min(1.0, fraction)


def lr_at(progress: float, step: int, config: TrainConfig) -> float:
    """Linear warmup, then (cosine) decay to `final_lr` as progress goes 0 -> 1, or (wsd) the peak rate until
    the last `cooldown_fraction` of the run and a linear decay to `final_lr` over it.

    The warmup lasts `warmup_fraction` of the run when that is set (so it fits a budget in minutes as well as
    one in steps), else `warmup_iters` steps.
    """
    if config.warmup_fraction:
        warm, one_step = config.warmup_fraction, 1 / config.step_limit
        if progress < warm:
            return config.lr * (progress + one_step) / (warm + one_step)
    else:
        if step < config.warmup_iters:
            return config.lr * (step + 1) / (config.warmup_iters + 1)
        warm = config.warmup_iters / config.step_limit
    if config.schedule == "wsd":
        decay_from = 1.0 - config.cooldown_fraction
        if progress <= decay_from:
            return config.lr
        ratio = min(1.0, (progress - decay_from) / max(1e-9, config.cooldown_fraction))
        return config.lr + ratio * (config.final_lr - config.lr)
    ratio = min(1.0, max(0.0, (progress - warm) / max(1e-9, 1.0 - warm)))
    return config.final_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (config.lr - config.final_lr)


@torch.no_grad()
def estimate_loss(
    model: torch.nn.Module, dataset: Dataset, config: ModelConfig, train_config: TrainConfig, device, amp_dtype
) -> dict[str, float]:
    """Mean loss over `eval_iters` batches of each split; the same batches at every eval (fixed seed).

    Without `train_config.eval_train` the train split is skipped (and left out of the result).
    """
    was_training = model.training
    model.eval()
    losses = {}
    for split, tokens in dataset.tokens.items():
        if split == "train" and not train_config.eval_train:
            continue
        sampler = BatchSampler(tokens, config.block_size, train_config.batch_size, train_config.seed + 1, device)
        total = torch.zeros((), device=device)
        for _ in range(train_config.eval_iters):
            x, y = sampler.next_batch()
            with autocast(device, amp_dtype):
                _, loss = model(x, y)
            total += loss.float()
        losses[split] = total.item() / train_config.eval_iters
    model.train(was_training)
    return losses


@torch.no_grad()
def split_loss(
    model: GPT, tokens, batch_size: int = 64, device: torch.device | str | None = None, max_chars: int = 0
) -> float:
    """Mean loss per character over a whole split: consecutive windows of the model's context, each
    character predicted once (the first of each window with less context). Use this, not `estimate_loss`,
    to compare models: random batches of two runs of one recipe differ by ~0.03. With `max_chars`, windows
    evenly spread over the split, the same for every model of that context."""
    block = model.config.block_size
    device = device or next(model.parameters()).device
    data = torch.from_numpy(tokens.astype("int64"))
    windows = (len(data) - 1) // block
    if windows < 1:
        raise DataError(f"the split has {len(data)} characters, fewer than a context of {block} + 1")
    x_all = data[: windows * block].view(windows, block)
    y_all = data[1 : windows * block + 1].view(windows, block)
    if max_chars and max_chars // block < windows:
        keep = torch.linspace(0, windows - 1, max(1, max_chars // block)).long()
        x_all, y_all, windows = x_all[keep], y_all[keep], len(keep)
    was_training = model.training
    model.eval()
    total = 0.0
    for start in range(0, windows, batch_size):
        x, y = x_all[start : start + batch_size].to(device), y_all[start : start + batch_size].to(device)
        _, loss = model(x, y)
        total += loss.item() * x.numel()
    model.train(was_training)
    return total / (windows * block)


COMPILING = "compiling the training step (once; no steps for up to a minute on 2 cores)"


class AutoCompile:
    """`--compile auto`: after the first steps, compile once if the run has COMPILE_MIN_MINUTES or more left.

    Compilation errors (no C++ compiler, an unsupported op) fall back to eager steps instead of failing the run.
    """

    SETTLE_STEPS = 10  # the first steps are slower (allocations, caches); the run's pace is read after them

    def __init__(self) -> None:
        self.steps, self.decided = 0, False

    def observe(self, step_s: float, seconds_left: float) -> bool:
        """Whether to compile now (true at most once a run)."""
        self.steps += 1
        if self.decided or self.steps < self.SETTLE_STEPS:
            return False
        self.decided = True
        return seconds_left >= COMPILE_MIN_MINUTES * 60

    @staticmethod
    def compiled(model: GPT) -> torch.nn.Module:
        import torch._dynamo

        torch._dynamo.config.suppress_errors = True  # a failed compile runs eagerly
        log.info("compiling the training step (--compile auto: a long run left)")
        return torch.compile(model)


def score_kept_weights(weights: dict[str, torch.Tensor], model_config: ModelConfig, dataset: Dataset, device):
    """The saved weights' loss per character on the whole validation split, as `evaluate` computes it."""
    from core.evaluate import score_ids

    with torch.random.fork_rng(devices=[]):  # building it draws initial weights: the run's random state stays
        model = GPT(model_config)
    ckpt.load_weights(model, weights, Path("the kept weights"))
    return score_ids(model.to(device), dataset.vocab, dataset.tokens["val"])


def data_record(dataset: Dataset) -> dict[str, Any]:
    """What a saved model keeps of its data, for its card: where it came from and how it was split."""
    stats = dataset.stats
    return {
        "dir": printable(str(dataset.data_dir)),
        "tokenizer": dataset.vocab.kind,
        "sources": [printable(str(name)) for name in stats.get("sources", [])[:20]],
        "chars": {"train": stats.get("train_chars"), "val": stats.get("val_chars")},
        "tokens": {split: len(tokens) for split, tokens in dataset.tokens.items()},
    }


def train(
    model_config: ModelConfig,
    train_config: TrainConfig,
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
    hooks: TrainHooks | None = None,
    info: dict[str, Any] | None = None,
    dataset: Dataset | None = None,
    dist: DistContext = SINGLE,
    budget_spans_resumes: bool = True,
) -> TrainResult:
    """Train a model; with `out_dir`, checkpoint and save it there (see core.checkpoint for the layout).
    `max_minutes` is the run's across its resumes (`budget_spans_resumes`), or this call's (a tournament's slice).

    Under torchrun (`dist.enabled`) every rank trains on its own random windows, gradients are averaged,
    and only rank 0 writes checkpoints, metrics and the model; the global batch is
    batch_size x grad_accum x world_size.
    """
    hooks = hooks or TrainHooks()
    train_config.validate()
    out = Path(out_dir) if out_dir is not None else None
    writes = out is not None and dist.is_main
    device = pick_device(dist.device(train_config.device))
    configure(device)
    amp_dtype = autocast_dtype(device, train_config.dtype)
    dataset = dataset or open_dataset(train_config.data_dir)
    model_config = dataclasses.replace(model_config, vocab_size=len(dataset.vocab)).validate()
    dataset.check_block_size(model_config.block_size)

    seed_everything(train_config.seed)
    model = GPT(model_config).to(device)
    optimizer = model.optimizer(
        train_config.lr,
        train_config.weight_decay,
        (train_config.beta1, train_config.beta2),
        device,
        kind=train_config.optimizer,
        muon_lr=train_config.muon_lr,
        muon_weight_decay=train_config.muon_weight_decay,
    )
    # fp16 autocast (GPUs without bf16) needs loss scaling, or small gradients underflow to zero.
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    sampler = BatchSampler(
        dataset.tokens["train"], model_config.block_size, train_config.batch_size, train_config.seed + dist.rank, device
    )
    step, best_val, best_train, best_step, evals_without_gain = 0, math.inf, math.inf, 0, 0
    best_weights: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = []

    checkpoint = ckpt.latest_checkpoint(out) if (resume and out is not None) else None
    if resume and checkpoint is None:
        log.warning("no checkpoint to resume in %s; starting from scratch", out)
    if checkpoint is not None:
        saved_vocab = checkpoint.state.get("vocab")
        if saved_vocab is not None and saved_vocab != dataset.vocab.chars:
            raise DataError(
                f"the checkpoint in {out} was trained with a different vocabulary than {dataset.data_dir}; "
                "train under a new --name, or prepare the same data again"
            )
        ckpt.load_weights(model, checkpoint.weights, checkpoint.path)
        configured = [{k: g[k] for k in _CONFIGURED_GROUP_KEYS} for g in optimizer.param_groups]
        optimizer.load_state_dict(checkpoint.optimizer)
        # The run's config wins over the checkpoint's: a continued run may change its rates or decay.
        for group, values in zip(optimizer.param_groups, configured):
            group.update(values)
        if "grad_scaler" in checkpoint.state:
            scaler.load_state_dict(checkpoint.state["grad_scaler"])
        torch.set_rng_state(checkpoint.rng["torch"])
        if device.type == "cuda" and "cuda" in checkpoint.rng:
            torch.cuda.set_rng_state(checkpoint.rng["cuda"], device)
        step = checkpoint.step
        if checkpoint.state.get("world_size", 1) == dist.world_size == 1:
            sampler.set_state(checkpoint.state["sampler"])  # bit-exact resume
        else:  # another process count: fresh, distinct windows per rank
            sampler = BatchSampler(
                dataset.tokens["train"],
                model_config.block_size,
                train_config.batch_size,
                train_config.seed * 1_000_003 + step * 1009 + dist.rank,
                device,
            )
        best_val, best_train = checkpoint.state["best_val"], checkpoint.state["best_train"]
        best_step, evals_without_gain = checkpoint.state["best_step"], checkpoint.state["evals_without_gain"]
        best_weights = checkpoint.best_weights
        history = [h for h in checkpoint.state.get("history", []) if h["step"] <= step]
        log.info("resumed from %s at step %d", checkpoint.path, step)
    if writes:
        out.mkdir(parents=True, exist_ok=True)
        ckpt.remove_leftovers(out)
        atomic_write_text(out / ckpt.METRICS, "".join(json.dumps(h) + "\n" for h in history))

    def wrap(module: torch.nn.Module) -> torch.nn.Module:
        if not dist.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)

    runner = wrap(torch.compile(model) if train_config.compile == "on" else model)
    # ranks must agree on their graphs: under torchrun `auto` stays eager (`on` compiles every rank from the start)
    auto_compile = AutoCompile() if train_config.compile == "auto" and not dist.enabled else None
    model.train()
    tokens_per_step = train_config.batch_size * train_config.grad_accum * model_config.block_size * dist.world_size
    started = time.perf_counter()
    train_seconds, steps_this_run = 0.0, 0
    budget_s = train_config.max_minutes * 60
    stop_reason = "max_iters"
    summary = {
        "model": to_dict(model_config),
        "train": to_dict(train_config),
        "data": data_record(dataset),
        "device": device_name(device),
        "parameters": model.num_params(),
        **(info or {}),
    }
    resumed = checkpoint.state if checkpoint is not None else {}
    best_sample, previous_seconds = resumed.get("best_sample", ""), resumed.get("seconds", 0.0)
    if budget_s and budget_spans_resumes:  # what the earlier calls of this run spent is spent
        budget_s = max(budget_s - previous_seconds, 1e-3)

    def tokens_per_s() -> float:
        return steps_this_run * tokens_per_step / max(train_seconds, 1e-9)

    def seconds_left() -> float:
        """What the run has left, by its step limit at the current pace and by its time budget."""
        pace = train_seconds / max(steps_this_run, 1)
        left = (train_config.step_limit - step) * pace
        return min(left, budget_s - (time.perf_counter() - started)) if budget_s else left

    def progress() -> float:
        fraction = step / train_config.step_limit
        if budget_s:
            fraction = max(fraction, (time.perf_counter() - started) / budget_s)
        return fraction

    kept_score: dict[str, float] = {}  # the kept weights over the whole validation split, once training ends

    def save_all() -> None:
        if not writes:
            return
        weights = ckpt.weights_for_saving(model)
        rng = {"torch": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        state = {
            "sampler": sampler.state(),
            "best_val": best_val,
            "best_train": best_train,
            "best_step": best_step,
            "evals_without_gain": evals_without_gain,
            "best_sample": best_sample,
            "seconds": previous_seconds + time.perf_counter() - started,
            "history": history,
            "world_size": dist.world_size,
            "vocab": dataset.vocab.chars,
            "model_config": to_dict(model_config),
            "train_config": to_dict(train_config),
        }
        if scaler.is_enabled():
            state["grad_scaler"] = scaler.state_dict()
        record = {
            **summary,
            "summary": {
                "best_val_loss": best_val,
                "train_loss_at_best": best_train,
                "best_step": best_step,
                "iters": step,
                "tokens_seen": step * tokens_per_step,
                "tokens_per_char": dataset.tokens_per_char["train"],  # 1 for characters; a BPE's is below
                "seconds": round(previous_seconds + time.perf_counter() - started, 1),
                "sample": best_sample,  # from the evaluation that kept the saved weights
                **kept_score,
                "saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        }
        try:
            ckpt.save_checkpoint(out, step, weights, best_weights or weights, optimizer.state_dict(), rng, state)
            ckpt.save_model(out, best_weights or weights, model_config, dataset.vocab, record)
        except (OSError, SafetensorError) as err:  # safetensors' own error for a full disk is no OSError
            previous = ckpt.latest_checkpoint(out)
            kept = f"the checkpoint of step {previous.step} is intact" if previous else "no earlier checkpoint exists"
            reason = getattr(err, "strerror", None) or str(err).strip().splitlines()[-1]
            raise ckpt.ModelError(
                f"cannot write the model in {out} ({reason}); {kept}. Free disk space, then --resume."
            ) from err

    def evaluate() -> None:
        nonlocal best_val, best_train, best_step, best_weights, evals_without_gain, best_sample
        losses = estimate_loss(model, dataset, model_config, train_config, device, amp_dtype)
        if not all(math.isfinite(v) for v in losses.values()):
            raise LossDiverged(f"evaluation loss is not finite at step {step}: {losses}")
        losses = {split: loss * dataset.tokens_per_char[split] for split, loss in losses.items()}  # nats/char
        losses.setdefault("train", math.nan)
        improved = losses["val"] < best_val
        if improved:
            best_val, best_train, best_step, evals_without_gain = losses["val"], losses["train"], step, 0
            if writes:  # the kept weights are only ever saved
                best_weights = ckpt.weights_for_saving(model)
        else:
            evals_without_gain += 1
        sample = ""
        if train_config.sample_chars and dist.is_main:
            settings = SamplingConfig(temperature=0.8, max_new_tokens=train_config.sample_chars, seed=step)
            sample = complete(model, dataset.vocab, "\n", settings)
        if improved:
            best_sample = sample
        event = EvalEvent(
            step=step,
            train_loss=losses["train"],
            val_loss=losses["val"],
            best_val_loss=best_val,
            improved=improved,
            lr=lr_at(progress(), step, train_config),
            tokens_per_s=tokens_per_s(),
            elapsed_s=time.perf_counter() - started,
            sample=sample,
        )
        history.append(event.as_record())
        if writes:
            append_line(out / ckpt.METRICS, json.dumps(event.as_record()))
        if hooks.on_eval:
            hooks.on_eval(event)

    last_eval_step = step if history and history[-1]["step"] == step else -1
    next_eval_s = train_config.eval_seconds
    while step < train_config.step_limit:
        stop_asked, over_budget = dist.any(
            bool(hooks.should_stop and hooks.should_stop()),
            bool(budget_s and time.perf_counter() - started >= budget_s),
        )
        if stop_asked or over_budget:
            stop_reason = "stopped" if stop_asked else "time_budget"
            break
        step_started = time.perf_counter()
        lr = lr_at(progress(), step, train_config)
        for group in optimizer.param_groups:  # every group follows the schedule from its own peak rate
            group["lr"] = lr * (group.get("peak_lr", train_config.lr) / train_config.lr)
        loss_sum = 0.0
        for micro in range(train_config.grad_accum):
            x, y = sampler.next_batch()
            last = micro == train_config.grad_accum - 1
            sync = runner.no_sync() if dist.enabled and not last else contextlib.nullcontext()
            with sync:
                with autocast(device, amp_dtype):
                    _, loss = runner(x, y)
                scaler.scale(loss / train_config.grad_accum).backward()
            loss_sum += loss.item()
        loss_value = loss_sum / train_config.grad_accum
        (diverged,) = dist.any(not math.isfinite(loss_value))
        if diverged:
            raise LossDiverged(
                f"training loss became {loss_value} at step {step + 1} (lr={lr:.2e}); the last good "
                "checkpoint is kept. Lower --lr or raise --warmup-iters, then --resume or start again."
            )
        if train_config.grad_clip:
            for opt in getattr(optimizer, "optimizers", [optimizer]):
                scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip)
        for opt in getattr(optimizer, "optimizers", [optimizer]):
            scaler.step(opt)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        steps_this_run += 1
        train_seconds += time.perf_counter() - step_started
        if auto_compile and auto_compile.observe(time.perf_counter() - step_started, seconds_left()):
            if hooks.on_status:
                hooks.on_status(COMPILING)
            runner = wrap(auto_compile.compiled(model))
        if hooks.on_step:
            per_char = loss_value * dataset.tokens_per_char["train"]
            elapsed = time.perf_counter() - started
            hooks.on_step(
                StepEvent(
                    step, train_config.max_iters, per_char, lr, tokens_per_s(), elapsed, previous_seconds + elapsed
                )
            )
        if train_config.eval_seconds:
            (due,) = dist.any(time.perf_counter() - started >= next_eval_s)  # clocks differ between ranks
        else:
            due = step % train_config.eval_interval == 0
        if due or step == train_config.max_iters:
            evaluate()
            last_eval_step = step
            # one eval per period even when a step is longer than it, so eval k is the k-th period's
            next_eval_s += train_config.eval_seconds
            if train_config.patience and evals_without_gain >= train_config.patience:
                stop_reason = "early_stop"
                break
        if step % train_config.checkpoint_every == 0 and step < train_config.step_limit:
            save_all()

    if last_eval_step != step:
        evaluate()
    if dist.enabled:
        summary["distributed"] = {"world_size": dist.world_size, "ranks_agree": dist.same_everywhere(model)}
    if writes:  # the kept weights over the whole validation split: the one figure the card, evaluate and tables show
        scored = score_kept_weights(best_weights or ckpt.weights_for_saving(model), model_config, dataset, device)
        kept_score.update(val_loss=scored.nats_per_char, val_chars=scored.chars)
    save_all()
    if hooks.on_finish:
        hooks.on_finish(model)
    return TrainResult(
        val_loss=best_val,
        train_loss=best_train,
        iters=step,
        best_step=best_step,
        tokens_per_s=tokens_per_s(),
        elapsed_s=time.perf_counter() - started,
        stop_reason=stop_reason,
        out_dir=str(out) if out else None,
        history=history,
        whole_val_loss=kept_score.get("val_loss"),
    )

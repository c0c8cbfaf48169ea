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
from core.autocompile import COMPILING, AutoCompile, compile_model, verdict_key
from core.base import Base, start_weights, starting_from
from core.config import ModelConfig, TrainConfig, to_dict
from core.data import BatchSampler, DataError, Dataset, data_record
from core.device import autocast, autocast_dtype, configure, device_name, pick_device, seed_everything
from core.distributed import SINGLE, DistContext
from core.evaluate import score_kept_weights
from core.fileio import append_line, atomic_write_text
from core.model import GPT
from core.sampling import SamplingConfig, complete
from core.schedule import lr_at
from core.tracking import Tracker, open_tracker
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


@dataclass
class Run:
    """A training run as its loop carries it: what it trains with, and the state its checkpoint saves and a
    resume reads back (`_resume`, `_save`)."""

    model_config: ModelConfig
    train_config: TrainConfig
    dataset: Dataset
    device: torch.device
    amp_dtype: torch.dtype
    model: GPT
    optimizer: Any
    scaler: torch.amp.GradScaler
    sampler: BatchSampler
    dist: DistContext
    hooks: TrainHooks
    out: Path | None
    writes: bool  # this process saves (rank 0, with a folder)
    step: int = 0
    best_val: float = math.inf
    best_train: float = math.inf
    best_step: int = 0
    evals_without_gain: int = 0
    best_weights: dict[str, torch.Tensor] | None = None  # the kept weights (best validation), when it saves
    best_sample: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    previous_seconds: float = 0.0  # what the run's earlier calls trained for
    summary: dict[str, Any] = field(default_factory=dict)  # what config.json records besides the summary
    kept_score: dict[str, float] = field(default_factory=dict)  # the kept weights over the whole validation split
    started: float = 0.0
    train_seconds: float = 0.0
    steps_this_run: int = 0
    budget_s: float = 0.0  # what this call may train for (0: no time budget)
    base: Base | None = None  # the saved model a new run starts from (init_from); None once resumed
    base_record: dict[str, Any] | None = None  # what config.json keeps of that model
    tracker: Tracker | None = None  # the dashboard it also reports to (core.tracking)

    @property
    def tokens_per_step(self) -> int:
        config = self.train_config
        return config.batch_size * config.grad_accum * self.model_config.block_size * self.dist.world_size

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def tokens_per_s(self) -> float:
        return self.steps_this_run * self.tokens_per_step / max(self.train_seconds, 1e-9)

    def seconds_left(self) -> float:
        """What the run has left, by its step limit at the current pace and by its time budget."""
        pace = self.train_seconds / max(self.steps_this_run, 1)
        left = (self.train_config.step_limit - self.step) * pace
        return min(left, self.budget_s - self.elapsed()) if self.budget_s else left

    def progress(self) -> float:
        fraction = self.step / self.train_config.step_limit
        if self.budget_s:
            fraction = max(fraction, self.elapsed() / self.budget_s)
        return fraction


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
    score_whole_split: bool = True,
) -> TrainResult:
    """Train a model; with `out_dir`, checkpoint and save it there (see core.checkpoint for the layout).
    `max_minutes` is the run's across its resumes (`budget_spans_resumes`), or this call's (a tournament's slice).
    `score_whole_split` False saves without the whole-split score (a tournament's slice: it cost more than it trained).

    Under torchrun (`dist.enabled`) every rank trains on its own random windows, gradients are averaged,
    and only rank 0 writes checkpoints, metrics and the model; the global batch is
    batch_size x grad_accum x world_size.
    """
    train_config.validate()
    resuming = resume and out_dir is not None and ckpt.has_checkpoint(Path(out_dir))
    run = _start(model_config, train_config, out_dir, dataset, dist, hooks or TrainHooks(), resuming)
    if resume:
        _resume(run)
    if train_config.init_from and run.step == 0:  # a new run from a saved model: its weights, grown to the vocab
        note = start_weights(run.model, run.dataset, run.base, train_config.init_from)
        if note and run.writes:
            log.warning(note)
            (run.hooks.on_status or log.debug)(note)
    _begin(run, info, budget_spans_resumes)
    try:
        return _finish(run, _loop(run), score_whole_split)
    finally:
        if run.tracker:
            _finish_tracker(run)


def _finish_tracker(run: Run) -> None:
    """A dashboard that fails to close is a warning: the run is saved, and its own error (if any) is the one told."""
    try:
        run.tracker.finish(run.best_sample)
    except Exception as err:  # noqa: BLE001 - any tracker's failure, after the run itself is done
        log.warning("could not finish the --report-to %s run: %s", run.train_config.report_to, err)


def _loop(run: Run) -> str:
    """Steps, evaluations and checkpoints until a limit or a stop; why it stopped."""
    train_config, dist = run.train_config, run.dist
    runner = _wrap(run, compile_model(run.model, strict=True) if train_config.compile == "on" else run.model)
    # ranks must agree on their graphs: under torchrun `auto` stays eager (`on` compiles every rank from the start)
    auto_compile = AutoCompile(_compile_key(run)) if train_config.compile == "auto" and not dist.enabled else None
    run.started = time.perf_counter()  # after the runner is built, as a resumed run's clock always was
    evals, stop_reason = _EvalClock(run), "max_iters"
    while run.step < train_config.step_limit:
        stop_reason = _stop_asked(run) or stop_reason
        if stop_reason != "max_iters":
            break
        step_started = time.perf_counter()
        lr, loss = _optimizer_step(run, runner)
        run.step += 1
        run.steps_this_run += 1
        run.train_seconds += time.perf_counter() - step_started
        action = auto_compile.observe(time.perf_counter() - step_started, run.seconds_left()) if auto_compile else None
        if action == "compile":
            if run.hooks.on_status:
                run.hooks.on_status(COMPILING)
            runner = _wrap(run, auto_compile.compiled(run.model))
        elif action == "eager":
            runner = _wrap(run, run.model)
        _report_step(run, lr, loss)
        if evals.due():
            _evaluate(run)
            evals.done()
            if train_config.patience and run.evals_without_gain >= train_config.patience:
                stop_reason = "early_stop"
                break
        if run.step % train_config.checkpoint_every == 0 and run.step < train_config.step_limit:
            _save(run)
    if evals.last_step != run.step:
        _evaluate(run)
    return stop_reason


def _compile_key(run: Run) -> str:
    config = run.train_config
    shape = {**to_dict(run.model_config), "batch_size": config.batch_size, "grad_accum": config.grad_accum,
             "dtype": str(run.amp_dtype), "optimizer": config.optimizer}  # fmt: skip
    return verdict_key(device_name(run.device), shape)


def _start(model_config: ModelConfig, train_config: TrainConfig, out_dir, dataset: Dataset | None, dist: DistContext,
           hooks: TrainHooks, resuming: bool = False) -> Run:  # fmt: skip
    """The run's device, data, model, optimizer and batches, seeded; `resuming` a run that has a checkpoint."""
    out = Path(out_dir) if out_dir is not None else None
    device = pick_device(dist.device(train_config.device))
    configure(device)
    amp_dtype = autocast_dtype(device, train_config.dtype)
    base, base_record = None, None
    if train_config.init_from:  # the text as the base reads it, whatever dataset the caller opened
        start = starting_from(train_config, to_dict(model_config), out, resuming)
        base, base_record = start.base, start.record
        if dataset is None or dataset.data_dir.resolve() != start.data_dir.resolve():
            dataset = open_dataset(start.data_dir)
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
    return Run(model_config, train_config, dataset, device, amp_dtype, model, optimizer, scaler, sampler, dist, hooks,
               out, writes=out is not None and dist.is_main, base=base, base_record=base_record)  # fmt: skip


def _resume(run: Run) -> None:
    """Continue from the run's latest checkpoint: weights, optimizer, random state, batches and bookkeeping."""
    checkpoint = ckpt.latest_checkpoint(run.out) if run.out is not None else None
    if checkpoint is None:
        log.warning("no checkpoint to resume in %s; starting from scratch", run.out)
        return
    dataset, state = run.dataset, checkpoint.state
    saved_vocab = state.get("vocab")
    if saved_vocab is not None and saved_vocab != dataset.vocab.chars:
        raise DataError(
            f"the checkpoint in {run.out} was trained with a different vocabulary than {dataset.data_dir}; "
            "train under a new --name, or prepare the same data again"
        )
    ckpt.load_weights(run.model, checkpoint.weights, checkpoint.path)
    configured = [{k: g[k] for k in _CONFIGURED_GROUP_KEYS} for g in run.optimizer.param_groups]
    run.optimizer.load_state_dict(checkpoint.optimizer)
    # The run's config wins over the checkpoint's: a continued run may change its rates or decay.
    for group, values in zip(run.optimizer.param_groups, configured):
        group.update(values)
    if "grad_scaler" in state:
        run.scaler.load_state_dict(state["grad_scaler"])
    torch.set_rng_state(checkpoint.rng["torch"])
    if run.device.type == "cuda" and "cuda" in checkpoint.rng:
        torch.cuda.set_rng_state(checkpoint.rng["cuda"], run.device)
    run.step = checkpoint.step
    if state.get("world_size", 1) == run.dist.world_size == 1:
        run.sampler.set_state(state["sampler"])  # bit-exact resume
    else:  # another process count: fresh, distinct windows per rank
        config = run.train_config
        run.sampler = BatchSampler(dataset.tokens["train"], run.model_config.block_size, config.batch_size,
                                   config.seed * 1_000_003 + run.step * 1009 + run.dist.rank, run.device)  # fmt: skip
    run.best_val, run.best_train = state["best_val"], state["best_train"]
    run.best_step, run.evals_without_gain = state["best_step"], state["evals_without_gain"]
    run.best_weights = checkpoint.best_weights
    run.history = [h for h in state.get("history", []) if h["step"] <= run.step]
    run.best_sample, run.previous_seconds = state.get("best_sample", ""), state.get("seconds", 0.0)
    log.info("resumed from %s at step %d", checkpoint.path, run.step)


def _begin(run: Run, info: dict[str, Any] | None, budget_spans_resumes: bool) -> None:
    """The metrics file as the run has it, what config.json records, and the time budget of this call."""
    if run.writes:
        run.out.mkdir(parents=True, exist_ok=True)
        ckpt.remove_leftovers(run.out)
        atomic_write_text(run.out / ckpt.METRICS, "".join(json.dumps(h) + "\n" for h in run.history))
    run.model.train()
    run.budget_s = run.train_config.max_minutes * 60
    run.summary = {
        "model": to_dict(run.model_config),
        "train": to_dict(run.train_config),
        "data": data_record(run.dataset),
        "device": device_name(run.device),
        "parameters": run.model.num_params(),
        **({"base": run.base_record} if run.base_record else {}),
        **(info or {}),
    }
    if run.dist.is_main:
        config = run.train_config
        run.tracker = open_tracker(config.report_to, config.report_run, run.out, run.summary, run.step)
    if run.budget_s and budget_spans_resumes:  # what the earlier calls of this run spent is spent
        run.budget_s = max(run.budget_s - run.previous_seconds, 1e-3)


def _wrap(run: Run, module: torch.nn.Module) -> torch.nn.Module:
    if not run.dist.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[run.device.index] if run.device.type == "cuda" else None)


def _stop_asked(run: Run) -> str | None:
    """Why the run stops before its next step ("stopped", "time_budget"), if it does; every rank agrees."""
    stop_asked, over_budget = run.dist.any(
        bool(run.hooks.should_stop and run.hooks.should_stop()),
        bool(run.budget_s and run.elapsed() >= run.budget_s),
    )
    return "stopped" if stop_asked else "time_budget" if over_budget else None


def _optimizer_step(run: Run, runner: torch.nn.Module) -> tuple[float, float]:
    """One optimizer step over `grad_accum` micro-batches at the schedule's rate; (rate, mean loss)."""
    config, optimizer, scaler = run.train_config, run.optimizer, run.scaler
    lr = lr_at(run.progress(), run.step, config)
    for group in optimizer.param_groups:  # every group follows the schedule from its own peak rate
        group["lr"] = lr * (group.get("peak_lr", config.lr) / config.lr)
    loss_sum = 0.0
    for micro in range(config.grad_accum):
        x, y = run.sampler.next_batch()
        last = micro == config.grad_accum - 1
        sync = runner.no_sync() if run.dist.enabled and not last else contextlib.nullcontext()
        with sync:
            with autocast(run.device, run.amp_dtype):
                _, loss = runner(x, y)
            scaler.scale(loss / config.grad_accum).backward()
        loss_sum += loss.item()
    loss_value = loss_sum / config.grad_accum
    (diverged,) = run.dist.any(not math.isfinite(loss_value))
    if diverged:
        raise LossDiverged(
            f"training loss became {loss_value} at step {run.step + 1} (lr={lr:.2e}); the last good "
            "checkpoint is kept. Lower --lr or raise --warmup-iters, then --resume or start again."
        )
    if config.grad_clip:
        for opt in getattr(optimizer, "optimizers", [optimizer]):
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), config.grad_clip)
    for opt in getattr(optimizer, "optimizers", [optimizer]):
        scaler.step(opt)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return lr, loss_value


def _report_step(run: Run, lr: float, loss: float) -> None:
    if run.hooks.on_step:
        per_char = loss * run.dataset.tokens_per_char["train"]
        elapsed = run.elapsed()
        run.hooks.on_step(StepEvent(run.step, run.train_config.max_iters, per_char, lr, run.tokens_per_s(), elapsed,
                                    run.previous_seconds + elapsed))  # fmt: skip


class _EvalClock:
    """When the run evaluates: every `eval_interval` steps, or every `eval_seconds` (one eval per period even when
    a step is longer than it, so eval k is the k-th period's), and at the step limit."""

    def __init__(self, run: Run):
        self.run = run
        self.last_step = run.step if run.history and run.history[-1]["step"] == run.step else -1
        self.next_s = run.train_config.eval_seconds

    def due(self) -> bool:
        run, config = self.run, self.run.train_config
        if config.eval_seconds:
            (due,) = run.dist.any(run.elapsed() >= self.next_s)  # clocks differ between ranks
        else:
            due = run.step % config.eval_interval == 0
        return due or run.step == config.max_iters

    def done(self) -> None:
        self.last_step = self.run.step
        self.next_s += self.run.train_config.eval_seconds


def _evaluate(run: Run) -> None:
    """Estimate the losses, keep the weights when validation improved, sample, and tell the hooks."""
    config, dataset = run.train_config, run.dataset
    losses = estimate_loss(run.model, dataset, run.model_config, config, run.device, run.amp_dtype)
    if not all(math.isfinite(v) for v in losses.values()):
        raise LossDiverged(f"evaluation loss is not finite at step {run.step}: {losses}")
    losses = {split: loss * dataset.tokens_per_char[split] for split, loss in losses.items()}  # nats/char
    losses.setdefault("train", math.nan)
    improved = losses["val"] < run.best_val
    if improved:
        run.best_val, run.best_train, run.best_step, run.evals_without_gain = (
            losses["val"],
            losses["train"],
            run.step,
            0,
        )
        if run.writes:  # the kept weights are only ever saved
            run.best_weights = ckpt.weights_for_saving(run.model)
    else:
        run.evals_without_gain += 1
    sample = ""
    if config.sample_chars and run.dist.is_main:
        settings = SamplingConfig(temperature=0.8, max_new_tokens=config.sample_chars, seed=run.step)
        sample = complete(run.model, dataset.vocab, "\n", settings)
    if improved:
        run.best_sample = sample
    event = EvalEvent(step=run.step, train_loss=losses["train"], val_loss=losses["val"], best_val_loss=run.best_val,
                      improved=improved, lr=lr_at(run.progress(), run.step, config), tokens_per_s=run.tokens_per_s(),
                      elapsed_s=run.elapsed(), sample=sample)  # fmt: skip
    run.history.append(event.as_record())
    if run.writes:
        append_line(run.out / ckpt.METRICS, json.dumps(event.as_record()))
    if run.tracker:
        run.tracker.log(event.as_record(), run.step)
    if run.hooks.on_eval:
        run.hooks.on_eval(event)


def _save(run: Run) -> None:
    """The checkpoint (to resume) and the model (to use), both written whole or not at all."""
    if not run.writes:
        return
    weights = ckpt.weights_for_saving(run.model)
    rng = {"torch": torch.get_rng_state()}
    if run.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(run.device)
    seconds = run.previous_seconds + run.elapsed()
    state = {
        "sampler": run.sampler.state(),
        "best_val": run.best_val,
        "best_train": run.best_train,
        "best_step": run.best_step,
        "evals_without_gain": run.evals_without_gain,
        "best_sample": run.best_sample,
        "seconds": seconds,
        "history": run.history,
        "world_size": run.dist.world_size,
        "vocab": run.dataset.vocab.chars,
        "model_config": to_dict(run.model_config),
        "train_config": to_dict(run.train_config),
    }
    if run.scaler.is_enabled():
        state["grad_scaler"] = run.scaler.state_dict()
    record = {
        **run.summary,
        "summary": {
            "best_val_loss": run.best_val,
            "train_loss_at_best": run.best_train,
            "best_step": run.best_step,
            "iters": run.step,
            "tokens_seen": run.step * run.tokens_per_step,
            "tokens_per_char": run.dataset.tokens_per_char["train"],  # 1 for characters; a BPE's is below
            "seconds": round(seconds, 1),
            "sample": run.best_sample,  # from the evaluation that kept the saved weights
            **run.kept_score,
            "saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    }
    kept = run.best_weights or weights
    try:
        ckpt.save_checkpoint(run.out, run.step, weights, kept, run.optimizer.state_dict(), rng, state)
        ckpt.save_model(run.out, kept, run.model_config, run.dataset.vocab, record)
    except (OSError, SafetensorError) as err:  # safetensors' own error for a full disk is no OSError
        previous = ckpt.latest_checkpoint(run.out)
        intact = f"the checkpoint of step {previous.step} is intact" if previous else "no earlier checkpoint exists"
        reason = getattr(err, "strerror", None) or str(err).strip().splitlines()[-1]
        raise ckpt.ModelError(
            f"cannot write the model in {run.out} ({reason}); {intact}. Free disk space, then --resume."
        ) from err


def _finish(run: Run, stop_reason: str, score_whole_split: bool = True) -> TrainResult:
    """Score the kept weights over the whole validation split (the one figure the card, evaluate and tables
    show), save, and say what the run reached."""
    if run.dist.enabled:
        run.summary["distributed"] = {
            "world_size": run.dist.world_size,
            "ranks_agree": run.dist.same_everywhere(run.model),
        }
    if run.writes and score_whole_split:
        weights = run.best_weights or ckpt.weights_for_saving(run.model)
        scored = score_kept_weights(weights, run.model_config, run.dataset, run.device)
        run.kept_score.update(val_loss=scored.nats_per_char, val_chars=scored.chars)
    _save(run)
    if run.hooks.on_finish:
        run.hooks.on_finish(run.model)
    return TrainResult(
        val_loss=run.best_val,
        train_loss=run.best_train,
        iters=run.step,
        best_step=run.best_step,
        tokens_per_s=run.tokens_per_s(),
        elapsed_s=run.elapsed(),
        stop_reason=stop_reason,
        out_dir=str(run.out) if run.out else None,
        history=run.history,
        whole_val_loss=run.kept_score.get("val_loss"),
    )

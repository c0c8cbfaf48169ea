"""The Train tab's work: a run's configs from the form, started, resumed, stopped and shown; saved models
described and compared. The builder (workbench/tabs/train.py) only lays out widgets and maps results onto them."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

from core import checkpoint as ckpt
from core.base import fine_tune_configs, load_base, read_with, unseen_note, unseen_share
from core.checkpoint import read_metrics
from core.compare import compare
from core.config import ConfigError, ModelConfig, TrainConfig, recipe_configs
from core.data import DataError
from core.runs import ModelTaken, claim_model_dir, record_source, run_configs
from core.tracking import REPORT_TO
from core.trainer import TrainHooks, progress_fraction, train
from core.tune.config import TuningError
from core.tune.results import best_params
from core.tune.space import apply_params
from core.tune.storage import open_study
from core.variants import open_dataset
from workbench.jobs import INTERRUPTED, JobBusy, JobManager
from workbench.project import Project
from workbench.studies import StudyReader, model_names
from workbench.views import curves_figure, error_html, fmt_seconds, job_status_html, loss_figure, ok_html, progress_html

MODEL_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "dropout")
TRAIN_FIELDS = ("batch_size", "lr", "weight_decay", "warmup_iters")
BUDGET_FIELDS = ("max_iters", "max_minutes", "eval_interval", "eval_iters", "sample_chars")
INT_FIELDS = {"n_layer", "n_head", "n_embd", "block_size", "batch_size", "warmup_iters", "max_iters"} | {
    "eval_interval",
    "eval_iters",
    "sample_chars",
}
LABELS = {
    "n_layer": "Layers",
    "n_head": "Heads",
    "n_embd": "Width (n_embd)",
    "block_size": "Context (tokens)",
    "dropout": "Dropout",
    "batch_size": "Batch size",
    "lr": "Learning rate",
    "weight_decay": "Weight decay",
    "warmup_iters": "Warmup steps",
    "max_iters": "Max steps (0 = no limit)",
    "max_minutes": "Max minutes (0 = no limit)",
    "eval_interval": "Steps between evals",
    "eval_iters": "Batches per eval",
    "sample_chars": "Sample length (tokens)",
    "pos_encoding": "Positions",
    "norm": "Norm",
    "mlp": "MLP activation",
    "qk_norm": "QK-norm",
    "tie_head": "Tied head",
    "optimizer": "Optimiser",
    "muon_lr": "Muon learning rate",
    "schedule": "Schedule",
    "report_to": "Report to (dashboard)",
}
FIELDS = MODEL_FIELDS + TRAIN_FIELDS + BUDGET_FIELDS
# The recipe's options and their widgets' choices (bool: a checkbox, float: a number).
RECIPE_CHOICES: dict[str, Any] = {
    "pos_encoding": ("rope", "learned"),
    "norm": ("rmsnorm", "layernorm"),
    "mlp": ("relu2", "gelu"),
    "qk_norm": bool,
    "tie_head": bool,
    "optimizer": ("muon", "adamw"),
    "muon_lr": float,
    "schedule": ("wsd", "cosine"),
    "report_to": REPORT_TO,  # not the recipe's, but chosen beside it: where the run's numbers also go
}


def shown_value(value: Any) -> Any:
    """A tuned value as the form shows it: floats to four significant digits (the run gets the exact value)."""
    return float(f"{value:.4g}") if isinstance(value, float) else value


def model_details(project: Project, name: str | None) -> tuple[str, Any]:
    """Markdown describing a saved model, and its loss curves from metrics.jsonl."""
    if not name:
        return "No model chosen.", None
    try:
        folder = ckpt.model_dir(name, project.models_dir)
        info = ckpt.read_config(folder)
    except ckpt.ModelError as err:
        return f"**{err}**", None
    model, summary, source = info.get("model", {}), info.get("summary", {}), info.get("source")
    shape = ", ".join(f"{k}={model.get(k)}" for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"))
    recipe = ModelConfig.from_saved(model)
    optimizer = info.get("train", {}).get("optimizer", "adamw")
    shape += f" · {recipe.pos_encoding}, {recipe.norm}, {recipe.mlp}, {optimizer}"
    lines = [f"**{name}** — {shape}"]
    if summary:
        lines.append(saved_summary(summary, info.get("tokenizer", "char")))
    if source:
        lines.append(f"parameters from study {source.get('study')}, trial {source.get('trial')}")
    resumable = (folder / ckpt.CHECKPOINT_DIR).is_dir() and any((folder / ckpt.CHECKPOINT_DIR).glob("step-*"))
    lines.append("resumable: yes (Resume continues it)" if resumable else "resumable: no checkpoint")
    return "  \n".join(lines), loss_figure(read_metrics(folder), title=f"{name}: loss per evaluation")


def saved_summary(summary: dict[str, Any], tokenizer: str) -> str:
    """A saved model's validation figure (the whole split's, as on its card and from `evaluate`) and its steps."""
    val, estimate = summary.get("val_loss"), summary.get("best_val_loss")
    if isinstance(val, (int, float)):
        loss = f"val loss {val:.4f} nats/char (whole validation split)"
    elif isinstance(estimate, (int, float)):
        loss = f"val loss {estimate:.4f} nats/char (estimated; `evaluate` scores the whole split)"
    else:
        loss = "val loss -"
    seen = f"{summary.get('tokens_seen', 0):,} {'tokens' if tokenizer == 'bpe' else 'characters'} seen"
    return f"{loss}, weights of step {summary.get('best_step')} of {summary.get('iters')}; {seen}"


def progress_text(snap: dict[str, Any]) -> tuple[float, str]:
    steps = [e for e in snap["events"] if e.get("kind") == "step"]
    if not steps:
        return snap["progress"], f"{snap['title']}: {snap['message']}"
    last, first = steps[-1], steps[0]
    done = last["step"] - first["step"] + 1
    rate = done / max(last["elapsed_s"], 1e-9)
    eta = (last["max_iters"] - last["step"]) / max(rate, 1e-9) if last["max_iters"] else float("inf")
    limit = snap["info"].get("max_minutes") or 0
    if limit:  # a time budget owns the bar: the run's seconds (across its resumes) of its minutes
        spent = last.get("run_s") or last["elapsed_s"]
        eta = min(eta, max(0.0, limit * 60 - spent))
        clock = f"{fmt_seconds(spent)} of {fmt_seconds(limit * 60)} ({fmt_seconds(max(0.0, limit * 60 - spent))} left)"
    else:
        clock = f"elapsed {fmt_seconds(last['elapsed_s'])}"
    steps_text = f"step {last['step']:,}" + (f"/{last['max_iters']:,}" if last["max_iters"] else "")
    text = (
        f"{steps_text} · train loss {last['loss']:.3f} · {last['tokens_per_s']:,.0f} tokens/s · {clock} · "
        f"ETA {fmt_seconds(eta)}"
    )
    if snap["events"] and snap["events"][-1].get("kind") == "status":  # a phase with no steps yet (compiling)
        text += f" · {snap['events'][-1]['message']}"
    if snap["status"] == "stopping":
        text += " · stopping…"
    return snap["progress"], text


@dataclass
class TrainView:
    version: int
    fields: dict[str, Any] = field(default_factory=dict)  # by name: progress, message, plot, sample, saved, details


class TrainController:
    def __init__(self, project: Project, jobs: JobManager, reader: StudyReader):
        self.project, self.jobs, self.reader = project, jobs, reader
        modern = recipe_configs("modern")
        self.recipe_values = {**vars(modern[0]), **vars(modern[1])}

    def guard(self) -> None:
        self.jobs.require_dataset(self.project.data_dir)

    def configs(self, values: dict[str, Any], record: dict | None, chosen: dict[str, Any] | None = None,
                start_from: str | None = None, out_dir=None):  # fmt: skip
        """The run's configs from the form's FIELDS, a study's record, the recipe widgets' values, and the saved
        model it starts from (whose shape and recipe the form shows once it is picked: `base_form`)."""
        missing = [LABELS[k] for k in FIELDS if values.get(k) is None]
        if missing:
            raise ConfigError(f"fill in {', '.join(missing)}")
        flags = {k: (int(v) if k in INT_FIELDS else float(v)) for k, v in values.items()}
        if record:  # a field still showing a tuned value (rounded for display) takes the exact one
            exact = record["params"]
            flags = {k: v for k, v in flags.items() if not (k in exact and shown_value(exact[k]) == v)}
        flags["data_dir"] = str(self.project.data_dir)
        for name, value in (chosen or {}).items():  # the recipe's widgets, unless a study chose that field
            if not (record and name in record["params"] and value == self.recipe_values[name]):
                flags[name] = float(value) if RECIPE_CHOICES[name] is float else value
        if start_from:
            flags["init_from"] = start_from
        return run_configs(out_dir, flags=flags, tuned=record, models_dir=self.project.models_dir)

    def base_form(self, name: str | None) -> tuple[dict[str, Any] | None, str]:
        """(the form's values for a run from saved model `name`: its shape and recipe, the fine-tuning rates;
        a note), or (None, a note) for a run from scratch."""
        if not name:
            return None, ""
        try:
            base = load_base(name, self.project.models_dir)
            model_config, train_config = fine_tune_configs(base, TrainConfig(), {})
        except (ConfigError, ckpt.ModelError) as err:
            return None, error_html(str(err))
        values = {**vars(model_config), **vars(train_config)}
        loss = base.record()["val_loss"] or float("nan")
        try:  # what the dataset holds that the base has never seen, said before Start
            text = open_dataset(read_with(self.project.data_dir, base.vocab, base.name)).tokens["train"]
            unseen = unseen_note(unseen_share(text, len(base.vocab)), base.name)
        except DataError as err:
            return None, error_html(str(err))
        said = (f"Starting from {html.escape(base.name)} (val loss {loss:.4f}): its shape and recipe are kept; the "
                "rates are the fine-tuning defaults; its vocabulary grows by your text's new characters.")  # fmt: skip
        note = error_html(f"{said} {unseen}") if unseen else ok_html(said)
        return {k: shown_value(values[k]) for k in (*FIELDS, *RECIPE_CHOICES) if k in values}, note

    def launch(self, title: str, out_dir, model_config, train_config, resume: bool, record: dict | None = None,
               replace: bool = False) -> None:  # fmt: skip
        source: dict[str, Any] = {}

        def claim() -> None:  # under the job lock: the check, the overwrite and the start are one step
            claim_model_dir(out_dir, resume=resume, overwrite=replace)
            source["info"] = record_source(out_dir, record)

        def run(job):
            def on_step(event) -> None:
                job.add_event({"kind": "step", **vars(event)})
                job.update(progress=progress_fraction(event, train_config), message=f"step {event.step}")

            def on_eval(event) -> None:
                job.add_event({"kind": "eval", **event.as_record()})
                job.update(sample=event.sample or None)

            def on_status(message: str) -> None:
                job.add_event({"kind": "status", "message": message})

            hooks = TrainHooks(on_step=on_step, on_eval=on_eval, should_stop=job.stop.is_set, on_status=on_status)
            result = train(model_config, train_config, out_dir=out_dir, resume=resume, hooks=hooks,
                           info=source.get("info"))  # fmt: skip
            reason = result.stop_reason.replace("_", " ")
            job.update(message=f"{reason} at step {result.iters}; val loss {result.shown_val_loss:.4f} nats/char (whole "
                               f"validation split, the weights of step {result.best_step})")  # fmt: skip
            return result

        self.jobs.start("train", title, run, before=claim, model=out_dir.name, max_iters=train_config.max_iters,
                        max_minutes=train_config.max_minutes, resume=resume)  # fmt: skip

    def start(self, name: str, replace: bool, record: dict | None, values: tuple, start_from: str | None = None) -> str:
        """Values: FIELDS in order, then (optionally) RECIPE_CHOICES in order; `start_from`: a saved model."""
        try:
            self.guard()
            out_dir = ckpt.model_dir((name or "").strip(), self.project.models_dir)
            form = dict(zip(FIELDS, values))
            chosen = {k: v for k, v in zip(RECIPE_CHOICES, values[len(FIELDS) :]) if v is not None}
            model_config, train_config = self.configs(form, record, chosen, start_from, out_dir)
            self.launch(f"training {out_dir.name}", out_dir, model_config, train_config, False, record, replace)
        except ModelTaken as err:
            return error_html(
                f"{ModelTaken(err.out_dir, 'press Resume to continue it, tick Overwrite to replace it')}."
            )
        except (ConfigError, DataError, ckpt.ModelError, JobBusy, OSError) as err:
            return error_html(str(err))
        limits = [f"{train_config.max_iters:,} steps"] if train_config.max_iters else []
        if train_config.max_minutes:
            limits.append(plural_minutes(train_config.max_minutes))
        began = f" from {start_from}" if start_from else ""
        return ok_html(f"Started training {out_dir.name}{began} for {' or '.join(limits)}.")

    def resume(self, name: str, max_iters: float, max_minutes: float) -> str:
        try:
            self.guard()
            out_dir = ckpt.model_dir((name or "").strip(), self.project.models_dir)
            checkpoint = ckpt.latest_checkpoint(out_dir) if out_dir.is_dir() else None
            if checkpoint is None:
                raise ckpt.ModelError(f"models/{out_dir.name} has no checkpoint to resume; press Start instead")
            flags = {"max_iters": int(max_iters or 0), "max_minutes": float(max_minutes or 0),
                     "data_dir": str(self.project.data_dir)}  # fmt: skip
            model_config, train_config = run_configs(out_dir, flags=flags, resume=True)
            if 0 < train_config.max_iters <= checkpoint.step:
                raise ConfigError(
                    f"{out_dir.name} is already at step {checkpoint.step}; raise Max steps above it to continue"
                )
            self.launch(f"training {out_dir.name} (resumed)", out_dir, model_config, train_config, True)
        except (ConfigError, DataError, ckpt.ModelError, JobBusy, OSError) as err:
            return error_html(str(err))
        spent = float(checkpoint.state.get("seconds") or 0.0)
        limits = [f"to {train_config.max_iters:,}"] if train_config.max_iters else []
        if train_config.max_minutes:
            left = max(0.0, train_config.max_minutes * 60 - spent)
            limits.append(f"for the {fmt_seconds(left)} left of its {plural_minutes(train_config.max_minutes)}")
        return ok_html(
            f"Resuming {out_dir.name} from step {checkpoint.step:,} {' or '.join(limits) or 'with no limit'}, with its "
            "saved configuration (only the budget comes from the form)."
        )

    def stop(self) -> str:
        return ok_html(self.jobs.stop("train"))

    def load_best(self, study_name: str | None, max_iters: float) -> tuple[dict[str, Any] | None, str, dict | None]:
        """(the form's tuned values by field, a note, the study's record) for "Use its best parameters"."""
        if not study_name:
            return None, error_html("Choose a study first."), None
        try:
            record = best_params(open_study(study_name, self.project.storage))
        except TuningError as err:
            return None, error_html(str(err)), None
        model_config, train_config = apply_params(
            record["params"], ModelConfig(), TrainConfig(max_iters=int(max_iters or TrainConfig.max_iters))
        )
        values = {**vars(model_config), **vars(train_config)}
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in record["params"].items())
        note = ok_html(
            f"Best of study {record['study']}: trial {record['trial']}, val loss {record['val_loss']:.4f}. "
            f"Filled in: {shown}"
        )
        return {name: shown_value(values[name]) for name in MODEL_FIELDS + TRAIN_FIELDS}, note, record

    def compare(self, names: list[str] | None, prompt: str, seed: float):
        """(message, figure, table rows and headers, continuations as HTML) of saved models side by side."""
        try:
            result = compare(list(names or []), self.project.models_dir, prompt or "\n", int(seed or 0))
        except (ckpt.ModelError, ValueError) as err:
            return error_html(str(err)), None, None, None
        texts = "<p><b>Each model continues the prompt</b> (same seed)</p>" + "".join(
            f'<div class="wb-continuation"><b>{html.escape(name)}</b><pre>{html.escape(text)}</pre></div>'
            for name, text in result.continuations.items()
        )
        return (ok_html(f"Compared {', '.join(result.names)}."), curves_figure(result.curves),
                (result.table, ["field", *result.names]), texts)  # fmt: skip

    def view(self, last: int) -> TrainView:
        """What the page shows of the training job; only `version` when nothing changed since `last`."""
        job = self.jobs.get("train")
        snap = job.snapshot() if job else None
        version = snap["version"] if snap else 0
        if version == last:
            return TrainView(last)
        if snap is None:
            return TrainView(version, {"progress": progress_html(0, "no training running")})
        if snap["status"] == INTERRUPTED:  # from a server that stopped: offer Resume with its name and budget
            return TrainView(version, self._interrupted(snap))
        fraction, text = progress_text(snap)
        evals = [e for e in snap["events"] if e.get("kind") == "eval"]
        steps = [e for e in snap["events"] if e.get("kind") == "step"]
        fields = {"plot": loss_figure(evals, steps, title=snap["title"])}
        if snap["sample"]:
            fields["sample"] = snap["sample"]
        if not snap["active"]:  # done: say so, and select the model just trained (its details and curves show)
            text = f"{snap['title']}: {snap['status']} — {snap['message']}"
            fields["message"] = job_status_html(snap, "")
            fields["saved"] = (model_names(self.project), snap["info"].get("model"))
            # its details too: a resumed model stays selected, so the list's change would not refresh them
            fields["details"] = model_details(self.project, snap["info"].get("model"))
        fields["progress"] = progress_html(fraction, text)
        return TrainView(version, fields)

    def _interrupted(self, snap: dict[str, Any]) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "progress": progress_html(snap["progress"], f"{snap['title']}: interrupted"),
            "message": job_status_html(snap, ""),
        }
        model = snap["info"].get("model", "")
        if model:
            folder = self.project.models_dir / model
            fields |= {"name": model, "plot": loss_figure(read_metrics(folder), title=f"{model}: loss per evaluation")}
        if snap["info"].get("max_iters"):
            fields["max_iters"] = snap["info"]["max_iters"]
        return fields


def plural_minutes(minutes: float) -> str:
    return f"{minutes:g} minute" + ("" if minutes == 1 else "s")

"""Train tab: parameters from a study's best trial or by hand, a background training run, saved models."""

from __future__ import annotations

from typing import Any

import gradio as gr

from core import checkpoint as ckpt
from core.compare import compare
from core.config import RECIPES, ConfigError, ModelConfig, TrainConfig, recipe_configs
from core.data import DataError
from core.runs import claim_model_dir, record_source, run_configs
from core.trainer import TrainHooks, train
from core.tuning import TuningError, apply_params, best_params, open_study
from workbench.jobs import INTERRUPTED, JobBusy, JobManager
from workbench.project import Project
from workbench.studies import StudyReader, model_names
from workbench.ui import (
    curves_figure,
    error_html,
    fmt_seconds,
    job_status_html,
    loss_figure,
    ok_html,
    progress_html,
    read_metrics,
)

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
    "block_size": "Context (chars)",
    "dropout": "Dropout",
    "batch_size": "Batch size",
    "lr": "Learning rate",
    "weight_decay": "Weight decay",
    "warmup_iters": "Warmup steps",
    "max_iters": "Max steps (0 = no limit)",
    "max_minutes": "Max minutes (0 = no limit)",
    "eval_interval": "Steps between evals",
    "eval_iters": "Batches per eval",
    "sample_chars": "Sample length (chars)",
    "pos_encoding": "Positions",
    "norm": "Norm",
    "mlp": "MLP activation",
    "qk_norm": "QK-norm",
    "tie_head": "Tied head",
    "optimizer": "Optimiser",
    "muon_lr": "Muon learning rate",
    "schedule": "Schedule",
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
        best = summary.get("best_val_loss")
        best_text = f"{best:.4f}" if isinstance(best, (int, float)) else "-"
        lines.append(
            f"best val loss {best_text} at step {summary.get('best_step')} of {summary.get('iters')}; "
            f"{summary.get('tokens_seen', 0):,} characters seen"
        )
    if source:
        lines.append(f"parameters from study {source.get('study')}, trial {source.get('trial')}")
    resumable = (folder / ckpt.CHECKPOINT_DIR).is_dir() and any((folder / ckpt.CHECKPOINT_DIR).glob("step-*"))
    lines.append("resumable: yes (Resume continues it)" if resumable else "resumable: no checkpoint")
    return "  \n".join(lines), loss_figure(read_metrics(folder), title=f"{name}: loss per evaluation")


def progress_text(snap: dict[str, Any]) -> tuple[float, str]:
    steps = [e for e in snap["events"] if e.get("kind") == "step"]
    if not steps:
        return snap["progress"], f"{snap['title']}: {snap['message']}"
    last, first = steps[-1], steps[0]
    done = last["step"] - first["step"] + 1
    rate = done / max(last["elapsed_s"], 1e-9)
    eta = (last["max_iters"] - last["step"]) / max(rate, 1e-9) if last["max_iters"] else float("inf")
    limit = snap["info"].get("max_minutes") or 0
    if limit:  # a time budget owns the bar: elapsed of its minutes
        eta = min(eta, max(0.0, limit * 60 - last["elapsed_s"]))
        clock = f"{fmt_seconds(last['elapsed_s'])} of {fmt_seconds(limit * 60)}"
    else:
        clock = f"elapsed {fmt_seconds(last['elapsed_s'])}"
    steps_text = f"step {last['step']:,}" + (f"/{last['max_iters']:,}" if last["max_iters"] else "")
    text = (
        f"{steps_text} · loss {last['loss']:.3f} · {last['tokens_per_s']:,.0f} tokens/s · {clock} · "
        f"ETA {fmt_seconds(eta)}"
    )
    if snap["status"] == "stopping":
        text += " · stopping…"
    return snap["progress"], text


def build_train(project: Project, jobs: JobManager, reader: StudyReader) -> dict[str, Any]:
    defaults = {**vars(ModelConfig()), **vars(TrainConfig())}
    gr.Markdown(
        "Train a model and save it under `models/NAME`. Fill the parameters by hand or take the best trial of a "
        "study (you can still edit them). **Stop** saves a checkpoint; **Resume** continues it from there."
    )
    with gr.Row():
        study = gr.Dropdown(choices=reader.names(), value=None, label="Study", allow_custom_value=True, scale=3)
        use_best = gr.Button("Use its best parameters", scale=1)
        refresh_studies = gr.Button("Refresh", size="sm", scale=0, min_width=80)
    best_note = gr.Markdown()
    tuned = gr.State(None)
    inputs: dict[str, gr.Number] = {}
    with gr.Row():
        for group_name, names in (("Model", MODEL_FIELDS), ("Optimiser", TRAIN_FIELDS), ("Budget", BUDGET_FIELDS)):
            with gr.Column(min_width=220), gr.Group():
                gr.Markdown(f"**{group_name}**", padding=True)
                for name in names:
                    inputs[name] = gr.Number(
                        value=defaults[name],
                        label=LABELS[name],
                        precision=0 if name in INT_FIELDS else None,
                        minimum=0,
                    )
    modern = recipe_configs("modern")
    recipe_values = {**vars(modern[0]), **vars(modern[1])}
    recipe_inputs: dict[str, Any] = {}
    with gr.Accordion("Recipe (architecture, optimiser, schedule)", open=False), gr.Row():
        recipe = gr.Dropdown(sorted(RECIPES), value="modern", label="Recipe", min_width=120)
        for name, choices in RECIPE_CHOICES.items():
            if choices is bool:
                recipe_inputs[name] = gr.Checkbox(value=recipe_values[name], label=LABELS[name], min_width=120)
            elif choices is float:
                recipe_inputs[name] = gr.Number(value=recipe_values[name], label=LABELS[name], min_width=120)
            else:
                recipe_inputs[name] = gr.Dropdown(list(choices), value=recipe_values[name], label=LABELS[name],
                                                  min_width=120)  # fmt: skip

    def pick_recipe(name: str):
        model_config, train_config = recipe_configs(name)
        values = {**vars(model_config), **vars(train_config)}
        return [values[field_name] for field_name in RECIPE_CHOICES]

    recipe.change(pick_recipe, recipe, list(recipe_inputs.values()), api_visibility="private")
    with gr.Row(equal_height=True):
        name_box = gr.Textbox(value="default", label="Model name", max_lines=1, scale=2)
        overwrite = gr.Checkbox(value=False, label="Overwrite a model of that name", scale=1)
        start_btn = gr.Button("Start training", variant="primary", scale=1)
        resume_btn = gr.Button("Resume", scale=1)
        stop_btn = gr.Button("Stop", variant="stop", scale=1)
    message = gr.HTML()
    progress = gr.HTML(progress_html(0, "no training running"))
    with gr.Row():
        live_plot = gr.Plot(label="Loss (live)", scale=3)
        sample = gr.Textbox(label="Latest sample (at the last eval)", lines=14, max_lines=14, scale=2)
    gr.Markdown("### Saved models")
    with gr.Row():
        saved = gr.Dropdown(choices=model_names(project), value=None, label="Model", allow_custom_value=True, scale=3)
        refresh_models = gr.Button("Refresh", size="sm", scale=0, min_width=80)
    saved_info = gr.Markdown()
    saved_plot = gr.Plot(label="Loss per evaluation (metrics.jsonl)")
    gr.Markdown("### Compare models")
    with gr.Row(equal_height=True):
        compare_names = gr.Dropdown(
            choices=model_names(project), value=[], multiselect=True, label="Models", allow_custom_value=True, scale=3
        )
        compare_prompt = gr.Textbox(value="\n", label="Prompt", max_lines=2, scale=2)
        compare_seed = gr.Number(value=0, precision=0, label="Seed", min_width=80, scale=0)
        compare_btn = gr.Button("Compare", scale=0, min_width=100)
    compare_message = gr.HTML()
    compare_plot = gr.Plot(label="Validation loss of each model")
    compare_table = gr.Dataframe(headers=["field"], value=[], label="Configurations side by side", interactive=False)
    compare_text = gr.Dataframe(headers=["model", "continuation"], value=[], label="Each model continues the prompt",
                                interactive=False, wrap=True)  # fmt: skip

    refresh_studies.click(lambda: gr.update(choices=reader.names()), None, study, api_visibility="private")
    refresh_models.click(lambda: gr.update(choices=model_names(project)), None, saved, api_visibility="private")
    saved.change(lambda n: model_details(project, n), saved, [saved_info, saved_plot], api_name="model_details")

    field_inputs = [inputs[name] for name in FIELDS]

    def run_compare(names: list[str] | None, prompt: str, seed_value: float):
        try:
            result = compare(list(names or []), project.models_dir, prompt or "\n", int(seed_value or 0))
        except (ckpt.ModelError, ValueError) as err:
            return error_html(str(err)), None, gr.skip(), gr.skip()
        figure = curves_figure(result.curves)
        table = gr.update(value=result.table, headers=["field", *result.names])
        return (
            ok_html(f"Compared {', '.join(result.names)}."),
            figure,
            table,
            [[name, text] for name, text in result.continuations.items()],
        )

    compare_btn.click(
        run_compare,
        [compare_names, compare_prompt, compare_seed],
        [compare_message, compare_plot, compare_table, compare_text],
        api_name="compare_models",
    )
    refresh_models.click(lambda: gr.update(choices=model_names(project)), None, compare_names, api_visibility="private")

    def load_best(study_name: str | None, max_iters: float):
        if not study_name:
            return (gr.skip(),) * len(FIELDS) + (error_html("Choose a study first."), None)
        try:
            record = best_params(open_study(study_name, project.storage))
        except TuningError as err:
            return (gr.skip(),) * len(FIELDS) + (error_html(str(err)), None)
        model_config, train_config = apply_params(
            record["params"], ModelConfig(), TrainConfig(max_iters=int(max_iters or defaults["max_iters"]))
        )
        values = {**vars(model_config), **vars(train_config)}
        updates = tuple(
            gr.update(value=shown_value(values[name])) if name in MODEL_FIELDS + TRAIN_FIELDS else gr.skip()
            for name in FIELDS
        )
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in record["params"].items())
        note = ok_html(
            f"Best of study {record['study']}: trial {record['trial']}, val loss {record['val_loss']:.4f}. "
            f"Filled in: {shown}"
        )
        return (*updates, note, record)

    use_best.click(
        load_best, [study, inputs["max_iters"]], [*field_inputs, best_note, tuned], api_name="train_use_best"
    )

    def configs(
        values: dict[str, Any], record: dict | None, chosen: dict[str, Any] | None = None
    ) -> tuple[ModelConfig, TrainConfig]:
        missing = [LABELS[k] for k in FIELDS if values.get(k) is None]
        if missing:
            raise ConfigError(f"fill in {', '.join(missing)}")
        flags = {k: (int(v) if k in INT_FIELDS else float(v)) for k, v in values.items()}
        if record:  # a field still showing a tuned value (rounded for display) takes the exact one
            exact = record["params"]
            flags = {k: v for k, v in flags.items() if not (k in exact and shown_value(exact[k]) == v)}
        flags["data_dir"] = str(project.data_dir)
        for name, value in (chosen or {}).items():  # the recipe's widgets, unless a study chose that field
            if not (record and name in record["params"] and value == recipe_values[name]):
                flags[name] = float(value) if RECIPE_CHOICES[name] is float else value
        return run_configs(flags=flags, tuned=record)

    def launch(job_title: str, out_dir, model_config, train_config, resume: bool, record: dict | None = None,
               replace: bool = False) -> None:  # fmt: skip
        source: dict[str, Any] = {}

        def claim() -> None:  # under the job lock: the check, the overwrite and the start are one step
            claim_model_dir(out_dir, resume=resume, overwrite=replace)
            source["info"] = record_source(out_dir, record)

        def run(job):
            def on_step(event) -> None:
                job.add_event({"kind": "step", **vars(event)})
                fraction = event.step / event.max_iters if event.max_iters else 0.0
                if train_config.max_minutes:
                    fraction = max(fraction, event.elapsed_s / (train_config.max_minutes * 60))
                job.update(progress=fraction, message=f"step {event.step}")

            def on_eval(event) -> None:
                job.add_event({"kind": "eval", **event.as_record()})
                job.update(sample=event.sample or None)

            result = train(
                model_config,
                train_config,
                out_dir=out_dir,
                resume=resume,
                hooks=TrainHooks(on_step=on_step, on_eval=on_eval, should_stop=job.stop.is_set),
                info=source.get("info"),
            )
            reason = result.stop_reason.replace("_", " ")
            job.update(message=f"{reason} at step {result.iters}; best val loss {result.val_loss:.4f}")
            return result

        jobs.start(
            "train",
            job_title,
            run,
            before=claim,
            model=out_dir.name,
            max_iters=train_config.max_iters,
            max_minutes=train_config.max_minutes,
            resume=resume,
        )

    def guard() -> None:
        if not project.has_dataset():
            raise DataError("there is no dataset yet; prepare one in the Dataset tab first")
        if jobs.active("prepare"):
            raise DataError("a dataset is being prepared; start training when it is done")

    def start(name: str, replace: bool, record: dict | None, *values):
        """Values: FIELDS in order, then (optionally) RECIPE_CHOICES in order."""
        try:
            guard()
            out_dir = ckpt.model_dir((name or "").strip(), project.models_dir)
            form = dict(zip(FIELDS, values))
            chosen = {k: v for k, v in zip(RECIPE_CHOICES, values[len(FIELDS) :]) if v is not None}
            model_config, train_config = configs(form, record, chosen)
            launch(f"training {out_dir.name}", out_dir, model_config, train_config, False, record, replace)
        except (ConfigError, DataError, ckpt.ModelError, JobBusy, OSError) as err:
            return error_html(str(err))
        budget = f"{train_config.max_iters:,} steps" if train_config.max_iters else ""
        if train_config.max_minutes:
            budget = (
                f"{budget} or {train_config.max_minutes:g} minutes"
                if budget
                else f"{train_config.max_minutes:g} minutes"
            )
        return ok_html(f"Started training {out_dir.name} for {budget}.")

    start_btn.click(
        start, [name_box, overwrite, tuned, *field_inputs, *recipe_inputs.values()], message, api_name="train_start"
    )

    def resume(name: str, max_iters: float, max_minutes: float):
        try:
            guard()
            out_dir = ckpt.model_dir((name or "").strip(), project.models_dir)
            checkpoint = ckpt.latest_checkpoint(out_dir) if out_dir.is_dir() else None
            if checkpoint is None:
                raise ckpt.ModelError(f"models/{out_dir.name} has no checkpoint to resume; press Start instead")
            budget = {"max_iters": int(max_iters or 0), "max_minutes": float(max_minutes or 0)}
            flags = {**budget, "data_dir": str(project.data_dir)}
            model_config, train_config = run_configs(out_dir, flags=flags, resume=True)
            if 0 < train_config.max_iters <= checkpoint.step:
                raise ConfigError(
                    f"{out_dir.name} is already at step {checkpoint.step}; raise Max steps above it to continue"
                )
            launch(f"training {out_dir.name} (resumed)", out_dir, model_config, train_config, True)
        except (ConfigError, DataError, ckpt.ModelError, JobBusy, OSError) as err:
            return error_html(str(err))
        return ok_html(
            f"Resuming {out_dir.name} from step {checkpoint.step} to {train_config.max_iters:,} with its saved "
            "configuration (only the budget comes from the form)."
        )

    resume_btn.click(resume, [name_box, inputs["max_iters"], inputs["max_minutes"]], message, api_name="train_resume")
    stop_btn.click(lambda: ok_html(jobs.stop("train")), None, message, api_name="train_stop")

    seen = gr.State(-1)

    def tick(last: int) -> dict:
        """Updates by component; what is left out stays as it is."""
        job = jobs.get("train")
        snap = job.snapshot() if job else None
        version = snap["version"] if snap else 0
        if version == last:
            return {seen: last}
        if snap is None:
            return {progress: progress_html(0, "no training running"), seen: version}
        if snap["status"] == INTERRUPTED:  # from a server that stopped: offer Resume with its name and budget
            model = snap["info"].get("model", "")
            updates = {
                progress: progress_html(snap["progress"], f"{snap['title']}: interrupted"),
                message: job_status_html(snap, ""),
                seen: version,
            }
            if model:
                folder = project.models_dir / model
                updates |= {
                    name_box: model,
                    live_plot: loss_figure(read_metrics(folder), title=f"{model}: loss per evaluation"),
                }
            if snap["info"].get("max_iters"):
                updates[inputs["max_iters"]] = snap["info"]["max_iters"]
            return updates
        fraction, text = progress_text(snap)
        evals = [e for e in snap["events"] if e.get("kind") == "eval"]
        steps = [e for e in snap["events"] if e.get("kind") == "step"]
        updates = {live_plot: loss_figure(evals, steps, title=snap["title"]), seen: version}
        if snap["sample"]:
            updates[sample] = snap["sample"]
        if not snap["active"]:  # done: say so, and select the model just trained (its details and curves show)
            text = f"{snap['title']}: {snap['status']} — {snap['message']}"
            names = model_names(project)
            trained = snap["info"].get("model")
            updates[message] = job_status_html(snap, "")
            updates[saved] = gr.update(choices=names, value=trained) if trained in names else gr.update(choices=names)
        updates[progress] = progress_html(fraction, text)
        return updates

    timer = gr.Timer(1.0)
    timer.tick(
        tick,
        seen,
        [progress, message, live_plot, sample, saved, name_box, inputs["max_iters"], seen],
        api_name="train_refresh",
        show_progress="hidden",
    )

    def refresh_lists(current_study: str | None, current_model: str | None, compared: list[str] | None):
        studies, models = reader.names(), model_names(project)
        return (
            gr.update(choices=studies, value=current_study if current_study in studies else None),
            gr.update(choices=models, value=current_model if current_model in models else None),
            gr.update(choices=models, value=[n for n in compared or [] if n in models]),
        )

    lists = [study, saved, compare_names]
    return {"refresh": (refresh_lists, lists, lists)}

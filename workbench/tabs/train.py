"""Train tab layout and wiring; what its buttons do lives in workbench.controllers.train."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import gradio as gr

from core.config import RECIPES, ModelConfig, TrainConfig, recipe_configs
from workbench.controllers.train import (
    BUDGET_FIELDS,
    FIELDS,
    INT_FIELDS,
    LABELS,
    MODEL_FIELDS,
    RECIPE_CHOICES,
    TRAIN_FIELDS,
    TrainController,
    model_details,
)
from workbench.jobs import JobManager
from workbench.project import Project
from workbench.studies import StudyReader, model_names
from workbench.ui import remember
from workbench.views import NO_BASE, picked_base, progress_html

MODEL_RECIPE = {f.name for f in dataclasses.fields(ModelConfig)}  # the recipe widgets a base fixes


def _params_form(reader: StudyReader, project: Project) -> SimpleNamespace:
    defaults = {**vars(ModelConfig()), **vars(TrainConfig())}
    with gr.Row():
        start_from = gr.Dropdown(choices=[NO_BASE, *model_names(project)], value=NO_BASE, scale=2,
                                 label="Start from (a saved model's weights: its shape, recipe and vocabulary)")  # fmt: skip
        study = gr.Dropdown(choices=reader.names(), value=None, label="Study", allow_custom_value=True, scale=2)
        use_best = gr.Button("Use its best parameters", scale=1)
        refresh = gr.Button("Refresh", size="sm", scale=0, min_width=80)
    note = gr.Markdown()
    inputs: dict[str, gr.Number] = {}
    with gr.Row():
        for group_name, names in (("Model", MODEL_FIELDS), ("Optimiser", TRAIN_FIELDS), ("Budget", BUDGET_FIELDS)):
            with gr.Column(min_width=220), gr.Group():
                gr.Markdown(f"**{group_name}**", padding=True)
                for name in names:
                    inputs[name] = gr.Number(value=defaults[name], label=LABELS[name],
                                             precision=0 if name in INT_FIELDS else None, minimum=0)  # fmt: skip
    return SimpleNamespace(start_from=start_from, study=study, use_best=use_best, refresh=refresh, note=note,
                           inputs=inputs)  # fmt: skip


def _recipe_form(values: dict[str, Any]) -> tuple[gr.Dropdown, dict[str, Any]]:
    widgets: dict[str, Any] = {}
    with gr.Accordion("Recipe (architecture, optimiser, schedule) and dashboard", open=False), gr.Row():
        recipe = gr.Dropdown(sorted(RECIPES), value="modern", label="Recipe", min_width=120)
        for name, choices in RECIPE_CHOICES.items():
            if choices is bool:
                widgets[name] = gr.Checkbox(value=values[name], label=LABELS[name], min_width=120)
            elif choices is float:
                widgets[name] = gr.Number(value=values[name], label=LABELS[name], min_width=120)
            else:
                widgets[name] = gr.Dropdown(list(choices), value=values[name], label=LABELS[name], min_width=120)

    def pick(name: str):
        model_config, train_config = recipe_configs(name)
        chosen = {**vars(model_config), **vars(train_config)}
        return [chosen[field_name] for field_name in RECIPE_CHOICES]

    recipe.change(pick, recipe, list(widgets.values()), api_visibility="private")
    return recipe, widgets


def _run_controls() -> SimpleNamespace:
    with gr.Row(equal_height=True):
        name = gr.Textbox(value="default", label="Model name", max_lines=1, scale=2)
        overwrite = gr.Checkbox(value=False, label="Overwrite a model of that name", scale=1)
        start = gr.Button("Start training", variant="primary", scale=1)
        resume = gr.Button("Resume", scale=1)
        stop = gr.Button("Stop", variant="stop", scale=1)
    message = gr.HTML(label="Status", show_label=True, container=True, padding=True)
    progress = gr.HTML(
        progress_html(0, "no training running"), label="Progress", show_label=True, container=True, padding=True
    )
    with gr.Row():
        plot = gr.Plot(label="Loss (live)", scale=3)
        sample = gr.Textbox(label="Latest sample (written at each evaluation)", lines=14, max_lines=14, scale=2,
                            placeholder="appears at the run's first evaluation")  # fmt: skip
    return SimpleNamespace(name=name, overwrite=overwrite, start=start, resume=resume, stop=stop, message=message,
                           progress=progress, plot=plot, sample=sample)  # fmt: skip


def _saved_models(project: Project) -> SimpleNamespace:
    gr.Markdown("### Saved models")
    with gr.Row():
        saved = gr.Dropdown(choices=model_names(project), value=None, label="Model", allow_custom_value=True, scale=3)
        refresh = gr.Button("Refresh", size="sm", scale=0, min_width=80)
    info = gr.Markdown()
    plot = gr.Plot(label="Loss per evaluation (metrics.jsonl)")
    gr.Markdown("### Compare models")
    with gr.Row(equal_height=True):
        names = gr.Dropdown(choices=model_names(project), value=[], multiselect=True, label="Models",
                            allow_custom_value=True, scale=3)  # fmt: skip
        prompt = gr.Textbox(value="\n", label="Prompt", max_lines=2, scale=2)
        seed = gr.Number(value=0, precision=0, label="Seed", min_width=80, scale=0)
        compare = gr.Button("Compare", scale=0, min_width=100)
    return SimpleNamespace(
        saved=saved, refresh=refresh, info=info, plot=plot, names=names, prompt=prompt, seed=seed, compare=compare,
        message=gr.HTML(label="Compare status"), curves=gr.Plot(label="Validation loss of each model"),
        table=gr.Dataframe(headers=["field"], value=[], label="Configurations side by side", interactive=False),
        texts=gr.HTML(label="Each model continues the prompt"),
    )  # fmt: skip


def build_train(project: Project, jobs: JobManager, reader: StudyReader) -> dict[str, Any]:
    control = TrainController(project, jobs, reader)
    gr.Markdown(
        "Train a model and save it under `models/NAME`. Fill the parameters by hand or take the best trial of a "
        "study (you can still edit them). **Stop** saves a checkpoint; **Resume** continues it from there."
    )
    form = _params_form(reader, project)
    tuned = gr.State(None)
    _, recipe_widgets = _recipe_form(control.recipe_values)
    run = _run_controls()
    models = _saved_models(project)
    field_inputs = [form.inputs[name] for name in FIELDS]

    form.refresh.click(lambda: (gr.update(choices=reader.names()), gr.update(choices=[NO_BASE, *model_names(project)])),
                       None, [form.study, form.start_from], api_visibility="private")  # fmt: skip
    for target in (models.saved, models.names):
        models.refresh.click(lambda: gr.update(choices=model_names(project)), None, target, api_visibility="private")
    models.saved.change(lambda n: model_details(project, n), models.saved, [models.info, models.plot],
                        api_name="model_details")  # fmt: skip
    models.compare.click(_compare(control), [models.names, models.prompt, models.seed],
                         [models.message, models.curves, models.table, models.texts], api_name="compare_models")  # fmt: skip
    form.use_best.click(_use_best(control), [form.study, form.inputs["max_iters"]],
                        [*field_inputs, form.note, tuned], api_name="train_use_best")  # fmt: skip
    run.start.click(lambda name, replace, record, *values: control.start(name, replace, record, values[:-1],
                                                                         start_from=picked_base(values[-1])),
                    [run.name, run.overwrite, tuned, *field_inputs, *recipe_widgets.values(), form.start_from],
                    run.message, api_name="train_start")  # fmt: skip
    form.start_from.change(_pick_base(control), form.start_from, [*field_inputs, *recipe_widgets.values(), form.note],
                           api_visibility="private")  # fmt: skip
    run.resume.click(control.resume, [run.name, form.inputs["max_iters"], form.inputs["max_minutes"]], run.message,
                     api_name="train_resume")  # fmt: skip
    run.stop.click(control.stop, None, run.message, api_name="train_stop")
    _wire_tick(control, run, models, form)
    restore_name = remember(run.name, "chargpt-train-model-name")

    def refresh_lists(current_study: str | None, current_model: str | None, compared: list[str] | None,
                      base: str | None):  # fmt: skip
        studies, names = reader.names(), model_names(project)
        return (
            gr.update(choices=studies, value=current_study if current_study in studies else None),
            gr.update(choices=names, value=current_model if current_model in names else None),
            gr.update(choices=names, value=[n for n in compared or [] if n in names]),
            gr.update(choices=[NO_BASE, *names], value=base if base in names else NO_BASE),
        )

    lists = [form.study, models.saved, models.names, form.start_from]
    return {"refresh": (refresh_lists, lists, lists), "load": [restore_name]}


def _compare(control: TrainController):
    def run(names, prompt, seed):
        message, figure, table, texts = control.compare(names, prompt, seed)
        if table is None:
            return message, None, gr.skip(), gr.skip()
        return message, figure, gr.update(value=table[0], headers=table[1]), texts

    return run


def _pick_base(control: TrainController):
    """A base picked: the form shows its shape (fixed) and recipe and the fine-tuning rates; none: editable again."""

    def pick(choice: str | None):
        values, note = control.base_form(picked_base(choice))
        fixed = values is not None
        fields = [gr.update(value=values[name], interactive=not (fixed and name in MODEL_FIELDS and name != "dropout"))
                  if values else gr.update(interactive=True) for name in FIELDS]  # fmt: skip
        recipe = [gr.update(value=values[name], interactive=not (fixed and name in MODEL_RECIPE))
                  if values else gr.update(interactive=True) for name in RECIPE_CHOICES]  # fmt: skip
        return (*fields, *recipe, note)

    return pick


def _use_best(control: TrainController):
    def run(study: str | None, max_iters: float):
        values, note, record = control.load_best(study, max_iters)
        if values is None:
            return (gr.skip(),) * len(FIELDS) + (note, None)
        updates = tuple(gr.update(value=values[name]) if name in values else gr.skip() for name in FIELDS)
        return (*updates, note, record)

    return run


def _wire_tick(control: TrainController, run: SimpleNamespace, models: SimpleNamespace, form: SimpleNamespace):
    seen = gr.State(-1)
    names = {"progress": run.progress, "message": run.message, "plot": run.plot, "sample": run.sample,
             "saved": models.saved, "name": run.name, "max_iters": form.inputs["max_iters"]}  # fmt: skip

    def tick(last: int) -> dict:
        shown = control.view(last)
        updates: dict[Any, Any] = {seen: shown.version}
        for key, value in shown.fields.items():
            if key == "saved":
                choices, trained = value
                updates[models.saved] = gr.update(choices=choices, value=trained if trained in choices else None)
            elif key == "details":
                updates[models.info], updates[models.plot] = value
            else:
                updates[names[key]] = value
        return updates

    outputs = [*names.values(), models.info, models.plot, seen]
    gr.Timer(1.0).tick(tick, seen, outputs, api_name="train_refresh", show_progress="hidden")

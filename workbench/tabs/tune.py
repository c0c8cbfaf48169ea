"""Tune tab layout and wiring; what its buttons do lives in workbench.controllers.tune."""

from __future__ import annotations

import html
from types import SimpleNamespace
from typing import Any

import gradio as gr

from core.tracking import REPORT_TO
from core.tune.config import PRUNERS, TOKENIZER_MODES, StudyConfig
from workbench.controllers.tune import (
    BUDGET_FIELDS,
    TRIALS_FORM,
    TuneController,
    default_space_json,
)
from workbench.jobs import JobManager
from workbench.project import Project
from workbench.studies import StudyReader, model_names
from workbench.ui import remember
from workbench.views import KEEP, NO_BASE, progress_html

BUDGET_MODE, TRIALS_MODE = "One budget: search, then the final model", "Trials only"
MODE_HELP = (
    "One budget: candidates race in rungs, the best are continued from their checkpoints, and the survivor "
    "trains until the budget ends and is saved. Trials only: each trial trains from scratch; train the best after."
)
TABLE_HEADERS = ["Trial", "State", "Val loss (nats/char)", "Step", "Duration", "Params", "Note"]
SPACE_HELP = (
    '`[low, high]` is a range (whole numbers if both are), `{"low": .., "high": .., "log": true}` a log '
    'range, `{"choices": [..]}` a list, and a plain number a fixed value. Width is `n_head × head_size`, so '
    'every sampled model is valid. `tokenizer` `"prepared"` keeps the dataset\'s own; '
    '`{"choices": ["char", "bpe"]}` with `vocab_size` compares tokenizers (each built once under dataset/tokenized).'
)


def _budget_form(project: Project) -> SimpleNamespace:
    with gr.Group(visible=True) as group:
        with gr.Row():
            minutes = gr.Number(value=10, minimum=0, label="Total budget (minutes)", min_width=90)
            model = gr.Textbox(value="best", label="Save the winner as (model name)", max_lines=1)
            start_from = gr.Dropdown(choices=[NO_BASE, *model_names(project)], value=NO_BASE,
                                     label="Start from (a saved model: candidates search its fine-tuning)")  # fmt: skip
        plan = gr.Markdown("*The plan appears here once the budget is set.*", elem_id="tune-plan")
        fixed = gr.Textbox(
            value="{}",
            label='Keep these fixed in every candidate (JSON, e.g. {"n_layer": 4, "block_size": 128})',
            max_lines=2,
        )
        with gr.Accordion("More settings", open=False):
            search_short = gr.Checkbox(
                value=False,
                label="Search even if the budget is short",
                info="a budget under the search minimum otherwise trains the default model for all of it",
            )
            overwrite = gr.Checkbox(value=False, label="Replace a saved model of that name")
            tokenizer = gr.Dropdown(list(TOKENIZER_MODES), value="auto", label="Tokenizer",
                                    info="auto: a BPE where it is measured to pay, else characters; char: "
                                    "characters only; prepared: the dataset as prepared")  # fmt: skip
            report_to = gr.Dropdown(list(REPORT_TO), value="none", label="Report to (dashboard)",
                                    info="each candidate's numbers in TensorBoard or trackio too, under tracking/")  # fmt: skip
        start = gr.Button("Start", variant="primary")
    return SimpleNamespace(group=group, minutes=minutes, model=model, plan=plan, fixed=fixed,
                           search_short=search_short, overwrite=overwrite, start=start, start_from=start_from,
                           tokenizer=tokenizer, report_to=report_to)  # fmt: skip


def _trials_form() -> SimpleNamespace:
    with gr.Group(visible=False) as trials_group, gr.Row():
        trials = gr.Number(value=StudyConfig.trials, precision=0, minimum=1, label="Trials", min_width=90)
        trial_iters = gr.Number(
            value=StudyConfig.trial_iters, precision=0, minimum=1, label="Steps per trial", min_width=90
        )
    with gr.Row(visible=False) as trials_row:
        timeout_min = gr.Number(value=0, minimum=0, label="Time budget (min, 0 = none)", min_width=90)
        pruner = gr.Dropdown(list(PRUNERS), value=StudyConfig.pruner, label="Pruner", min_width=90)
    with gr.Accordion("More settings", open=False, visible=False) as trials_more:
        with gr.Row():
            eval_interval = gr.Number(
                value=StudyConfig.eval_interval,
                precision=0,
                minimum=1,
                label="Steps between evals",
                min_width=90,
            )
            eval_iters = gr.Number(
                value=StudyConfig.eval_iters, precision=0, minimum=1, label="Batches per eval", min_width=90
            )
        with gr.Row():
            trial_seconds = gr.Number(value=0, minimum=0, label="Seconds per trial (0 = by steps)", min_width=90)
            trial_flops = gr.Textbox(
                value="0", label="FLOPs per trial (0 = by steps)", placeholder="0.5T", max_lines=1, min_width=90
            )
        with gr.Row():
            evals_per_trial = gr.Number(
                value=StudyConfig.evals_per_trial,
                precision=0,
                minimum=1,
                label="Evals per trial (seconds or FLOPs budget)",
                min_width=90,
            )
            seed = gr.Number(value=StudyConfig.seed, precision=0, label="Seed", min_width=90)
        with gr.Row():
            pruner_percentile = gr.Number(
                value=round(StudyConfig.pruner_percentile, 1),
                minimum=0,
                maximum=100,
                label="Pruner percentile (keep the best %)",
                min_width=90,
            )
            pruner_startup = gr.Number(
                value=StudyConfig.pruner_startup_trials,
                precision=0,
                minimum=0,
                label="Trials before pruning starts",
                min_width=90,
            )
    return SimpleNamespace(
        groups=[trials_group, trials_row, trials_more], trials=trials, trial_iters=trial_iters, timeout_min=timeout_min,
        pruner=pruner, eval_interval=eval_interval, eval_iters=eval_iters, trial_seconds=trial_seconds,
        trial_flops=trial_flops, evals_per_trial=evals_per_trial, seed=seed, pruner_percentile=pruner_percentile,
        pruner_startup_trials=pruner_startup,
    )  # fmt: skip


def _results(reader: StudyReader, dashboard_url: str | None) -> SimpleNamespace:
    message = gr.HTML(label="Status", show_label=True, container=True, padding=True)
    progress = gr.HTML(
        progress_html(0, "no study running"), label="Progress", show_label=True, container=True, padding=True
    )
    with gr.Row():
        view = gr.Dropdown(choices=reader.names(), value=None, label="Study shown below", allow_custom_value=True,
                           scale=3)  # fmt: skip
        refresh = gr.Button("Refresh list", size="sm", scale=1)
        if dashboard_url:
            where = ("behind your login, read-only" if dashboard_url.startswith("/")
                     else "served on 127.0.0.1: open it from this machine")  # fmt: skip
            gr.HTML(f'<a href="{html.escape(dashboard_url)}" target="_blank" rel="noopener">Open optuna-dashboard ↗</a>'
                    f"<br><small>({where})</small>")  # fmt: skip
    summary = gr.Markdown("Choose a study, or start one.")
    table = gr.Dataframe(headers=TABLE_HEADERS, value=[], label="Trials (newest first)", interactive=False, wrap=True,
                         max_height=320, column_widths=["7%", "11%", "10%", "7%", "9%", "40%", "16%"])  # fmt: skip
    with gr.Row():
        history = gr.Plot(label="Optimization history")
        curves = gr.Plot(label="Intermediate values")
    importance = gr.Plot(label="Parameter importance")
    return SimpleNamespace(message=message, progress=progress, view=view, refresh=refresh, summary=summary,
                           table=table, history=history, curves=curves, importance=importance)  # fmt: skip


def build_tune(project: Project, jobs: JobManager, reader: StudyReader, dashboard_url: str | None = None):
    """The tab; returns what the page runs on load (its lists filled, a running job shown)."""
    control = TuneController(project, jobs, reader)
    where = html.escape(project.storage.split("///")[-1].removeprefix(str(project.root) + "/"))
    gr.Markdown(
        "Give a total time and press **Start**: candidates race, the best are continued, and the winner is saved "
        f"as a model the Chat tab lists. Every rung of every candidate is a trial of one study, saved in `{where}`; "
        "starting the same study name again continues it."
    )
    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            study_name = gr.Textbox(value="default", label="Study name", max_lines=1)
            mode = gr.Radio([BUDGET_MODE, TRIALS_MODE], value=BUDGET_MODE, label="What to run", info=MODE_HELP)
            budget = _budget_form(project)
            form = _trials_form()
            with gr.Row():
                start_trials = gr.Button("Start study", variant="primary", visible=False)
                resume = gr.Button("Resume")
                stop = gr.Button("Stop", variant="stop")
        with gr.Column(scale=3, min_width=360, visible=False) as space_column:
            space = gr.Code(value=default_space_json(), language="json", label="Search space (JSON)", lines=14)
            gr.Markdown(SPACE_HELP)
            reset_space = gr.Button("Reset search space to the defaults", size="sm")
    out = _results(reader, dashboard_url)
    _wire_forms(control, mode, budget, form, study_name, space, space_column, start_trials,
                                    reset_space, out)  # fmt: skip
    resume.click(lambda: _started(control.resume()), None, [out.message, out.view], api_name="tune_resume")
    stop.click(control.stop, None, out.message, api_name="tune_stop")
    out.refresh.click(lambda: gr.update(choices=reader.names()), None, out.view, api_visibility="private")

    def from_job(key: str):  # a reload while a tournament runs shows its form, not the browser's last one
        return lambda: (control.running_form() or {}).get(key)

    kept = [
        remember(box, f"chargpt-tune-{key}", prefer=from_job(key))
        for box, key in (
            (study_name, "study"),
            (budget.minutes, "minutes"),
            (budget.model, "model"),
            (budget.fixed, "fixed"),
            (budget.search_short, "search_short"),
            (budget.tokenizer, "tokenizer"),
            (budget.report_to, "report_to"),
        )
    ]

    def bases():  # the models saved since the server started; the running tournament's base on a reload
        names = model_names(project)
        running = from_job("start_from")()
        return gr.update(choices=[NO_BASE, *names], value=running if running in names else NO_BASE)

    return [*kept, (bases, None, budget.start_from), *_wire_tick(control, out), budget.plan_on_load]


def _started(started, with_name: bool = False) -> tuple:
    """A start's message, the study to show, and (for the budget form) a free model name to offer."""
    view = gr.update(choices=[started.study], value=started.study) if started.study else gr.skip()
    name = gr.update(value=started.free_name) if started.free_name else gr.skip()
    return (started.message, view, name) if with_name else (started.message, view)


def _wire_forms(control, mode, budget, form, study_name, space, space_column, start_trials, reset_space, out):
    trials_only = [*form.groups, start_trials, space_column]
    mode.change(lambda choice: [gr.update(visible=choice == BUDGET_MODE)]
                + [gr.update(visible=choice != BUDGET_MODE)] * len(trials_only),
                mode, [budget.group, *trials_only], api_visibility="private")  # fmt: skip
    reset_space.click(default_space_json, None, space, api_visibility="private")
    budget_inputs = [study_name, budget.minutes, budget.model, form.seed, budget.fixed, budget.search_short,
                     budget.overwrite, budget.start_from, budget.tokenizer, budget.report_to]  # fmt: skip

    def start_budget(*values):
        return _started(control.start_budget(dict(zip(BUDGET_FIELDS, values))), with_name=True)

    budget.start.click(start_budget, budget_inputs, [out.message, out.view, budget.model],
                       api_name="tune_budget_start")  # fmt: skip

    def tune_plan(*values):
        return control.plan_text(dict(zip(BUDGET_FIELDS, values)))

    budget.plan_on_load = (tune_plan, budget_inputs, budget.plan)  # the page's load shows it too

    # one listener, one call at a time: the plan shown is the last one asked for (a first call measures this
    # machine's speed for seconds, and a later, quicker one must not be overwritten by it)
    gr.on([budget.minutes.change, budget.fixed.change, budget.start_from.change, budget.tokenizer.change, budget.search_short.change, study_name.change, mode.change],
          tune_plan, budget_inputs, budget.plan, api_name="tune_plan", show_progress="hidden", trigger_mode="always_last",
          concurrency_limit=1, concurrency_id="tune_plan")  # fmt: skip
    widgets = vars(form) | {"study": study_name, "space": space}
    trials_inputs = [widgets[name] for name in TRIALS_FORM]
    start_trials.click(lambda *v: _started(control.start_trials(v)), trials_inputs, [out.message, out.view],
                       api_name="tune_start")  # fmt: skip


def _wire_tick(control: TuneController, out: SimpleNamespace):
    seen = gr.State(None)
    names = {"progress": out.progress, "message": out.message, "summary": out.summary, "table": out.table,
             "history": out.history, "curves": out.curves, "importance": out.importance}  # fmt: skip

    def tick(name: str | None, last: Any):
        shown = control.view(name, last)
        updates: dict[Any, Any] = {seen: shown.fingerprint}
        for key, value in shown.fields.items():
            if key == "view":
                updates[out.view] = gr.update(choices=value[0], value=value[1])
            else:
                updates[names[key]] = gr.skip() if value is KEEP else value
        return updates

    outputs = [*names.values(), out.view, seen]
    gr.Timer(1.5).tick(tick, [out.view, seen], outputs, api_name="tune_refresh", show_progress="hidden")
    out.view.change(tick, [out.view, gr.State(None)], outputs, api_visibility="private", show_progress="hidden")

    def on_load(current: str | None):
        choices = control.reader.names()
        return gr.update(choices=choices, value=current if current in choices else None)

    return [(on_load, out.view, out.view)]

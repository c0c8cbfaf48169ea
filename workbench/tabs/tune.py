"""Tune tab: a search space, a study run in the background, its live trial table and plots."""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import time
from typing import Any

import gradio as gr
import optuna

from core import checkpoint as ckpt
from core.config import ModelConfig, TrainConfig, parse_flops
from core.runs import claim_model_dir
from core.tournament import has_plan, run_tournament
from core.tuning import PRUNERS, SearchSpace, TuneConfig, TuningError, last_step, run_study, trial_value
from workbench.jobs import JobBusy, JobManager
from workbench.project import Project
from workbench.studies import StudyReader
from workbench.ui import error_html, fmt_seconds, job_status_html, ok_html, progress_html

log = logging.getLogger(__name__)
BUDGET_MODE, TRIALS_MODE = "One budget: search, then the final model", "Trials only"
MODE_HELP = (
    "One budget: candidates race in rungs, the best are continued from their checkpoints, and the survivor "
    "trains until the budget ends and is saved. Trials only: each trial trains from scratch; train the best after."
)
TABLE_HEADERS = ["Trial", "State", "Val loss", "Step", "Duration", "Params", "Note"]
SPACE_HELP = (
    '`[low, high]` is a range (whole numbers if both are), `{"low": .., "high": .., "log": true}` a log '
    'range, `{"choices": [..]}` a list, and a plain number a fixed value. Width is `n_head × head_size`, so '
    "every sampled model is valid."
)


def space_json(space: SearchSpace) -> str:
    """One field a line, so the whole space fits the editor."""
    fields = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in space.to_json().items()]
    return "{\n" + ",\n".join(fields) + "\n}"


def default_space_json() -> str:
    return space_json(SearchSpace.for_device())


# The trials form, in the order /tune_start takes its values.
TRIALS_FORM = (
    "study", "trials", "trial_iters", "timeout_min", "pruner", "eval_interval", "eval_iters", "trial_seconds",
    "seed", "space", "trial_flops", "evals_per_trial", "pruner_percentile", "pruner_startup_trials",
)  # fmt: skip


def trials_config(form: dict[str, Any], project: Project) -> TuneConfig:
    """A trials-mode TuneConfig from the form's named values (fields left out keep TuneConfig's defaults)."""
    given = {k: v for k, v in form.items() if v is not None and v != ""}
    number = {"timeout": float(given.get("timeout_min", 0)) * 60}
    for name in ("trials", "trial_iters", "eval_interval", "eval_iters", "evals_per_trial", "pruner_startup_trials",
                 "seed"):  # fmt: skip
        if name in given:
            number[name] = int(given[name])
    for name in ("trial_seconds", "pruner_percentile"):
        if name in given:
            number[name] = float(given[name])
    return TuneConfig(
        study=str(given.get("study", "")).strip(),
        storage=project.storage,
        pruner=given.get("pruner", TuneConfig.pruner),
        trial_flops=parse_flops(str(given.get("trial_flops", "0"))),
        data_dir=str(project.data_dir),
        **number,
    ).validate()


def journal_record(info: dict[str, Any], project: Project) -> dict[str, Any] | None:
    """A tune job's journal entry as configs; entries of older workbenches (the form's values by position,
    under "args") are converted here, the one place that knows them."""
    if info.get("tune"):
        return {"mode": info.get("mode", "trials"), **info}
    if not info.get("args"):
        return None
    form = dict(zip(TRIALS_FORM, info["args"]))
    config = trials_config(form, project)
    space = parse_space(form.get("space") or "{}")
    return {**info, "mode": "trials", "tune": dataclasses.asdict(config), "space": space.to_json()}


def parse_fixed(text: str) -> dict[str, Any]:
    """The model and training fields a tournament keeps fixed, from the form's JSON."""
    try:
        data = json.loads(text or "{}")
    except ValueError as err:
        raise TuningError(f"the fixed settings are not valid JSON: {err}") from None
    known = {f.name for cls in (ModelConfig, TrainConfig) for f in dataclasses.fields(cls)}
    if not isinstance(data, dict) or set(data) - known:
        unknown = ", ".join(sorted(set(data) - known)) if isinstance(data, dict) else text
        raise TuningError(f"fixed settings must be a JSON object of model or training fields; unknown: {unknown}")
    return data


def parse_space(text: str) -> SearchSpace:
    try:
        data = json.loads(text or "{}")
    except ValueError as err:
        raise TuningError(f"the search space is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise TuningError('the search space must be a JSON object such as {"n_layer": [2, 4]}')
    return SearchSpace.from_json(data, base=SearchSpace.for_device())


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _shown_params(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The searched values a trial trains with. A tournament candidate records what it trains (`params`), which
    a waiting one shows, and which wins over what Optuna recorded in a study begun before the user's fixed
    fields left the search space (`SearchSpace.fixing`); the default candidate samples nothing and shows all
    of it."""
    trained = trial.user_attrs.get("params")
    if not trained:
        return trial.params
    actual = SearchSpace.in_space_terms(trained)  # the head size of its width, not of the draw
    return {k: actual.get(k, v) for k, v in trial.params.items()} if trial.params else actual


def trial_rows(trials: list[optuna.trial.FrozenTrial]) -> list[list[Any]]:
    rows = []
    now = time.time()
    for t in sorted(trials, key=lambda t: t.number, reverse=True):
        value = trial_value(t)
        if t.duration is not None:
            seconds = t.duration.total_seconds()
        elif t.datetime_start is not None:
            seconds = now - t.datetime_start.timestamp()
        else:
            seconds = 0.0
        shown = _shown_params(t)
        params = " ".join(f"{k}={_fmt_value(v)}" for k, v in sorted(shown.items()))
        rows.append(
            [
                t.number,
                t.state.name,
                round(value, 4) if value is not None else None,
                last_step(t),
                fmt_seconds(seconds),
                params,
                str(t.user_attrs.get("reason", "") or rung_note(t))[:120],
            ]
        )
    return rows


def rung_note(trial: optuna.trial.FrozenTrial) -> str:
    """Where a trial of a budgeted tournament stands: its rung and candidate (and whom it continues)."""
    if "rung" not in trial.user_attrs:
        return ""
    parent = trial.user_attrs.get("parent")
    note = f"rung {trial.user_attrs['rung']} · candidate {trial.user_attrs.get('candidate')}"
    return note + (f" · continues trial {parent}" if parent is not None else "")


def finished_count(study: optuna.Study | None) -> int:
    if study is None:
        return 0
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=done))


def summary_line(trials: list[optuna.trial.FrozenTrial]) -> str:
    states = [t.state.name for t in trials]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
    parts = [f"{states.count(s)} {s.lower()}" for s in ("COMPLETE", "PRUNED", "RUNNING", "FAIL") if states.count(s)]
    text = f"{len(trials)} trial(s): " + ", ".join(parts) if trials else "no trials yet"
    if complete:
        best = min(complete, key=lambda t: t.value)
        text += f" · best val loss {best.value:.4f} (trial {best.number})"
    return text


def build_tune(
    project: Project, jobs: JobManager, reader: StudyReader, dashboard_url: str | None = None
) -> dict[str, Any]:
    gr.Markdown(
        "Give a total time and press **Start**: candidates race, the best are continued, and the winner is saved "
        "as a model the Chat tab lists. Every rung of every candidate is a trial of one study, saved in "
        f"`{html.escape(project.storage.split('///')[-1].removeprefix(str(project.root) + '/'))}` and can be "
        "continued later by starting the same study name again."
    )
    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            study_name = gr.Textbox(value="default", label="Study name", max_lines=1)
            mode = gr.Radio([BUDGET_MODE, TRIALS_MODE], value=BUDGET_MODE, label="What to run", info=MODE_HELP)
            with gr.Group(visible=True) as budget_group:
                with gr.Row():
                    budget_min = gr.Number(value=10, minimum=0, label="Total budget (minutes)", min_width=90)
                    final_name = gr.Textbox(value="best", label="Save the winner as (model name)", max_lines=1)
                    search_rungs = gr.Number(
                        value=TuneConfig.search_rungs,
                        precision=0,
                        minimum=1,
                        maximum=3,
                        label="Rungs a search needs",
                        info="a shorter budget trains the default for all of it; 1 searches anyway",
                        min_width=90,
                    )
                fixed_json = gr.Textbox(
                    value="{}",
                    label='Keep these fixed in every candidate (JSON, e.g. {"n_layer": 4, "block_size": 128})',
                    max_lines=2,
                )
                budget_start_btn = gr.Button("Start", variant="primary")
            with gr.Group(visible=False) as trials_group, gr.Row():
                trials = gr.Number(value=TuneConfig.trials, precision=0, minimum=1, label="Trials", min_width=90)
                trial_iters = gr.Number(
                    value=TuneConfig.trial_iters, precision=0, minimum=1, label="Steps per trial", min_width=90
                )
            with gr.Row(visible=False) as trials_row:
                timeout_min = gr.Number(value=0, minimum=0, label="Time budget (min, 0 = none)", min_width=90)
                pruner = gr.Dropdown(list(PRUNERS), value=TuneConfig.pruner, label="Pruner", min_width=90)
            with gr.Accordion("More settings", open=False, visible=False) as trials_more:
                with gr.Row():
                    eval_interval = gr.Number(
                        value=TuneConfig.eval_interval,
                        precision=0,
                        minimum=1,
                        label="Steps between evals",
                        min_width=90,
                    )
                    eval_iters = gr.Number(
                        value=TuneConfig.eval_iters, precision=0, minimum=1, label="Batches per eval", min_width=90
                    )
                with gr.Row():
                    trial_seconds = gr.Number(
                        value=0, minimum=0, label="Seconds per trial (0 = by steps)", min_width=90
                    )
                    trial_flops = gr.Textbox(
                        value="0", label="FLOPs per trial (0 = by steps)", placeholder="0.5T", max_lines=1, min_width=90
                    )
                with gr.Row():
                    evals_per_trial = gr.Number(
                        value=TuneConfig.evals_per_trial,
                        precision=0,
                        minimum=1,
                        label="Evals per trial (seconds or FLOPs budget)",
                        min_width=90,
                    )
                    seed = gr.Number(value=TuneConfig.seed, precision=0, label="Seed", min_width=90)
                with gr.Row():
                    pruner_percentile = gr.Number(
                        value=round(TuneConfig.pruner_percentile, 1),
                        minimum=0,
                        maximum=100,
                        label="Pruner percentile (keep the best %)",
                        min_width=90,
                    )
                    pruner_startup = gr.Number(
                        value=TuneConfig.pruner_startup_trials,
                        precision=0,
                        minimum=0,
                        label="Trials before pruning starts",
                        min_width=90,
                    )
            with gr.Row():
                start_btn = gr.Button("Start study", variant="primary", visible=False)
                resume_btn = gr.Button("Resume")
                stop_btn = gr.Button("Stop", variant="stop")
        with gr.Column(scale=3, min_width=360, visible=False) as space_column:
            space = gr.Code(value=default_space_json(), language="json", label="Search space (JSON)", lines=14)
            gr.Markdown(SPACE_HELP)
            reset_space = gr.Button("Reset search space to the defaults", size="sm")
    message = gr.HTML()
    progress = gr.HTML(progress_html(0, "no study running"))
    with gr.Row():
        view = gr.Dropdown(
            choices=reader.names(), value=None, label="Study shown below", allow_custom_value=True, scale=3
        )
        refresh_btn = gr.Button("Refresh list", size="sm", scale=1)
        if dashboard_url:
            gr.HTML(
                f'<a href="{html.escape(dashboard_url)}" target="_blank" rel="noopener">Open optuna-dashboard ↗</a>'
                + (
                    "<br><small>(behind your login, read-only)</small>"
                    if dashboard_url.startswith("/")
                    else "<br><small>(served on 127.0.0.1: open it from this machine)</small>"
                )
            )
    summary = gr.Markdown("Choose a study, or start one.")
    table = gr.Dataframe(
        headers=TABLE_HEADERS,
        value=[],
        label="Trials (newest first)",
        interactive=False,
        wrap=True,
        max_height=320,
        column_widths=["7%", "11%", "10%", "7%", "9%", "40%", "16%"],
    )
    with gr.Row():
        history_plot = gr.Plot(label="Optimization history")
        curves_plot = gr.Plot(label="Intermediate values")
    importance_plot = gr.Plot(label="Parameter importance")

    reset_space.click(default_space_json, None, space, api_visibility="private")

    trials_only = [trials_group, trials_row, trials_more, start_btn, space_column]

    def switch(choice: str):
        budget = choice == BUDGET_MODE
        return [gr.update(visible=budget)] + [gr.update(visible=not budget)] * len(trials_only)

    mode.change(switch, mode, [budget_group, *trials_only], api_visibility="private")

    def start_budget(
        name: str,
        minutes: float,
        model_name: str,
        seed_value: float,
        fixed: str = "{}",
        rungs_needed: float = TuneConfig.search_rungs,
        tune: dict | None = None,
    ):
        """A tournament within `minutes`; `tune` is a journalled TuneConfig (Resume), else the form's."""
        try:
            config = TuneConfig(
                **(tune or {}),
                **({} if tune else {
                    "study": (name or "").strip(), "storage": project.storage, "budget": float(minutes or 0) * 60,
                    "seed": int(seed_value or 0), "data_dir": str(project.data_dir),
                    "runs_dir": str(project.root / "studies" / "runs"), "overrides": parse_fixed(fixed),
                    "search_rungs": int(rungs_needed or TuneConfig.search_rungs),
                }),
            )  # fmt: skip
            if not config.budget > 0:
                raise TuningError("give the total budget in minutes (more than 0)")
            config.validate()
            target = ckpt.model_dir((model_name or "").strip(), project.models_dir)
            if not project.has_dataset():
                raise TuningError("there is no dataset yet; prepare one in the Dataset tab first")
            if jobs.active("prepare"):
                raise TuningError("a dataset is being prepared; start when it is done")
            claim_model_dir(target, resume=bool(tune) or has_plan(config), overwrite=False)
        except (TuningError, ckpt.ModelError, ValueError, TypeError) as err:
            return error_html(str(err)), gr.skip()
        search = SearchSpace.for_budget(config.device)

        def run(job):
            def on_event(event) -> None:
                job.add_event({"kind": "rung", **dataclasses.asdict(event)})
                if event.kind == "end":
                    score = f"val {event.score:.4f}" if event.score is not None else event.message
                    text = f"rung {event.rung}: candidate {event.candidate} {score}"
                elif event.kind == "start":
                    text = f"rung {event.rung} ({event.alive} alive): training candidate {event.candidate}"
                else:
                    text = event.message
                left = max(0.0, event.time_left_s)
                job.update(progress=1 - left / config.budget, message=f"{text} · {fmt_seconds(left)} left")

            final = run_tournament(config, search, name=target.name, models_dir=project.models_dir, stop=job.stop,
                                   on_event=on_event)  # fmt: skip
            if final is not None:
                job.update(message=f"saved models/{final.name}; the Chat tab lists it")
            return config.study

        info = {"study": config.study, "mode": "budget", "tune": dataclasses.asdict(config), "model": target.name}
        try:
            jobs.start("tune", f"tournament {config.study}", run, **info)
        except JobBusy as err:
            return error_html(str(err)), gr.skip()
        names = reader.names()
        return ok_html(
            f"Started tournament {config.study}: {config.budget / 60:g} minutes in all; the winner is saved as "
            f"models/{target.name}."
        ), gr.update(choices=sorted({*names, config.study}), value=config.study)

    budget_start_btn.click(
        start_budget,
        [study_name, budget_min, final_name, seed, fixed_json, search_rungs],
        [message, view],
        api_name="tune_budget_start",
    )

    def start(*values):
        """Start a study from the form (TRIALS_FORM's fields, in that order, as the API takes them)."""
        try:
            form = dict(zip(TRIALS_FORM, values))
            config = trials_config(form, project)
            search = parse_space(form["space"]).validate()
        except (TuningError, ValueError, TypeError) as err:
            return error_html(str(err)), gr.skip()
        return start_study(config, search)

    def start_study(config: TuneConfig, search: SearchSpace):
        try:
            if not project.has_dataset():
                raise TuningError("there is no dataset yet; prepare one in the Dataset tab first")
            if jobs.active("prepare"):
                raise TuningError("a dataset is being prepared; start the study when it is done")
        except TuningError as err:
            return error_html(str(err)), gr.skip()

        def run(job):
            finished: set[int] = set()

            def on_event(event) -> None:
                record = dataclasses.asdict(event)
                job.add_event(record)
                if event.state != "RUNNING":
                    finished.add(event.trial)
                value = f"{event.val_loss:.4f}" if event.val_loss is not None else "-"
                fraction = len(finished) / config.trials
                if config.timeout:
                    fraction = max(fraction, job.elapsed / config.timeout)
                job.update(
                    progress=fraction,
                    message=f"{len(finished)}/{config.trials} trials done · trial {event.trial} "
                    f"{event.state.lower()} at step {event.step}, val {value}",
                )

            study = run_study(config, search, stop=job.stop, on_event=on_event)
            done = [t for t in study.get_trials(deepcopy=False) if t.value is not None]
            if done:
                best = min(done, key=lambda t: t.value)
                job.update(message=f"best val loss {best.value:.4f} (trial {best.number})")
            return config.study

        target = finished_count(reader.load(config.study)) + config.trials
        info = {"study": config.study, "mode": "trials", "tune": dataclasses.asdict(config),
                "space": search.to_json(), "target_trials": target}  # fmt: skip
        try:
            jobs.start("tune", f"study {config.study}", run, **info)
        except JobBusy as err:
            return error_html(str(err)), gr.skip()
        names = reader.names()
        if config.study not in names:
            names.append(config.study)
        return ok_html(f"Started study {config.study}: {config.trials} trial(s)."), gr.update(
            choices=names, value=config.study
        )

    start_btn.click(
        start,
        [
            study_name,
            trials,
            trial_iters,
            timeout_min,
            pruner,
            eval_interval,
            eval_iters,
            trial_seconds,
            seed,
            space,
            trial_flops,
            evals_per_trial,
            pruner_percentile,
            pruner_startup,
        ],
        [message, view],
        api_name="tune_start",
    )

    def resume():
        """Start the last study again with its settings, for the trials it had left."""
        job = jobs.get("tune")
        info = journal_record(job.info, project) if job is not None else None
        if not info:
            return error_html("There is no study to resume; press Start study (a known name continues it)."), gr.skip()
        if job.active:
            return error_html(f"{job.title} is still running."), gr.skip()
        if info["mode"] == "budget":
            return start_budget("", 0, info["model"], 0, tune=info["tune"])
        left = info["target_trials"] - finished_count(reader.load(info["study"]))
        if left <= 0:
            return ok_html(f"{job.title} already ran all its trials; press Start study to run more."), gr.skip()
        config = dataclasses.replace(TuneConfig(**info["tune"]), trials=left)
        return start_study(config, SearchSpace.from_json(info["space"], base=SearchSpace.for_device()))

    resume_btn.click(resume, None, [message, view], api_name="tune_resume")
    stop_btn.click(lambda: ok_html(jobs.stop("tune")), None, message, api_name="tune_stop")
    refresh_btn.click(lambda: gr.update(choices=reader.names()), None, view, api_visibility="private")

    seen = gr.State(None)

    def tick(name: str | None, last: Any):
        job = jobs.get("tune")
        snap = job.snapshot() if job else None
        attach = not name and snap is not None
        if attach:
            name = snap["info"].get("study")
        study = reader.load(name) if name else None
        trials_now = study.get_trials(deepcopy=False) if study is not None else []
        fingerprint = (
            name,
            snap["version"] if snap else None,
            tuple((t.number, t.state.name, len(t.intermediate_values)) for t in trials_now),
            tuple(t.number for t in trials_now if t.state == optuna.trial.TrialState.COMPLETE),
        )
        if fingerprint == last:
            return {seen: last}
        # No trial completed since the last tick: the history and importance plots the page shows still hold,
        # and not sending them spares the browser re-drawing them at every evaluation of a running trial.
        settled = last is not None and last[0] == name and last[-1] == fingerprint[-1]
        updates: dict[Any, Any] = {seen: fingerprint}
        if snap:
            shown = snap["message"] if snap["active"] else snap["status"]
            updates[progress] = progress_html(snap["progress"], f"{snap['title']}: {shown}")
            updates[message] = job_status_html(snap, "")
        else:
            updates[progress] = progress_html(0, "no study running")
        if study is None:
            text = f"No study named {name!r} yet." if name else "Choose a study, or start one."
            plots = {history_plot: None, curves_plot: None, importance_plot: None}
            return updates | {summary: text, table: [], **plots}
        history, curves, importance = reader.plots(study, trials_now)
        if attach:
            updates[view] = gr.update(choices=reader.names(), value=name)
        return updates | {
            summary: f"**{name}** — {summary_line(trials_now)}",
            table: trial_rows(trials_now),
            history_plot: gr.skip() if settled else history,
            curves_plot: curves,
            importance_plot: gr.skip() if settled else importance,
        }

    outputs = [progress, message, summary, table, history_plot, curves_plot, importance_plot, view, seen]
    timer = gr.Timer(1.5)
    timer.tick(tick, [view, seen], outputs, api_name="tune_refresh", show_progress="hidden")
    view.change(tick, [view, gr.State(None)], outputs, api_visibility="private", show_progress="hidden")
    return {"start": start_btn, "stop": stop_btn, "table": table, "view": view, "space": space}

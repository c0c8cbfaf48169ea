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
from core.config import parse_flops
from core.tournament import has_plan, run_tournament
from core.tuning import PRUNERS, SearchSpace, TuneConfig, TuningError, last_step, run_study, trial_value
from workbench.jobs import JobBusy, JobManager
from workbench.project import Project
from workbench.studies import MIN_TRIALS_FOR_IMPORTANCE, StudyReader
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
        params = " ".join(f"{k}={_fmt_value(v)}" for k, v in sorted(t.params.items()))
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
        "Each trial trains a small model for a short budget and reports its validation loss; weak trials are "
        "pruned early. Studies are saved in "
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
                budget_start_btn = gr.Button("Start", variant="primary")
            with gr.Group(visible=False) as trials_group, gr.Row():
                trials = gr.Number(value=20, precision=0, minimum=1, label="Trials", min_width=90)
                trial_iters = gr.Number(value=300, precision=0, minimum=1, label="Steps per trial", min_width=90)
            with gr.Row(visible=False) as trials_row:
                timeout_min = gr.Number(value=0, minimum=0, label="Time budget (min, 0 = none)", min_width=90)
                pruner = gr.Dropdown(list(PRUNERS), value=TuneConfig.pruner, label="Pruner", min_width=90)
            with gr.Accordion("More settings", open=False):
                with gr.Row():
                    eval_interval = gr.Number(
                        value=50, precision=0, minimum=1, label="Steps between evals", min_width=90
                    )
                    eval_iters = gr.Number(value=20, precision=0, minimum=1, label="Batches per eval", min_width=90)
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
                    seed = gr.Number(value=0, precision=0, label="Seed", min_width=90)
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
        with gr.Column(scale=3, min_width=360):
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
                "<br><small>(served on 127.0.0.1: open it from this machine)</small>"
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
    importance_plot = gr.Plot(label=f"Parameter importance (from {MIN_TRIALS_FOR_IMPORTANCE} complete trials)")

    reset_space.click(default_space_json, None, space, api_visibility="private")

    def switch(choice: str):
        budget = choice == BUDGET_MODE
        return (gr.update(visible=budget), gr.update(visible=not budget), gr.update(visible=not budget),
                gr.update(visible=not budget))  # fmt: skip

    mode.change(switch, mode, [budget_group, trials_group, trials_row, start_btn], api_visibility="private")

    def start_budget(name: str, minutes: float, model_name: str, seed_value: float, tune: dict | None = None):
        """A tournament within `minutes`; `tune` is a journalled TuneConfig (Resume), else the form's."""
        try:
            config = TuneConfig(
                **(tune or {}),
                **({} if tune else {
                    "study": (name or "").strip(), "storage": project.storage, "budget": float(minutes or 0) * 60,
                    "seed": int(seed_value or 0), "data_dir": str(project.data_dir),
                    "runs_dir": str(project.root / "studies" / "runs"),
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
            if not tune and not has_plan(config) and target.exists() and any(target.iterdir()):
                raise ckpt.ModelError(f"models/{target.name} already holds a model; choose another name")
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
        start_budget, [study_name, budget_min, final_name, seed], [message, view], api_name="tune_budget_start"
    )

    def start(
        name,
        n_trials,
        iters,
        timeout,
        pruner_name,
        interval,
        batches,
        seconds,
        seed_value,
        space_text,
        flops="0",
        evals=TuneConfig.evals_per_trial,
        percentile=TuneConfig.pruner_percentile,
        startup=TuneConfig.pruner_startup_trials,
    ):
        # The last four have defaults because jobs.json entries written before they existed resume with them.
        try:
            config = TuneConfig(
                study=(name or "").strip(),
                storage=project.storage,
                trials=int(n_trials or 0),
                timeout=float(timeout or 0) * 60,
                trial_iters=int(iters or 0),
                trial_seconds=float(seconds or 0),
                trial_flops=parse_flops(flops or "0"),
                eval_interval=int(interval or 0),
                evals_per_trial=int(evals or 0),
                eval_iters=int(batches or 0),
                pruner=pruner_name,
                pruner_percentile=float(percentile if percentile is not None else TuneConfig.pruner_percentile),
                pruner_startup_trials=int(startup if startup is not None else TuneConfig.pruner_startup_trials),
                seed=int(seed_value or 0),
                data_dir=str(project.data_dir),
            ).validate()
            search = parse_space(space_text).validate()
            if not project.has_dataset():
                raise TuningError("there is no dataset yet; prepare one in the Dataset tab first")
            if jobs.active("prepare"):
                raise TuningError("a dataset is being prepared; start the study when it is done")
        except (TuningError, ValueError, TypeError) as err:
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

        args = [config.study, n_trials, iters, timeout, pruner_name, interval, batches, seconds, seed_value, space_text]
        args += [flops, evals, percentile, startup]
        target = finished_count(reader.load(config.study)) + config.trials
        try:
            jobs.start("tune", f"study {config.study}", run, study=config.study, args=args, target_trials=target)
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
        if job is not None and job.info.get("mode") == "budget" and not job.active:
            return start_budget("", 0, job.info["model"], 0, tune=job.info["tune"])
        if job is None or not job.info.get("args"):
            return error_html("There is no study to resume; press Start study (a known name continues it)."), gr.skip()
        if job.active:
            return error_html(f"{job.title} is still running."), gr.skip()
        args = list(job.info["args"])
        left = job.info["target_trials"] - finished_count(reader.load(job.info["study"]))
        if left <= 0:
            return ok_html(f"{job.title} already ran all its trials; press Start study to run more."), gr.skip()
        args[1] = left
        return start(*args)

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
        )
        if fingerprint == last:
            return (gr.skip(),) * 8 + (last,)
        if snap and snap["active"]:
            bar = progress_html(snap["progress"], f"{snap['title']}: {snap['message']}")
            status = job_status_html(snap, "")
        elif snap:
            bar = progress_html(snap["progress"], f"{snap['title']}: {snap['status']}")
            status = job_status_html(snap, "")
        else:
            bar, status = progress_html(0, "no study running"), gr.skip()
        if study is None:
            text = f"No study named {name!r} yet." if name else "Choose a study, or start one."
            return bar, status, text, [], None, None, None, gr.skip(), fingerprint
        history, curves, importance = reader.plots(study, trials_now)
        view_update = gr.update(choices=reader.names(), value=name) if attach else gr.skip()
        return (
            bar,
            status,
            f"**{name}** — {summary_line(trials_now)}",
            trial_rows(trials_now),
            history,
            curves,
            importance,
            view_update,
            fingerprint,
        )

    outputs = [progress, message, summary, table, history_plot, curves_plot, importance_plot, view, seen]
    timer = gr.Timer(1.5)
    timer.tick(tick, [view, seen], outputs, api_name="tune_refresh", show_progress="hidden")
    view.change(tick, [view, gr.State(None)], outputs, api_visibility="private", show_progress="hidden")
    return {"start": start_btn, "stop": stop_btn, "table": table, "view": view, "space": space}

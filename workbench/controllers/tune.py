"""The Tune tab's work: a study or a budgeted tournament started, resumed, stopped and shown.

The builder (workbench/tabs/tune.py) only lays out widgets and maps these methods' results onto them.
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import optuna

from core import checkpoint as ckpt
from core.config import STUDIES_DIR, ModelConfig, TrainConfig, parse_flops
from core.data import DataError
from core.runs import ModelTaken
from core.tune.budget import preview
from core.tune.config import StudyConfig, TournamentConfig, TuningError
from core.tune.plan import fmt_ms
from core.tune.record import STOPPED_REASON, RungEvent, begin_tournament, with_base
from core.tune.results import last_step, trial_value
from core.tune.rungs import run_tournament
from core.tune.space import SearchSpace
from core.tune.study import run_study
from workbench.jobs import JobBusy, JobManager
from workbench.project import Project
from workbench.studies import StudyReader
from workbench.views import KEEP, NO_BASE, error_html, fmt_seconds, job_status_html, ok_html, picked_base, progress_html

log = logging.getLogger(__name__)
BUDGET_FIELDS = ("study", "minutes", "model", "seed", "fixed", "search_short", "overwrite", "start_from", "tokenizer",
                 "report_to")  # fmt: skip


@dataclass
class Started:
    """What a start or resume tells the page: its message, the study to show, a free model name to offer."""

    message: str
    study: str | None = None
    free_name: str | None = None


@dataclass
class TuneView:
    fingerprint: Any
    fields: dict[str, Any] = field(default_factory=dict)  # progress, message, summary, table, plots, view


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


def trials_config(form: dict[str, Any], project: Project) -> StudyConfig:
    """A study's config from the form's named values (fields left out keep StudyConfig's defaults)."""
    given = {k: v for k, v in form.items() if v is not None and v != ""}
    number = {"timeout": float(given.get("timeout_min", 0)) * 60}
    for name in ("trials", "trial_iters", "eval_interval", "eval_iters", "evals_per_trial", "pruner_startup_trials",
                 "seed"):  # fmt: skip
        if name in given:
            number[name] = int(given[name])
    for name in ("trial_seconds", "pruner_percentile"):
        if name in given:
            number[name] = float(given[name])
    return StudyConfig(
        study=str(given.get("study", "")).strip(),
        storage=project.storage,
        pruner=given.get("pruner", StudyConfig.pruner),
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
    known = {f.name for cls in (ModelConfig, TrainConfig) for f in dataclasses.fields(cls)} | {"tokenizer"}
    if not isinstance(data, dict) or set(data) - known:
        unknown = ", ".join(sorted(set(data) - known)) if isinstance(data, dict) else text
        raise TuningError(f"fixed settings must be a JSON object of model or training fields; unknown: {unknown}")
    return data


def _base_field(choice: str | None) -> dict[str, Any]:
    base = picked_base(choice)
    return {"init_from": base} if base else {}


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


def trial_rows(trials: list[optuna.trial.FrozenTrial], live: dict[int, int] | None = None) -> list[list[Any]]:
    """The table's rows, newest first; `live` holds running trials' latest steps."""
    rows, live = [], live or {}
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
                shown_state(t),
                round(value, 4) if value is not None else None,
                live.get(t.number, last_step(t)) if t.state == optuna.trial.TrialState.RUNNING else last_step(t),
                fmt_seconds(seconds),
                params,
                str(t.user_attrs.get("reason", "") or rung_note(t))[:120],
            ]
        )
    return rows


def shown_state(trial: optuna.trial.FrozenTrial) -> str:
    """A rung the user stopped is not a failure: the next run continues it."""
    if trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs.get("reason") == STOPPED_REASON:
        return "STOPPED"
    return trial.state.name


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
    states = [shown_state(t) for t in trials]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
    parts = [f"{states.count(s)} {s.lower()}" for s in ("COMPLETE", "PRUNED", "RUNNING", "WAITING", "STOPPED", "FAIL")
             if states.count(s)]  # fmt: skip
    text = f"{len(trials)} trial(s): " + ", ".join(parts) if trials else "no trials yet"
    if complete:
        best = min(complete, key=lambda t: t.value)
        text += f" · best val loss {best.value:.4f} (trial {best.number})"
    return text


class TuneController:
    def __init__(self, project: Project, jobs: JobManager, reader: StudyReader):
        self.project, self.jobs, self.reader = project, jobs, reader

    # --- checks --------------------------------------------------------------------------------------

    def guard(self) -> None:
        self.jobs.require_dataset(self.project.data_dir)

    def budget_config(self, form: dict[str, Any]) -> TournamentConfig:
        """A tournament's config from the budget form (BUDGET_FIELDS by name)."""
        fixed = parse_fixed(form.get("fixed") or "{}")
        # the tokenizer fixed in the JSON (as `{"tokenizer": "char"}`) or chosen in the form
        tokenizer = fixed.pop("tokenizer", None) or form.get("tokenizer") or TournamentConfig.tokenizer
        report_to = fixed.pop("report_to", None) or form.get("report_to") or "none"  # where, not how it trains
        return TournamentConfig(
            study=(form.get("study") or "").strip(),
            storage=self.project.storage,
            budget=float(form.get("minutes") or 0) * 60,
            seed=int(form.get("seed") or 0),
            data_dir=str(self.project.data_dir),
            runs_dir=str(self.project.root / STUDIES_DIR / "runs"),
            overrides=fixed | _base_field(form.get("start_from")),
            search_rungs=1 if form.get("search_short") else TournamentConfig.search_rungs,
            tokenizer=tokenizer,
            report_to=report_to,
        )

    def running_form(self) -> dict[str, Any] | None:
        """The budget form of the tournament this server runs (or ran last), by BUDGET_FIELDS name: what a
        reloaded page shows, whatever the browser remembered."""
        job = self.jobs.get("tune")
        info = job.snapshot()["info"] if job else {}
        tune = info.get("tune") if info.get("mode") == "budget" else None
        if not tune:
            return None
        overrides = dict(tune.get("overrides") or {})
        base = overrides.pop("init_from", None)
        return {
            "study": tune.get("study"),
            "minutes": round(float(tune.get("budget") or 0) / 60, 2),
            "model": info.get("model"),
            "fixed": json.dumps(overrides) if overrides else "",
            "search_short": tune.get("search_rungs") == 1,
            "start_from": base or NO_BASE,
            "tokenizer": tune.get("tokenizer", TournamentConfig.tokenizer),
            "report_to": tune.get("report_to", "none"),
        }

    def plan_text(self, form: dict[str, Any]) -> str:
        """What Start would do with this budget, said before it starts (the speed is measured once, cached)."""
        try:
            self.guard()
            config = self.budget_config({**form, "minutes": form.get("minutes") or 0.001})
            config = with_base(config.validate(), self.project.models_dir)
            shown = preview(config, measure=not (self.jobs.active("train") or self.jobs.active("tune")))
        except (TuningError, DataError, ckpt.ModelError, ValueError, TypeError) as err:
            return f"*{err}*"
        least = shown.minimums
        pace = f" (the default model at {fmt_ms(shown.step_s)} a step)" if shown.step_s else ""
        minimum = (
            f"At least **{fmt_minutes(least.run_s)}** to train the default model here{pace}; a search needs "
            f"**{fmt_minutes(least.search_s)}**, a short search (box ticked) **{fmt_minutes(least.short_search_s)}**."
        )
        if not float(form.get("minutes") or 0) > 0:
            return minimum
        return f"{minimum}  \n**Plan:** {shown.text()}"

    # --- starting --------------------------------------------------------------------------------------

    def start_budget(self, form: dict[str, Any], tune: dict[str, Any] | None = None) -> Started:
        """A tournament within the form's minutes; `tune` is a journalled TournamentConfig (Resume)."""
        try:
            config = TournamentConfig.from_saved(tune) if tune else self.budget_config(form)
            if not config.budget > 0:
                raise TuningError("give the total budget in minutes (more than 0)")
            self.guard()
            if not tune:  # a budget too short is refused here, in one line, not by the job after it started
                shown = preview(with_base(config, self.project.models_dir),
                                measure=not (self.jobs.active("train") or self.jobs.active("tune")))  # fmt: skip
                if shown.error:
                    raise TuningError(shown.error)
            begun = begin_tournament(config, None, (form.get("model") or "").strip(), self.project.models_dir,
                                     overwrite=bool(form.get("overwrite")) and not tune)  # fmt: skip
            target, space = begun.out_dir, begun.space
        except ModelTaken as err:
            return Started(
                error_html(f"{ModelTaken(err.out_dir, 'tick “Replace a saved model of that name” to overwrite it')} "
                           "(filled in below)."),
                free_name=err.free,
            )  # fmt: skip
        except (TuningError, DataError, ckpt.ModelError, ValueError, TypeError) as err:
            return Started(error_html(str(err)))

        def run(job):
            def on_event(event: RungEvent) -> None:
                job.add_event({"at": time.time(), **dataclasses.asdict(event)})
                job.update(progress=1 - max(0.0, event.time_left_s) / config.budget, message=event.text())

            final = run_tournament(begun.config, space, name=target.name, models_dir=self.project.models_dir,
                                   stop=job.stop, on_event=on_event)  # fmt: skip
            if final is not None:
                job.update(message=f"saved models/{final.name}; the Chat tab lists it")
            elif job.stop.is_set():
                job.update(message="stopped; Resume continues the tournament from its checkpoints")
            return config.study

        info = {"study": config.study, "mode": "budget", "tune": dataclasses.asdict(config), "model": target.name}
        try:
            self.jobs.start("tune", f"tournament {config.study}", run, **info)
        except JobBusy as err:
            return Started(error_html(str(err)))
        return Started(
            ok_html(f"Started tournament {config.study}: {fmt_minutes(config.budget)} in all; the winner is saved "
                    f"as models/{target.name}."),
            study=config.study,
        )  # fmt: skip

    def start_trials(self, values: tuple) -> Started:
        """A study from the trials form (TRIALS_FORM's fields, in that order, as the API takes them)."""
        try:
            form = dict(zip(TRIALS_FORM, values))
            config = trials_config(form, self.project)
            search = parse_space(form["space"]).validate()
        except (TuningError, ValueError, TypeError) as err:
            return Started(error_html(str(err)))
        return self.start_study(config, search)

    def start_study(self, config: StudyConfig, search: SearchSpace) -> Started:
        try:
            self.guard()
        except DataError as err:
            return Started(error_html(str(err)))

        def run(job):
            finished: set[int] = set()

            def on_event(event) -> None:
                job.add_event(dataclasses.asdict(event))
                if event.state != "RUNNING":
                    finished.add(event.trial)
                fraction = len(finished) / config.trials
                if config.timeout:
                    fraction = max(fraction, job.elapsed / config.timeout)
                job.update(progress=fraction, message=f"{len(finished)}/{config.trials} trials done · {event.text()}")

            study = run_study(config, search, stop=job.stop, on_event=on_event)
            done = [t for t in study.get_trials(deepcopy=False) if t.value is not None]
            if done:
                best = min(done, key=lambda t: t.value)
                job.update(message=f"best val loss {best.value:.4f} (trial {best.number})")
            return config.study

        target = finished_count(self.reader.load(config.study)) + config.trials
        info = {"study": config.study, "mode": "trials", "tune": dataclasses.asdict(config),
                "space": search.to_json(), "target_trials": target}  # fmt: skip
        try:
            self.jobs.start("tune", f"study {config.study}", run, **info)
        except JobBusy as err:
            return Started(error_html(str(err)))
        return Started(ok_html(f"Started study {config.study}: {plural(config.trials, 'trial')}."), config.study)

    def resume(self) -> Started:
        """Start the last study again with its settings, for the trials (or the budget) it had left."""
        job = self.jobs.get("tune")
        info = journal_record(job.info, self.project) if job is not None else None
        if not info:
            return Started(error_html("There is no study to resume; press Start (a known name continues it)."))
        if job.active:
            return Started(error_html(f"{job.title} is still running."))
        if info["mode"] == "budget":
            return self.start_budget({"model": info["model"]}, tune=info["tune"])
        left = info["target_trials"] - finished_count(self.reader.load(info["study"]))
        if left <= 0:
            return Started(ok_html(f"{job.title} already ran all its trials; press Start study to run more."))
        config = dataclasses.replace(StudyConfig.from_saved(info["tune"]), trials=left)
        return self.start_study(config, SearchSpace.from_json(info["space"], base=SearchSpace.for_device()))

    def stop(self) -> str:
        return ok_html(self.jobs.stop("tune"))

    # --- the tick ------------------------------------------------------------------------------------------

    def view(self, name: str | None, last: Any) -> TuneView:
        """What the page shows now; only `fingerprint` when nothing changed since `last`."""
        job = self.jobs.get("tune")
        snap = job.snapshot() if job else None
        attach = not name and snap is not None
        if attach:
            name = snap["info"].get("study")
        study = self.reader.load(name) if name else None
        trials = study.get_trials(deepcopy=False) if study is not None else []
        now = time.time()
        fingerprint = (
            name,
            snap["version"] if snap else None,
            int(now) if snap and snap["active"] else None,  # the clock moves the bar between events
            tuple((t.number, t.state.name, len(t.intermediate_values)) for t in trials),
            tuple(t.number for t in trials if t.state == optuna.trial.TrialState.COMPLETE),
        )
        if fingerprint == last:
            return TuneView(last)
        # No trial completed since the last tick: the history and importance plots the page shows still hold,
        # and not sending them spares the browser re-drawing them at every evaluation of a running trial.
        settled = last is not None and last[0] == name and last[-1] == fingerprint[-1]
        same_trials = settled and last[3] == fingerprint[3]  # no trial reported since: the curves hold too
        bar = progress_html(*job_progress(snap, now)) if snap else progress_html(0, "no study running")
        if same_trials and last[:2] == fingerprint[:2]:  # only the clock moved: only the bar moves
            return TuneView(fingerprint, {"progress": bar})
        fields: dict[str, Any] = {"progress": bar, "message": status_html(snap) if snap else ""}
        if study is None:
            text = f"No study named {name!r} yet." if name else "Choose a study, or start one."
            return TuneView(fingerprint, fields | {"summary": text, "table": [], **self.reader.empty_plots()})
        history, curves, importance = self.reader.plots(study, trials)
        if attach:
            fields["view"] = (self.reader.names(), name)
        live = live_steps(snap) if snap and snap["active"] and snap["info"].get("study") == name else {}
        return TuneView(fingerprint, fields | {
            "summary": f"**{name}** — {summary_line(trials)}",
            "table": trial_rows(trials, live),
            "history": KEEP if settled else history,
            "curves": KEEP if same_trials else curves,
            "importance": KEEP if settled else importance,
        })  # fmt: skip


def job_progress(snap: dict[str, Any], now: float) -> tuple[float, str]:
    """The bar of a tune job: a tournament's moves with the wall clock between its events."""
    if not snap["active"] or snap["info"].get("mode") != "budget":
        return snap["progress"], f"{snap['title']}: {snap['message'] if snap['active'] else snap['status']}"
    budget = snap["info"]["tune"]["budget"]
    events = [e for e in snap["events"] if "time_left_s" in e]
    if not events:
        return min(1.0, snap["elapsed"] / budget), f"{snap['title']}: measuring this machine's speed and planning…"
    last = events[-1]
    left = max(0.0, last["time_left_s"] - (now - last["at"]))
    text = RungEvent(**{k: v for k, v in last.items() if k != "at"}).text()
    if snap["status"] == "stopping":
        text += " · stopping at the next step…"
    return 1 - left / budget, f"{text} · {fmt_seconds(left)} left"


def status_html(snap: dict[str, Any]) -> str:
    """The job's line, and while a tournament runs, its plan."""
    plans = [e["message"] for e in snap["events"] if e.get("kind") == "plan"]
    plan = f'<div class="wb-plan">Plan: {html.escape(plans[-1])}</div>' if plans and snap["active"] else ""
    return job_status_html(snap, "") + plan


def live_steps(snap: dict[str, Any]) -> dict[int, int]:
    """The running trials' latest steps, from the job's step events (a trial records its steps when it ends)."""
    return {e["trial"]: e["step"] for e in snap["events"] if e.get("kind") == "step" and e.get("trial") is not None}


def fmt_minutes(seconds: float) -> str:
    if seconds < 120:
        return plural(round(seconds), "second")
    minutes = seconds / 60
    return plural(round(minutes, 1) if minutes < 10 else round(minutes), "minute")


def plural(count: float, noun: str) -> str:
    return f"{count:g} {noun}" + ("" if count == 1 else "s")

"""Tuning: Optuna studies and tournaments within one wall-time budget.

space = SearchSpace.for_budget("cpu")                                        # core.tune.space
run_study(StudyConfig(study="s1", trials=20), space)                         # core.tune.study
run_tournament(TournamentConfig(study="t", budget=1200), space, name="best")  # core.tune.rungs

config      what a study (StudyConfig) or a tournament (TournamentConfig) is asked, TuningError, pruners
space       the search space
storage     Optuna storages, heartbeats, opening and creating studies
study       a classic study of trials (`tune --trials`)
results     best trial and parameters, the studies a storage holds
plan        a tournament's rungs for a budget, the minimum budgets
speed       the default model's measured pace
tokenizer   the tokenizer a tournament trains with: a BPE where it is measured to pay
budget      what a budget gets: its plan, tokenizer and default (a larger one for long budgets), the preview
candidates  the default, its neighbours, a seeded draw of the space
record      a tournament's state in its study: waiting, stopped, promoted
rungs       running a tournament's rungs

The tournament (`tune --budget`): many candidates train for a short slice; the best 1/eta are *continued from their own checkpoint* for a
slice eta times longer, and so on; the survivor of the last rung trains until the budget ends and is saved
as `models/<name>/`, so the compute spent on it is kept. Candidates train with a warmup-stable-decay
schedule held at the stable rate, so a checkpoint can be continued; each exploration slice ends with a short
cooldown *branch* (a copy, discarded) that gives the score, so rungs compare candidates as they would be
after their decay. The configuration `train` uses by default is always a candidate, and so are its
`neighbours` that the search space allows; a seeded draw of the space fills the rest.

Every rung of every candidate is a trial of one Optuna study (user attributes `candidate`, `rung`,
`parent`), so storages, heartbeats, optuna-dashboard and `train --from-study` keep working. Work is handed
out through the study itself: rung-0 candidates and promotions are enqueued trials that any worker pops,
and a trial of a killed worker is failed by its heartbeat and queued again by Optuna, to be continued from
the candidate's last checkpoint (the end of its previous rung).
"""

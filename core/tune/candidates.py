"""A tournament's candidates: the default configuration, its neighbours the space allows, then a seeded draw
of the space; each candidate's configs for a slice."""

from __future__ import annotations

import dataclasses
from typing import Any

import optuna
from optuna.trial import TrialState

from core.base import FINE_TUNE
from core.config import (
    ModelConfig,
    TrainConfig,
    recipe_configs,
    replace_known,
    to_dict,
)
from core.tune.config import TournamentConfig
from core.tune.plan import PLAN_ATTR, Plan
from core.tune.space import Choice, SearchSpace, apply_params
from core.variants import AS_PREPARED


def default_params(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The configuration `train` uses by default, as tuned parameters, with the fields the user fixed; from a
    saved model (`init_from`, whose shape the overrides hold), the fine-tuning rates."""
    model_config, train_config = recipe_configs()
    values = {k: v for k, v in (to_dict(model_config) | to_dict(train_config)).items() if k in _TUNABLE}
    if (overrides or {}).get("init_from"):
        values |= {k: v for k, v in FINE_TUNE.items() if k in _TUNABLE}
    return values | (overrides or {})


_TUNABLE = {
    "n_layer",
    "n_head",
    "n_embd",
    "block_size",
    "dropout",
    "batch_size",
    "lr",
    "weight_decay",
    "optimizer",
    "muon_lr",
    "pos_encoding",
    "norm",
    "mlp",
    "qk_norm",
}


def candidate_configs(
    params: dict[str, Any], config: TournamentConfig, candidate: int, vocab_size: int
) -> tuple[ModelConfig, TrainConfig]:
    """A candidate's configs for one slice: the stable phase of wsd (no decay), warmup by steps, one cheap
    evaluation at the end (the score comes from `split_loss`).

    Warmup lasts as many tokens as the default's (unless the user set --warmup-iters): 100 steps at context
    256 are four times the default's tokens, and a first slice of 20 s that such a candidate spent all in
    warmup judged it on a rate it had not reached yet."""
    base = replace_known(
        TrainConfig(),
        {
            "data_dir": config.data_dir,
            "device": config.device,
            "seed": config.seed * 100_003 + candidate,
            "max_iters": 10**9,
            "schedule": "wsd",
            "cooldown_fraction": 0.0,
            "warmup_fraction": 0.0,
            "eval_interval": 10**9,
            "eval_iters": 2,
            "eval_train": False,
            "sample_chars": 0,
            "report_to": config.report_to,
            "report_run": f"{config.study}/candidate-{candidate:03d}",
        },
    )
    model_config, train_config = apply_params(params, ModelConfig(vocab_size=vocab_size), base)
    warmup = train_config.warmup_iters
    if "warmup_iters" not in (config.overrides or {}):
        default = default_params(config.overrides)
        tokens = train_config.batch_size * train_config.grad_accum * model_config.block_size
        default_tokens = default["batch_size"] * default.get("grad_accum", 1) * default["block_size"]
        warmup = max(1, round(warmup * default_tokens / tokens))
    # warmup by steps only, whatever the params say: a continued candidate must not warm up again
    return model_config.validate(), replace_known(
        train_config, {"warmup_fraction": 0.0, "warmup_iters": warmup}
    ).validate()


def neighbours(default: dict[str, Any]) -> list[dict[str, Any]]:
    """Changes of the default that gain as training grows longer, the best first: a longer context with one
    layer fewer to pay for it, lower Muon rates, a longer context alone, a wider model; they won the longer
    tournaments (RESULTS.md, Tuning within one budget)."""
    context, layers, head_size = default["block_size"], default["n_layer"], default["n_embd"] // default["n_head"]
    shallower_and_longer = {"block_size": 2 * context, "n_layer": layers - 1}
    return [
        shallower_and_longer | {"muon_lr": default["muon_lr"] / 2},
        shallower_and_longer | {"muon_lr": default["muon_lr"] / 4},
        shallower_and_longer,
        {"block_size": 2 * context},
        {"block_size": 4 * context, "n_layer": layers - 1},
        {"block_size": 2 * context, "n_embd": default["n_head"] * (head_size * 3 // 2)},
    ]


def first_candidates(
    space: SearchSpace, count: int, seed: int, overrides: dict[str, Any] | None = None, changes: dict | None = None
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(params, the space's values of them) of a first rung: the default configuration (with the plan's
    `changes`: its tokenizer, a larger shape), its `neighbours` that the space allows, then a seeded random
    sample of the space (the random start-up phase of a seeded TPE sampler). A candidate the space cannot
    express records no values (the default, often)."""
    default = default_params(overrides) | (changes or {})
    out: list[tuple[dict[str, Any], dict[str, Any]]] = [(default, {})]
    other = []  # the tokenizer the plan searches beside the default's, as the second candidate
    if isinstance(space.tokenizer, Choice) and isinstance(space.vocab_size, int):
        alternative = next((t for t in space.tokenizer.options if t != default.get("tokenizer", AS_PREPARED)), None)
        other = [{"tokenizer": alternative, "vocab_size": space.vocab_size}] if alternative else []
    for change in other + neighbours(default):
        params = default | change | (overrides or {})
        values, searched = space.in_space_terms(params), space.searched_values(params)
        changed = ["head_size" if k == "n_embd" else k for k in change]
        in_space = searched is not None and all(space.allows(k, values[k]) for k in changed)
        if in_space and all(params != p for p, _ in out):
            out.append((params, searched))
    draw = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
    while len(out) < count:
        trial = draw.ask()
        out.append((space.suggest(trial) | (overrides or {}), dict(trial.params)))
        draw.tell(trial, state=TrialState.PRUNED)
    return out[:count]


def _tokenizer_space(pick: dict[str, Any], space: SearchSpace) -> tuple[dict[str, Any], SearchSpace]:
    """The default candidate's tokenizer params, and the space with the plan's tokenizers: the picked one and the
    other searched together, or the one asked for alone (a space file's own choices are kept)."""
    default = {k: v for k, v in pick.items() if k in ("tokenizer", "vocab_size")}
    if default.get("tokenizer", AS_PREPARED) == AS_PREPARED:
        default = {}
    if space.tokenizer != AS_PREPARED:
        return default, space
    if pick.get("tried"):  # the prepared characters by default, a BPE tried beside them
        return default, dataclasses.replace(space, tokenizer=Choice((AS_PREPARED, "bpe")), vocab_size=pick["tried"])
    if default:
        choice = Choice((default["tokenizer"], AS_PREPARED)) if pick.get("searched") else default["tokenizer"]
        space = dataclasses.replace(space, tokenizer=choice, vocab_size=default["vocab_size"] or space.vocab_size)
    return default, space


def init_tournament(
    study: optuna.Study, plan: Plan, space: SearchSpace, seed: int, overrides: dict[str, Any] | None = None
) -> Plan:
    """Record the plan and enqueue the first rung's candidates (`first_candidates`), once per study (later
    calls return the recorded plan). A plan that picked a BPE searches it against the prepared tokenizer."""
    recorded = study.user_attrs.get(PLAN_ATTR)
    if recorded:
        return Plan.from_json(recorded)
    tokenizer, space = _tokenizer_space(plan.tokenizer, space)
    study.set_user_attr(PLAN_ATTR, plan.to_json())
    study.set_user_attr("search_space", space.to_json())
    changes = tokenizer | plan.grown.get("params", {})  # a long budget's default is larger (core.tune.budget)
    firsts = first_candidates(space, plan.rungs[0].candidates, seed, overrides, changes)
    for candidate, (params, fixed) in enumerate(firsts):
        study.enqueue_trial(
            fixed, user_attrs={"candidate": candidate, "rung": 0, "parent": None, "params": params, "fixed": fixed}
        )
    return plan

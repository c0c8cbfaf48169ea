"""Soak: a study of many tiny trials in the workbench, with optuna-dashboard open and chat traffic.

Starts the workbench (with its dashboard) in a throwaway project, starts a study of `--trials` tiny trials
from the Tune tab's API, and while it runs keeps one chat session talking and polls the dashboard's API.
Records the server's resident memory as trials finish. Targets: memory after the run within 10% of memory
after the first 20 trials (no leak across trials), no trial left RUNNING, no chat or dashboard errors.

    python benchmarks/soak.py [--trials 200]

Prints a table and writes benchmarks/results/soak.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import optuna  # noqa: E402
from common import print_table, write_results  # noqa: E402
from workbench_server import running_workbench, throwaway_project, train_small_model  # noqa: E402

TINY_SPACE = {
    "lr": {"low": 1e-4, "high": 1e-2, "log": True},
    "n_layer": [1, 2],
    "n_head": {"choices": [2]},
    "head_size": {"choices": [8, 16]},
    "dropout": 0,
    "batch_size": {"choices": [4, 8]},
    "block_size": {"choices": [16, 32]},
    "weight_decay": [0, 0.1],
    "warmup_fraction": 0.05,
}
FIRST = 20  # memory after this many finished trials is the baseline


def finished_trials(storage_url: str) -> tuple[int, int]:
    """(finished, running) trials of the 'soak' study, read straight from its storage."""
    try:
        study = optuna.load_study(study_name="soak", storage=storage_url)
    except KeyError:
        return 0, 0
    states = [t.state for t in study.get_trials(deepcopy=False)]
    running = states.count(optuna.trial.TrialState.RUNNING)
    return len(states) - running - states.count(optuna.trial.TrialState.WAITING), running


def keep_chatting(url: str, stop: threading.Event, counts: dict[str, int]) -> None:
    from gradio_client import Client

    client = Client(url, verbose=False)
    history: list = []
    while not stop.is_set():
        try:
            history = client.predict("To be, or not", history[-6:], "chat", 0.8, 0, 1.0, 1.0, 40, -1, api_name="/chat")[
                0
            ]
            counts["chats"] += 1
        except Exception:  # noqa: BLE001 - counted
            counts["chat_errors"] += 1
        stop.wait(1.0)


def keep_polling_dashboard(url: str | None, stop: threading.Event, counts: dict[str, int]) -> None:
    if not url:
        return
    api = url.replace("/dashboard/", "/api/studies")
    while not stop.is_set():
        try:
            with urllib.request.urlopen(api, timeout=10) as response:
                json.loads(response.read())
            counts["dashboard_polls"] += 1
        except Exception:  # noqa: BLE001 - counted
            counts["dashboard_errors"] += 1
        stop.wait(2.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--trial-iters", type=int, default=20)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    from gradio_client import Client

    samples: list[dict] = []
    counts = {"chats": 0, "chat_errors": 0, "dashboard_polls": 0, "dashboard_errors": 0}
    with throwaway_project() as root:
        train_small_model(root, "chat", iters=50)
        storage_url = f"sqlite:///{root / 'studies' / 'gpt_tuning.db'}"
        with running_workbench(root, dashboard=True) as server:
            client = Client(server.url, verbose=False)
            message, _ = client.predict(
                "soak",
                args.trials,
                args.trial_iters,
                0,
                "median",
                10,
                2,
                0,
                0,
                json.dumps(TINY_SPACE),
                api_name="/tune_start",
            )
            if "Started" not in message:
                raise RuntimeError(f"the study did not start: {message}")
            stop = threading.Event()
            helpers = [
                threading.Thread(target=keep_chatting, args=(server.url, stop, counts), daemon=True),
                threading.Thread(target=keep_polling_dashboard, args=(server.dashboard_url, stop, counts), daemon=True),
            ]
            for thread in helpers:
                thread.start()
            started = time.perf_counter()
            next_mark = FIRST
            while True:
                done, running = finished_trials(storage_url)
                if done >= next_mark or done >= args.trials:
                    samples.append({"trials_done": done, "rss_mb": server.rss_mb(), "s": time.perf_counter() - started})
                    print(f"{done:4d} trials  {samples[-1]['rss_mb']:7.1f} MB  {samples[-1]['s']:6.0f} s", flush=True)
                    next_mark = done + FIRST
                if done >= args.trials:
                    break
                time.sleep(1.0)
            stop.set()
            for thread in helpers:
                thread.join(30)
            _, running = finished_trials(storage_url)
    growth = samples[-1]["rss_mb"] / samples[0]["rss_mb"] - 1
    print()
    print_table(samples, ["trials_done", "rss_mb", "s"])
    print(
        f"\nmemory after {samples[-1]['trials_done']} trials vs after {samples[0]['trials_done']}: "
        f"{growth:+.1%} (target within 10%); trials left RUNNING: {running}; chats {counts['chats']} "
        f"({counts['chat_errors']} errors); dashboard polls {counts['dashboard_polls']} "
        f"({counts['dashboard_errors']} errors)"
    )
    write_results("soak", {"trials": args.trials, "samples": samples, "growth": growth, "running": running, **counts})


if __name__ == "__main__":
    main()

"""Chat under load: N concurrent gradio_client sessions against a running workbench with a small model.

For N = 1, 4, 16 sessions (each its own client, sending `--rounds` messages one after another): the median
and p95 time to first token, the median streaming speed per session (characters/s after the first), and
the errors. Then the same while a training job runs in the workbench. Targets: zero errors at 16 sessions,
p95 time to first token < 2 s on CPU.

    python benchmarks/chat_load.py [--quick]

Prints a table and writes benchmarks/results/chat_load.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import print_table, write_results  # noqa: E402
from workbench_server import running_workbench, throwaway_project, train_small_model  # noqa: E402

MODEL = "small"
MESSAGES = ["To be, or not to be", "What say you, my lord?", "Now is the winter", "Speak, I am bound to hear."]
# n_layer, n_head, n_embd, block_size, dropout, batch_size, lr, weight_decay, warmup_iters, max_iters,
# max_minutes, eval_interval, eval_iters, sample_chars: the small config, trained until stopped
BACKGROUND_TRAINING = [4, 4, 128, 64, 0.0, 12, 1e-3, 0.1, 100, 1_000_000, 0, 200, 20, 100]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def reply_text(output: Any) -> str:
    history = output[0] if output else []
    if not history or history[-1].get("role") != "assistant":
        return ""
    content = history[-1].get("content")
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


def session(url: str, rounds: int, max_new: int, seed: int, results: list[dict], ready: threading.Barrier) -> None:
    from gradio_client import Client

    client = Client(url, verbose=False)
    ready.wait()
    history: list = []
    for index in range(rounds):
        message = MESSAGES[(seed + index) % len(MESSAGES)]
        started = time.perf_counter()
        first = None
        text = ""
        try:
            job = client.submit(message, history, MODEL, 0.8, 0, 1.0, 1.0, max_new, seed, api_name="/chat")
            for output in job:
                text = reply_text(output)
                if first is None and text:
                    first = time.perf_counter() - started
            final = job.result(timeout=120)
            history = final[0]
            text = reply_text(final) or text
            elapsed = time.perf_counter() - started
            streaming = max(elapsed - (first or elapsed), 1e-6)
            results.append(
                {
                    "ok": True,
                    "ttft_s": first if first is not None else elapsed,
                    "chars": len(text),
                    "chars_per_s": (len(text) - 1) / streaming if len(text) > 1 else 0.0,
                }
            )
        except Exception as err:  # noqa: BLE001 - counted and reported, the benchmark goes on
            results.append({"ok": False, "error": f"{type(err).__name__}: {err}"[:200]})


def load(url: str, sessions: int, rounds: int, max_new: int, client=None) -> dict[str, Any]:
    """`sessions` clients at once (`client`, default a Chat tab session), each sending `rounds` requests."""
    results: list[dict] = []
    ready = threading.Barrier(sessions)
    threads = [
        threading.Thread(target=client or session, args=(url, rounds, max_new, seed, results, ready))
        for seed in range(sessions)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return summarize(results, sessions, time.perf_counter() - started)


def summarize(results: list[dict], sessions: int, wall: float) -> dict[str, Any]:
    """One table row of a load run: replies, errors, time to first token, streaming speed."""
    ok = [r for r in results if r["ok"]]
    ttft = [r["ttft_s"] for r in ok]
    speeds = [r["chars_per_s"] for r in ok if r["chars_per_s"]]
    return {
        "sessions": sessions,
        "replies": len(ok),
        "errors": len(results) - len(ok),
        "ttft_median_s": statistics.median(ttft) if ttft else float("nan"),
        "ttft_p95_s": percentile(ttft, 0.95) if ttft else float("nan"),
        "chars_per_s_median": statistics.median(speeds) if speeds else 0.0,
        "total_chars_per_s": sum(r["chars"] for r in ok) / wall,
        "wall_s": wall,
        "error_samples": [r["error"] for r in results if not r["ok"]][:3],
    }


def load_arguments(doc: str) -> tuple[argparse.Namespace, int, int]:
    """The flags of a load benchmark: (args, requests a client, characters a request)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter replies")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()
    return (args, 2, 60) if args.quick else (args, 4, 120)


def main() -> None:
    args, rounds, max_new = load_arguments(__doc__)

    from gradio_client import Client

    rows = []
    with throwaway_project() as root:
        train_small_model(root, MODEL)
        with running_workbench(root, dashboard=False) as server:
            load(server.url, 1, 1, 10)  # warm-up: loads the model into the server's cache
            for n in args.sessions:
                rows.append({"training": "no", **load(server.url, n, rounds, max_new)})
                print_table(rows[-1:], COLUMNS)
            control = Client(server.url, verbose=False)
            started = control.predict("background", True, *BACKGROUND_TRAINING, api_name="/train_start")
            if "Started" not in started:
                raise RuntimeError(f"could not start the background training: {started}")
            time.sleep(5)
            for n in args.sessions:
                rows.append({"training": "yes", **load(server.url, n, rounds, max_new)})
                print_table(rows[-1:], COLUMNS)
            control.predict(api_name="/train_stop")
    print()
    print_table(rows, COLUMNS)
    worst = max((r for r in rows if r["sessions"] == max(args.sessions)), key=lambda r: r["ttft_p95_s"])
    print(
        f"\nat {worst['sessions']} sessions: errors {sum(r['errors'] for r in rows)} in all (target 0), "
        f"worst p95 time to first token {worst['ttft_p95_s']:.2f} s (target < 2 s)"
    )
    write_results("chat_load", {"rounds": rounds, "max_new_chars": max_new, "rows": rows})


COLUMNS = [
    "training",
    "sessions",
    "replies",
    "errors",
    "ttft_median_s",
    "ttft_p95_s",
    "chars_per_s_median",
    "total_chars_per_s",
    "wall_s",
]

if __name__ == "__main__":
    main()

"""The completion API under load, side by side with the Chat tab's path, on the same model and machine.

For N = 1, 4, 16 concurrent clients (each sending `--rounds` requests one after another, streaming): the median
and p95 time to the first character, the median characters/s of a stream after its first character, the
total characters/s, and the errors. The API is `python app.py serve-api` driven by OpenAI's own client; the Chat
tab is the workbench driven by gradio_client (benchmarks/chat_load.py's sessions). One server at a time.

    python benchmarks/serve_api.py [--quick]

Prints a table and writes benchmarks/results/serve_api.json.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chat_load import MESSAGES, MODEL, load_arguments  # noqa: E402
from chat_load import load as chat_tab_load  # noqa: E402
from common import print_table, write_results  # noqa: E402
from workbench_server import running_workbench, throwaway_project, train_small_model  # noqa: E402

from tests.helpers import APP, free_port  # noqa: E402


def api_client(url: str, rounds: int, max_new: int, seed: int, results: list[dict], ready: threading.Barrier) -> None:
    import openai

    client = openai.OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=300)
    ready.wait()
    for index in range(rounds):
        prompt = MESSAGES[(seed + index) % len(MESSAGES)] + "\n"
        started, first, chars = time.perf_counter(), None, 0
        try:
            for chunk in client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_new, temperature=0.8,
                                                   seed=seed * 100 + index, stream=True):  # fmt: skip
                piece = chunk.choices[0].text
                if piece and first is None:
                    first = time.perf_counter() - started
                chars += len(piece)
            elapsed = time.perf_counter() - started
            streaming = max(elapsed - (first or elapsed), 1e-6)
            results.append({"ok": True, "ttft_s": first if first is not None else elapsed, "chars": chars,
                            "chars_per_s": (chars - 1) / streaming if chars > 1 else 0.0})  # fmt: skip
        except Exception as err:  # noqa: BLE001 - counted and reported, the benchmark goes on
            results.append({"ok": False, "error": f"{type(err).__name__}: {err}"[:200]})


def api_load(url: str, clients: int, rounds: int, max_new: int) -> dict[str, Any]:
    return chat_tab_load(url, clients, rounds, max_new, client=api_client)


def serve_api(root: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([*APP, "serve-api", "--model", MODEL, "--port", str(port)], cwd=root,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/models", timeout=2).close()
            return process, url
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("serve-api did not start") from None
            time.sleep(0.3)


def main() -> None:
    args, rounds, max_new = load_arguments(__doc__)

    rows = []
    with throwaway_project() as root:
        train_small_model(root, MODEL)
        process, url = serve_api(root)
        try:
            api_load(url, 1, 1, 10)  # warm-up
            for n in args.sessions:
                rows.append({"path": "serve-api", **api_load(url, n, rounds, max_new)})
                print_table(rows[-1:], COLUMNS)
        finally:
            process.terminate()
            process.wait(30)
        with running_workbench(root, dashboard=False) as server:
            chat_tab_load(server.url, 1, 1, 10)  # warm-up: loads the model into the server's cache
            for n in args.sessions:
                rows.append({"path": "Chat tab", **chat_tab_load(server.url, n, rounds, max_new)})
                print_table(rows[-1:], COLUMNS)
    print()
    print_table(rows, COLUMNS)
    write_results("serve_api", {"rounds": rounds, "max_new_chars": max_new, "model": "4x128, context 64",
                                "rows": rows})  # fmt: skip


COLUMNS = ["path", "sessions", "replies", "errors", "ttft_median_s", "ttft_p95_s", "chars_per_s_median",
           "total_chars_per_s", "wall_s"]  # fmt: skip

if __name__ == "__main__":
    main()

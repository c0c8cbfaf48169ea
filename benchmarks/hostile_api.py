"""The completion API while a hostile client sends the worst request of each kind: how long a second client's
5-token request takes (median and p95 over --probes), and the server's peak memory.

Each row is one attack: the attacker sends its request again and again (50 at once for the unstreamed flood)
while the probe client asks for 5 tokens, one request after another. `python app.py serve-api` on a briefly
trained 4x128 model of the default corpus. The issue's target: p95 under 0.5 s, peak RSS under 1 GB.

    python benchmarks/hostile_api.py [--probes 20]

Prints a table and writes benchmarks/results/hostile_api.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import print_table, write_results  # noqa: E402
from workbench_server import throwaway_project, train_small_model  # noqa: E402

from tests.helpers import APP, free_port  # noqa: E402

MODEL = "small"


def _post(body: bytes | Iterator[bytes], stream: bool = False) -> Callable[[str], None]:
    def send(url: str) -> None:
        with httpx.Client(timeout=600) as client:
            if stream:
                with client.stream("POST", url + "/completions", content=body) as answer:
                    for _ in answer.iter_bytes():
                        pass
            else:
                client.post(url + "/completions", content=body() if callable(body) else body)

    return send


def _chunked_400mb() -> Iterator[bytes]:
    yield b'{"prompt": "'
    for _ in range(400):
        yield b"T" * 1_000_000


def _json(**fields) -> bytes:
    return json.dumps({"prompt": "ROMEO:\n", **fields}).encode()


ATTACKS: dict[str, tuple[Callable[[str], None], int]] = {  # name -> (one attack, how many at once)
    "none (baseline)": (lambda url: time.sleep(0.05), 1),
    "1 MB stop string": (_post(_json(stop="x" * 1_000_000, max_tokens=4096)), 1),
    "4 stop strings of 1,000 chars, 4096 tokens, streamed": (
        _post(_json(stop=["\x01" * 999 + "q"] * 4, max_tokens=4096, stream=True), stream=True),
        1,
    ),
    "1 MB prompt, greedy, 4096 tokens": (_post(_json(prompt="the king " * 111_000, temperature=0, max_tokens=4096)), 1),
    "400 MB body, chunked": (_post(_chunked_400mb), 1),
    "JSON nested 200k deep": (_post(b"[" * 200_000 + b"]" * 200_000), 1),
    "NaN temperature": (_post(b'{"prompt": "To", "temperature": NaN}'), 1),
    "50 unstreamed requests of 500 tokens": (_post(_json(max_tokens=500)), 50),
}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_attack(url: str, name: str, probes: int) -> dict:
    attack, width = ATTACKS[name]
    stop = threading.Event()
    sent = [0]

    def attacker() -> None:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError):  # a refused body may close the connection mid-send
                attack(url)
            sent[0] += 1

    threads = [threading.Thread(target=attacker, daemon=True) for _ in range(width)]
    for thread in threads:
        thread.start()
    time.sleep(2.0)  # let the attack take hold
    times = []
    with httpx.Client(timeout=120) as client:
        for index in range(probes):
            started = time.perf_counter()
            answer = client.post(url + "/completions", json={"prompt": "ROMEO:\n", "max_tokens": 5, "seed": index})
            times.append(time.perf_counter() - started)
            assert answer.status_code == 200, answer.text[:200]
    stop.set()
    for thread in threads:
        thread.join(600)
    times.sort()
    return {
        "attack": name,
        "probes": probes,
        "attacks_sent": sent[0],
        "median_s": round(statistics.median(times), 3),
        "p95_s": round(times[min(len(times) - 1, int(0.95 * len(times)))], 3),
        "max_s": round(times[-1], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", type=int, default=20)
    args = parser.parse_args()
    rows = []
    with throwaway_project() as root:
        train_small_model(root, MODEL)
        port = free_port()
        process = subprocess.Popen([*APP, "serve-api", "--model", MODEL, "--port", str(port)], cwd=root,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        url = f"http://127.0.0.1:{port}/v1"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(f"{url}/models", timeout=2).close()
                    break
                except OSError:
                    assert process.poll() is None and time.monotonic() < deadline, "serve-api did not start"
                    time.sleep(0.3)
            for name in ATTACKS:
                rows.append({**run_attack(url, name, args.probes), "peak_rss_mb": round(peak_rss_mb(process.pid))})
                print_table(rows[-1:], COLUMNS)
        finally:
            process.terminate()
            process.wait(30)
    print()
    print_table(rows, COLUMNS)
    write_results("hostile_api", {"model": "4x128, context 64", "probe": "5 tokens", "rows": rows})


COLUMNS = ["attack", "probes", "attacks_sent", "median_s", "p95_s", "max_s", "peak_rss_mb"]

if __name__ == "__main__":
    main()

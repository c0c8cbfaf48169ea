"""What the speed is for: the default recipe trained for the same minutes by this code and by an earlier commit.

    python benchmarks/code_at_equal_time.py --base 6e891b4 --minutes 10 --seeds 0,1,2

Each run is `python app.py train --name ... --max-iters 0 --max-minutes M --seed S` on the default corpus (all defaults,
`--compile auto` where the code has it), one at a time, the earlier code from a git worktree of `--base`; every
saved model is then scored by this code's `core.evaluate` on the whole validation split (nats per character).
Prints a table and writes benchmarks/results/code_at_equal_time.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import print_table, wait_for_quiet, write_results  # noqa: E402
from core import checkpoint as ckpt  # noqa: E402
from core.evaluate import evaluate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def train_with(code: Path, project: Path, name: str, minutes: float, seed: int) -> None:
    wait_for_quiet(60)
    command = [sys.executable, str(code / "app.py"), "train", "--name", name, "--max-iters", "0", "--max-minutes", str(minutes),
               "--seed", str(seed), "--sample-chars", "0"]  # fmt: skip
    done = subprocess.run(command, cwd=project, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(code)})  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"{name}: {done.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the earlier commit")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="chargpt-equal-time-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), args.base], cwd=ROOT, check=True,
                       capture_output=True)  # fmt: skip
        try:
            project = Path(tmp) / "project"
            project.mkdir()
            subprocess.run([sys.executable, str(ROOT / "app.py"), "prepare"], cwd=project, check=True,
                           capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
            for seed in seeds:
                for label, code in (("base", base), ("this code", ROOT)):
                    name = f"{'base' if code == base else 'head'}-{seed}"
                    train_with(code, project, name, args.minutes, seed)
                    loaded = ckpt.load_model(name, project / "models")
                    result = evaluate(loaded, data_dir=project / "dataset")
                    summary = loaded.info["summary"]
                    rows.append({"code": label, "seed": seed, "steps": summary["iters"],
                                 "val_nats_per_char": result.nats_per_char,
                                 "compile": loaded.info["train"].get("compile")})  # fmt: skip
                    print_table(rows[-1:], ["code", "seed", "steps", "val_nats_per_char", "compile"])
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, capture_output=True)
    medians = {
        c: statistics.median(r["val_nats_per_char"] for r in rows if r["code"] == c) for c in ("base", "this code")
    }
    print()
    print_table(rows, ["code", "seed", "steps", "val_nats_per_char", "compile"])
    gain = medians["base"] - medians["this code"]
    print(f"median over seeds {seeds}: base {medians['base']:.4f}, this code {medians['this code']:.4f}: "
          f"{gain:+.4f} nats/char better (target 0.02)")  # fmt: skip
    write_results("code_at_equal_time", {"base": args.base, "minutes": args.minutes, "seeds": seeds, "rows": rows,
                                         "medians": medians, "gain": gain})  # fmt: skip


if __name__ == "__main__":
    main()

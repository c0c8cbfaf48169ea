"""The tournament plan's measured pace against the pace the run then has, on this CPU and on an approximated
AVX2-only one (`ATEN_CPU_CAPABILITY=avx2`, `ONEDNN_MAX_CPU_ISA=AVX2`, `MKL_ENABLE_INSTRUCTIONS=AVX2`).

For each CPU kind: `python app.py tune --budget 90s` on the default corpus with the default model in a fresh
project (the pace measured from scratch), then the plan's pace (from the study) against the final model's
pace between its first and last evaluation (metrics.jsonl), and the minimums the page would show.

    python benchmarks/plan_pace.py

Prints a table and writes benchmarks/results/plan_pace.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import print_table, write_results  # noqa: E402
from workbench_server import throwaway_project  # noqa: E402

from tests.helpers import APP  # noqa: E402

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def run(kind: str, extra_env: dict[str, str]) -> dict:
    from core.tune.plan import budget_minimums
    from core.tune.storage import open_study

    env = {k: v for k, v in os.environ.items() if k not in AVX2} | extra_env
    with throwaway_project() as root:
        done = subprocess.run([*APP, "tune", "--budget", "90s", "--study", "pace", "--name", "pace"], cwd=root,
                              env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
        if done.returncode:
            raise RuntimeError(done.stderr[-2000:])
        plan = open_study("pace", f"sqlite:///{root / 'studies' / 'gpt_tuning.db'}").user_attrs["tournament"]
        summary = json.loads((root / "models" / "pace" / "config.json").read_text())["summary"]
        evals = [json.loads(line) for line in (root / "models" / "pace" / "metrics.jsonl").read_text().splitlines()]
        capability = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                                    env=env, capture_output=True, text=True).stdout.strip()  # fmt: skip
    # between the first and the last evaluation: training steps and their evaluations, not start-up or saving
    first, last = evals[0], evals[-1]
    run_step_s = (last["elapsed_s"] - first["elapsed_s"]) / max(last["step"] - first["step"], 1)
    least = budget_minimums(plan["step_s"], slice_overhead_s=plan["slice_overhead_s"])
    return {
        "cpu": kind,
        "capability": capability,
        "planned_ms": round(plan["step_s"] * 1000, 1),
        "run_ms": round(run_step_s * 1000, 1),
        "ratio": round(run_step_s / plan["step_s"], 2),
        "min_run_s": least.run_s,
        "min_search_s": least.search_s,
        "min_short_search_s": least.short_search_s,
        "steps": summary["iters"],
    }


def main() -> None:
    rows = [run("native", {}), run("avx2 (approximated)", AVX2)]
    print_table(rows, list(rows[0]))
    write_results("plan_pace", {"budget_s": 90, "model": "the default (4x128, context 64)", "rows": rows})


if __name__ == "__main__":
    main()

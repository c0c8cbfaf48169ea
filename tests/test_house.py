"""The house rules that keep the code readable (issue 43): small functions and modules, and measurements in
benchmarks/RESULTS.md, not in the code's words."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

from tests.helpers import ROOT

PACKAGES = ("core", "cli", "api", "workbench")
MEASURED = re.compile(
    r"\b20\d\d-\d\d-\d\d\b|\b\d+(\.\d+)? ?(ms|MB|GB|tokens/s|characters/s)\b|\b\d+(\.\d+)?x (faster|slower)\b"
)


def sources() -> list[Path]:
    return [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]


def test_no_function_is_over_80_lines_and_no_module_over_600():
    long = []
    for path in sources():
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > 600:
            long.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1}")
    assert not long


def test_comments_and_docstrings_hold_no_dates_or_measured_figures():
    found = []
    for path in sources():
        tokens = tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline)
        for token in tokens:
            prose = token.type == tokenize.COMMENT or (token.type == tokenize.STRING and token.string.startswith('"""'))
            if prose and MEASURED.search(token.string):
                found.append(f"{path.relative_to(ROOT)}:{token.start[0]}: {MEASURED.search(token.string)[0]}")
    assert not found, "measurements belong in benchmarks/RESULTS.md: " + "; ".join(found)

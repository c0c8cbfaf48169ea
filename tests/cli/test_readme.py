"""The README's everyday commands, run as written (at tiny sizes), so the guide cannot drift from the code."""

from __future__ import annotations

import json
import re
import shlex

from cli.main import build_parser
from tests.helpers import ROOT, TEXT, TINY_MODEL_FLAGS, run_app

# What makes a README command tiny here; the command itself, its flags and their spelling stay as written.
TINY_SIZES = {"30m": "20s", "10": "0.05", "5": "0.05"}


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## Six everyday commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [shlex.split(line.split("#", 1)[0]) for line in block.strip().splitlines()]


def tiny(argv: list[str]) -> list[str]:
    out = [TINY_SIZES.get(arg, arg) if i and argv[i - 1] in ("--budget", "--max-minutes") else arg
           for i, arg in enumerate(argv)]  # fmt: skip
    if out[2] in ("train", "tune"):
        out += [*TINY_MODEL_FLAGS, "--eval-iters", "2"] if out[2] == "train" else TINY_MODEL_FLAGS
    if out[2] == "tune":
        out += ["--search-rungs", "1", "--final-share", "0.5"]
    return out[2:]


def test_the_readme_lists_six_everyday_commands_of_this_program():
    commands = readme_commands()
    assert len(commands) == 6 and all(c[:2] == ["python", "app.py"] for c in commands)


def test_every_everyday_command_of_the_readme_runs(tmp_path):
    (tmp_path / "my_books").mkdir()
    (tmp_path / "my_books" / "verse.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "notes.txt").write_text(TEXT[:2000], encoding="utf-8")
    (tmp_path / "corpora").mkdir()
    for argv in readme_commands():
        if argv[2].startswith("--"):  # the workbench: parsed as typed, not served
            args = build_parser().parse_args([re.sub(r"^~", str(tmp_path), a) for a in argv[2:]])
            assert args.command is None and args.allow_dir == [f"{tmp_path}/corpora"] and args.port == 7861
            continue
        result = run_app(*tiny(argv), cwd=tmp_path, stdin="To be\nquit\n", timeout=600)
        assert result.returncode == 0, f"{shlex.join(argv)}:\n{result.stderr[-2000:]}"
    assert (tmp_path / "models" / "best" / "model.safetensors").is_file()
    assert (tmp_path / "models" / "mine" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "models" / "letters" / "config.json").read_text())["base"]["name"] == "best"


def test_the_take_out_commands_of_the_readme_parse_and_name_an_existing_requirements_file():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## Take a model out", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [shlex.split(line.split("#", 1)[0]) for line in block.strip().splitlines()]
    assert lines[0][:3] == ["pip", "install", "-r"] and (ROOT / lines[0][3]).is_file()
    parsed = [build_parser().parse_args(argv[2:]) for argv in lines[1:]]
    assert [p.command for p in parsed] == ["export", "export", "push", "serve-api"]
    assert parsed[0].check and parsed[0].format == "onnx" and parsed[1].check and parsed[1].format == "hf"
    assert parsed[2].repo == "YOU/best" and parsed[3].port == 8000 and parsed[3].host == "127.0.0.1"


def code_map() -> set[str]:
    """The files the README's code map names, as paths: a line's indent says which folder it is in."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## Code map", 1)[1].split("```", 2)[1]
    folders: list[str] = []
    named = set()
    for line in block.splitlines():
        if not line.strip() or line.startswith(" " * 10):
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        names = re.split(r"\s{2,}", line.strip())[0]
        folders = folders[:depth]
        for name in names.split(", "):
            if name.endswith("/"):
                folders.append(name.rstrip("/"))
            else:
                named.add("/".join([*folders, name]))
    return named


def test_the_code_map_names_every_module_of_the_program():
    modules = {
        str(path.relative_to(ROOT))
        for package in ("core", "cli", "api", "workbench")
        for path in (ROOT / package).rglob("*.py")
        if path.name != "__init__.py"
    }
    assert modules - code_map() == set(), "modules the README's code map does not name"
    assert {m for m in code_map() if m.endswith(".py") and "/" in m} - modules == set(), "named but not there"

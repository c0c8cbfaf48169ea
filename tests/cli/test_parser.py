"""One parser for the workbench and every command: flags listed once, flags a mode would ignore refused."""

from __future__ import annotations

import pytest

from cli.main import build_parser, main


def test_workbench_flags_open_the_workbench_with_or_without_serve():
    for argv in (["--allow-dir", "/tmp", "--port", "8000"], ["serve", "--allow-dir", "/tmp", "--port", "8000"]):
        args = build_parser().parse_args(argv)
        assert args.command in (None, "serve") and args.allow_dir == ["/tmp"] and args.port == 8000


def test_a_command_s_namespace_holds_no_workbench_default():
    args = build_parser().parse_args(["tune", "--study", "s"])
    assert not hasattr(args, "storage") and not hasattr(args, "allow_dir")  # tune's --storage keeps its own default


@pytest.mark.parametrize(
    "argv, refused",
    [
        (["tune", "--budget", "1m", "--trials", "3"], "--trials does not apply to tune --budget"),
        (["tune", "--budget", "1m", "--then-train"], "--then-train does not apply"),
        (["tune", "--eta", "4"], "--eta does not apply without --budget"),
    ],
)
def test_tune_refuses_flags_its_mode_would_ignore(argv, refused, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert refused in capsys.readouterr().err

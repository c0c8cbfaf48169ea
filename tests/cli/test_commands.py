"""The command line as a user runs it: subprocesses of `python app.py`."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.helpers import APP, APP_ENV, TINY_MODEL_FLAGS, run_app

TINY = [
    *TINY_MODEL_FLAGS,
    "--eval-interval",
    "10",
    "--eval-iters",
    "2",
    "--sample-chars",
    "20",
    "--device",
    "cpu",
]


@pytest.fixture
def project(tmp_path, corpus_file):
    result = run_app("prepare", str(corpus_file), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "vocab" in result.stdout
    return tmp_path


def test_train_prints_a_parsable_final_line_and_resumes(project):
    result = run_app("train", "--name", "t", "--max-iters", "20", *TINY, cwd=project)
    assert result.returncode == 0, result.stderr
    match = re.search(
        r"^final val_loss=([\d.]+) train_loss=([\d.]+) iters=(\d+) tokens_per_s=(\d+)$", result.stdout, re.M
    )
    assert match and int(match.group(3)) == 20
    assert (project / "models" / "t" / "model.safetensors").exists()

    again = run_app("train", "--name", "t", "--max-iters", "20", *TINY, cwd=project)
    assert again.returncode == 2 and "--resume" in again.stderr

    resumed = run_app("train", "--name", "t", "--resume", "--max-iters", "30", cwd=project)
    assert resumed.returncode == 0, resumed.stderr
    assert "iters=30" in resumed.stdout


def test_chat_with_piped_input(project):
    assert run_app("train", "--name", "c", "--max-iters", "10", *TINY, cwd=project).returncode == 0
    result = run_app(
        "chat", "--max-new-tokens", "15", "--seed", "1", cwd=project, stdin="To be\n/reset\nwho? é\nquit\nnever read\n"
    )
    assert result.returncode == 0, result.stderr
    replies = result.stdout.splitlines()
    assert "(conversation cleared)" in replies
    assert len([r for r in replies if r and r != "(conversation cleared)"]) == 2  # 'quit' ended it
    assert "not in this model's vocabulary" in result.stderr and "'é'" in result.stderr


def test_chat_names_input_bytes_that_are_not_utf8(project):
    assert run_app("train", "--name", "c", "--max-iters", "5", *TINY, cwd=project).returncode == 0
    result = subprocess.run(
        [*APP, "chat", "--max-new-tokens", "5"], cwd=project, input=b"To be\xff\xfe\nquit\n", capture_output=True,
        env=APP_ENV, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert b"U+FFFD" in result.stderr  # said, not silently dropped


def test_chat_without_models_says_how_to_make_one(tmp_path):
    result = run_app("chat", cwd=tmp_path, stdin="hi\n")
    assert result.returncode == 2
    assert "train one first" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n-head", "3", "--n-embd", "16"], "multiple of n_head"),
        (["--block-size", "5000"], "fewer than the context"),
        (["--lr", "-1"], "lr must be > 0"),
        (["--name", "../evil"], "invalid model name"),
    ],
)
def test_bad_training_flags_get_one_line_errors(project, args, message):
    result = run_app("train", "--name", "x", "--max-iters", "5", *TINY, *args, cwd=project)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_prepare_of_a_binary_file_fails_cleanly(tmp_path):
    png = tmp_path / "image.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    result = run_app("prepare", str(png), cwd=tmp_path)
    assert result.returncode == 2
    assert "image.png" in result.stderr and "Traceback" not in result.stderr

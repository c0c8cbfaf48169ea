"""`--compile auto` (core.autocompile): compiled steps are kept only where they measured faster, and the verdict
is remembered per machine and shape, so the next run does not pay the compile again where it did not pay."""

from __future__ import annotations

import json

import pytest

from core import autocompile
from core.autocompile import AutoCompile, read_verdict

LONG, SHORT = 3600.0, 30.0  # seconds a run has left


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    frames = iter(range(1_000))  # each look at dynamo's counter finds one more frame compiled
    monkeypatch.setattr(autocompile, "_frames_compiled", lambda: next(frames))
    return tmp_path / "chargpt-workbench" / autocompile.VERDICTS_FILE


def drive(auto: AutoCompile, eager_s: float, compiled_s: float, left: float = LONG, steps: int = 60) -> list:
    """Each step's action; after a "compile" the steps take `compiled_s`, the first of them (compiling) 5 s."""
    actions, pace, compiling = [], eager_s, False
    for _ in range(steps):
        action = auto.observe(5.0 if compiling else pace, left)
        actions.append(action)
        compiling = action == "compile"
        if action:
            pace = compiled_s if action == "compile" else eager_s
    return actions


def test_compiled_steps_no_faster_go_back_to_eager_and_the_next_run_does_not_compile(cache):
    actions = drive(AutoCompile("machine-a"), eager_s=0.070, compiled_s=0.069)
    assert actions.index("compile") == AutoCompile.SETTLE_STEPS + AutoCompile.TIMED_STEPS - 1
    assert [a for a in actions if a] == ["compile", "eager"]
    saved = json.loads(cache.read_text())["machine-a"]
    assert saved["verdict"] == "eager" and saved["eager_step_s"] == pytest.approx(0.070) and saved["compile_s"] > 4
    assert [a for a in drive(AutoCompile("machine-a"), 0.070, 0.069) if a] == []  # nothing paid again
    assert [a for a in drive(AutoCompile("machine-b"), 0.070, 0.069) if a] == ["compile", "eager"]  # another shape


def test_compiled_steps_faster_are_kept_and_the_next_run_compiles_without_timing(cache):
    assert [a for a in drive(AutoCompile("k"), eager_s=0.070, compiled_s=0.040) if a] == ["compile"]
    assert read_verdict("k") == {"eager_step_s": 0.070, "compiled_step_s": 0.040, "compile_s": pytest.approx(4.96)}
    assert [a for a in drive(AutoCompile("k"), eager_s=0.075, compiled_s=0.041) if a] == ["compile"]  # no timing
    assert read_verdict("k")["compiled_step_s"] == 0.040  # what the first run measured stands


def test_a_verdict_its_run_disproves_goes_back_to_eager_and_is_measured_again(cache):
    """The verdict was measured under a sibling worker's load, or the machine changed: compiled steps no faster
    than its eager ones are not kept for good."""
    autocompile.write_verdict("k", eager_s=0.070, compiled_s=0.040, compile_s=5.0)
    assert [a for a in drive(AutoCompile("k"), eager_s=0.070, compiled_s=0.080) if a] == ["compile", "eager"]
    assert read_verdict("k") is None
    assert [a for a in drive(AutoCompile("k"), 0.070, 0.080) if a] == ["compile", "eager"]  # timed both again
    assert read_verdict("k")["compiled_step_s"] == pytest.approx(0.080)


@pytest.mark.parametrize("damage", [{"eager_step_s": 0}, {"compiled_step_s": -1.0}, {"compile_s": float("nan")},
                                    {"eager_step_s": "fast"}])  # fmt: skip
def test_a_damaged_verdict_is_measured_again_not_divided_by(cache, damage):
    autocompile.write_verdict("k", eager_s=0.070, compiled_s=0.040, compile_s=5.0)
    known = json.loads(cache.read_text())
    known["k"] |= damage
    cache.write_text(json.dumps(known))
    assert read_verdict("k") is None
    assert [a for a in drive(AutoCompile("k"), 0.070, 0.069) if a] == ["compile", "eager"]


def test_no_home_folder_keeps_no_verdict_and_still_trains(cache, monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setattr(
        autocompile.Path, "home", classmethod(lambda cls: (_ for _ in ()).throw(RuntimeError("no home")))
    )
    assert [a for a in drive(AutoCompile("k"), 0.070, 0.040) if a] == ["compile"]
    assert read_verdict("k") is None


def test_the_next_run_compiles_only_when_its_time_left_repays_the_compile(cache):
    """The AVX2 case: compiled steps 5% faster, compiling 50 s: a 3-minute run saves 9 s, an hour 180 s."""
    autocompile.write_verdict("avx2", eager_s=0.039, compiled_s=0.037, compile_s=50.0)
    assert [a for a in drive(AutoCompile("avx2"), 0.039, 0.037, left=180.0) if a] == []
    assert [a for a in drive(AutoCompile("avx2"), 0.039, 0.037, left=3600.0) if a] == ["compile"]
    assert json.loads(cache.read_text())["avx2"]["verdict"] == "compiled"


def test_a_short_run_never_compiles_or_judges(cache):
    assert [a for a in drive(AutoCompile("k"), 0.070, 0.040, left=SHORT) if a] == []
    assert not cache.exists()


def test_an_unreadable_verdict_file_is_measured_again(cache):
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    assert read_verdict("k") is None
    assert [a for a in drive(AutoCompile("k"), 0.070, 0.069) if a] == ["compile", "eager"]
    assert read_verdict("k")["compiled_step_s"] == pytest.approx(0.069)


def test_a_compile_that_failed_and_ran_eagerly_leaves_no_verdict(cache, monkeypatch):
    monkeypatch.setattr(autocompile, "_frames_compiled", lambda: 0)  # dynamo compiled nothing: it fell back
    assert [a for a in drive(AutoCompile("k"), 0.070, 0.069) if a] == ["compile", "eager"]
    assert read_verdict("k") is None and not cache.exists()

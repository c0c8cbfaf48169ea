"""Stop strings: the linear matcher cuts exactly where the first stop string starts, piece by piece."""

from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st

from core.stops import StopMatcher


def reference(pieces: list[str], stops: tuple[str, ...]) -> tuple[str, bool]:
    """The text shown and whether it stopped, by searching everything generated after each piece."""
    text = ""
    for piece in pieces:
        text += piece
        found = [text.index(s) for s in stops if s and s in text]
        if found:
            return text[: min(found)], True
    return text, False


def run(pieces: list[str], stops: tuple[str, ...]) -> tuple[str, bool]:
    matcher, shown = StopMatcher(stops), ""
    for piece in pieces:
        out, stopped = matcher.feed(piece)
        shown += out
        if stopped:
            return shown, True
    return shown + matcher.flush(), False


@given(st.lists(st.text("abc", max_size=4), max_size=30), st.lists(st.text("abc", max_size=5), max_size=4))
def test_the_matcher_agrees_with_a_plain_search(pieces, stops):
    assert run(pieces, tuple(stops)) == reference(pieces, tuple(stops))


def test_nothing_shown_could_be_the_start_of_a_stop_string():
    matcher = StopMatcher(("\nBOB:",))
    assert matcher.feed("hi\nBO") == ("hi", False)
    assert matcher.feed("W") == ("\nBOW", False)
    assert matcher.feed("\nBOB:x") == ("", True)


def test_a_long_stop_string_costs_linear_time():
    """The matcher before it sliced every prefix of each stop string at every token: ~15 s a token for 1 MB."""
    stop = "a" * 200_000 + "b"
    matcher = StopMatcher((stop,))
    started = time.monotonic()
    for _ in range(2_000):
        out, stopped = matcher.feed("a" * 50)
        assert not stopped
    assert time.monotonic() - started < 10  # quadratic: hours

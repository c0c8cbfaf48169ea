"""Stop strings found in generated text in time linear in what is generated and in the stop strings' length.

    matcher = StopMatcher(("\\nBOB:", "THE END"))
    for piece in pieces:
        out, stopped = matcher.feed(piece)   # `out` is safe to show: it cannot begin a stop string
        ...
    rest = matcher.flush()                   # what was held back, when generation ends without a stop

Each stop string keeps a Knuth-Morris-Pratt state (the length of its longest prefix that ends the text so far),
so a character costs O(1) amortised per stop string, and the text held back is never longer than the longest
stop string minus one.
"""

from __future__ import annotations


def _failure(pattern: str) -> list[int]:
    """KMP's failure table: for each prefix length, the longest proper prefix that is also its suffix."""
    table = [0] * (len(pattern) + 1)
    k = 0
    for i in range(1, len(pattern)):
        while k and pattern[i] != pattern[k]:
            k = table[k]
        if pattern[i] == pattern[k]:
            k += 1
        table[i + 1] = k
    return table


class StopMatcher:
    """Cuts a stream of text before the first of its stop strings, holding back only what could start one."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = tuple(s for s in stops if s)
        self._tables = [_failure(s) for s in self.stops]
        self._states = [0] * len(self.stops)
        self._held = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """(text now safe to show, whether a stop string was found). After a stop, nothing more is shown."""
        if not self.stops:
            return piece, False
        text = self._held + piece
        offset = len(self._held)
        first = None  # the earliest start of a stop string that ends within this piece
        for i, char in enumerate(piece, start=offset):
            for k, (stop, table) in enumerate(zip(self.stops, self._tables)):
                state = self._states[k]
                while state and stop[state] != char:
                    state = table[state]
                if stop[state] == char:
                    state += 1
                if state == len(stop):
                    start = i + 1 - len(stop)
                    first = start if first is None else min(first, start)
                    state = table[state]
                self._states[k] = state
        if first is not None:
            self._held = ""
            return text[: max(first, 0)], True
        hold = max(self._states)
        self._held = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held

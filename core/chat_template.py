"""How chat messages become a prompt for a model that only continues text, and where its reply ends.

A model trained on dialogue written as `NAME:` lines learned that form: messages are written as speakers'
lines and the reply is the next speaker's, ended where the one after would begin. Any other model continues
the user's text, each reply ended at a blank line as in the Chat tab. Which form a model reads is found in
its training text when it is saved (`detect_speakers`), and stated on its card and by the API.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SAMPLE_CHARS = 1 << 20  # of the training text, read to find its speakers
MIN_SPEAKER_LINES = 10
MIN_SHARE = 0.3  # of paragraphs (a name on its own line) or of lines (a name before the text) that open with one
NAME = r"[^\W\d_][^\n:]{0,30}?"  # a letter first, a short name: "ROMEO", "First Citizen", "DUKE VINCENTIO"
OWN_LINE = re.compile(rf"(?m)^({NAME}):\n(?=\S)")
INLINE = re.compile(rf"(?m)^({NAME}): (?=\S)")
MAX_NAME_CHARS = 64
BLANK_LINES = re.compile(r"\n[^\S\n]*(?:\n[^\S\n]*)+")  # a line end, then one or more empty or blank lines


@dataclass(frozen=True)
class ChatTemplate:
    layout: str  # "own-line" (NAME:\ntext), "inline" (NAME: text), or "continue" (the text itself)
    user: str = ""  # the speaker names messages take by default
    assistant: str = ""

    @property
    def stops(self) -> tuple[str, ...]:
        return ("\n",) if self.layout == "inline" else ("\n\n",)

    def prompt(self, messages: list[tuple[str, str, str | None]]) -> str:
        """The text a model continues for (role, content, name) messages, up to the reply's first character."""
        parts = []
        for role, content, name in messages:
            content = content.strip("\n")
            if self.layout == "continue":  # as the Chat tab's transcript: a reply ends at a blank line
                parts.append(content + ("\n\n" if role == "assistant" else "\n"))
                continue
            content = self._one_turn(content)
            if role == "system":
                parts.append(content + "\n\n")
            elif self.layout == "own-line":
                parts.append(f"{name or self.speaker(role)}:\n{content}\n\n")
            else:
                parts.append(f"{name or self.speaker(role)}: {content}\n")
        if self.layout == "own-line":
            parts.append(f"{self.assistant}:\n")
        elif self.layout == "inline":
            parts.append(f"{self.assistant}: ")
        return "".join(parts)

    def _one_turn(self, content: str) -> str:
        """A message's text kept within its own turn: a message cannot write another speaker's turn into the
        prompt (a line end starts one in the inline layout, a blank line in the own-line one)."""
        if self.layout == "inline":
            return content.replace("\n", " ")
        return BLANK_LINES.sub("\n", content)

    def speaker(self, role: str) -> str:
        return self.assistant if role == "assistant" else self.user

    def describe(self) -> str:
        if self.layout == "continue":
            return (
                "continue: the messages' text one after another, a newline after each; the reply ends at a blank line"
            )
        form = "NAME:\\ntext, a blank line after" if self.layout == "own-line" else "NAME: text, one line"
        return (f"speakers ({form}): user messages are {self.user}'s, replies {self.assistant}'s (a message's "
                "`name` picks another speaker); the reply ends where the next speaker would begin")  # fmt: skip


CONTINUE = ChatTemplate("continue")


def detect_speakers(text: str) -> dict[str, Any] | None:
    """{"layout", "names"} (the most frequent speakers first) when `text` is dialogue written as NAME: lines."""
    for layout, pattern, units in (("own-line", OWN_LINE, text.count("\n\n") + 1),
                                   ("inline", INLINE, text.count("\n") + 1)):  # fmt: skip
        names = Counter(pattern.findall(text))
        count = sum(names.values())
        if len(names) >= 2 and count >= MIN_SPEAKER_LINES and count >= MIN_SHARE * units:
            return {"layout": layout, "names": [name for name, _ in names.most_common(8)]}
    return None


def speakers_of(data_dir: str | Path) -> dict[str, Any] | None:
    """`detect_speakers` over the start of a dataset's training text (None when it cannot be read)."""
    try:
        with open(Path(data_dir) / "output_train.txt", encoding="utf-8", errors="replace") as handle:
            return detect_speakers(handle.read(SAMPLE_CHARS))
    except OSError:
        return None


def template_for(info: dict[str, Any]) -> ChatTemplate:
    """The template of a saved model from its config.json (`info`): its recorded speakers, else those of the
    dataset it names when it is still there (a model saved before speakers were recorded)."""
    data = info.get("data") if isinstance(info.get("data"), dict) else {}
    if "speakers" in data:
        speakers = data["speakers"]
    else:
        speakers = speakers_of(data["dir"]) if isinstance(data.get("dir"), str) and data["dir"] else None
    if not isinstance(speakers, dict):
        return CONTINUE
    names = [n for n in speakers.get("names") or [] if isinstance(n, str) and 0 < len(n) <= MAX_NAME_CHARS]
    if speakers.get("layout") not in ("own-line", "inline") or len(names) < 2:
        return CONTINUE
    return ChatTemplate(speakers["layout"], names[0], names[1])

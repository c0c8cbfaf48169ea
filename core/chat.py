"""Chat on top of a character model: the transcript is the prompt, each reply ends at a blank line once it is
`min_reply_chars` long.

A character-level GPT has no notion of turns; a chat is a running text to which the user's line is
appended and the model continues it. The CLI chat and the workbench's Chat tab both use `ChatSession`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from core.checkpoint import LoadedModel
from core.sampling import SamplingConfig, stream
from core.vocab import describe_chars

REPLY_END = "\n\n"
MAX_MESSAGE_CHARS = 100_000


def clean_message(message: str) -> str:
    """Drop control characters other than newline and tab, which no corpus is trained on."""
    return "".join(c for c in message if c in "\n\t" or c.isprintable())


@dataclass
class ChatSession:
    loaded: LoadedModel
    settings: SamplingConfig = field(default_factory=SamplingConfig)
    transcript: str = ""
    shared: bool = False  # other streams of this process use the model too (see `core.sampling.stream`)

    def reset(self) -> None:
        self.transcript = ""

    def unknown_notice(self, message: str) -> str | None:
        """A one-line notice naming the characters of `message` the model does not know, or None."""
        missing = self.loaded.vocab.unknown(clean_message(message))
        if not missing:
            return None
        return f"(characters not in this model's vocabulary were dropped: {describe_chars(missing, 5)})"

    def reply(self, message: str) -> Iterator[str]:
        """Stream the model's reply to `message`; the transcript keeps both for the next turn.

        Only the last `block_size` characters reach the model, so long prompts are cropped from the left.
        """
        message = clean_message(message)[-MAX_MESSAGE_CHARS:]
        known, _ = self.loaded.vocab.filter_known(message)
        self.transcript += known.rstrip("\n") + "\n"
        context = self.transcript[-self.loaded.model.config.block_size :]
        parts = []
        pieces = stream(self.loaded.model, self.loaded.vocab, context, self.settings, stop=(REPLY_END,),
                        skip_leading="\n", stop_after=self.settings.min_reply_chars, shared=self.shared)  # fmt: skip
        for piece in pieces:
            parts.append(piece)
            yield piece
        self.transcript += "".join(parts) + REPLY_END
        self.transcript = self.transcript[-4 * self.loaded.model.config.block_size :]

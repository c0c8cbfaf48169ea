"""A chat on a character model (core.chat): the transcript is the prompt, replies end at a blank line once long."""

from __future__ import annotations

import shutil
from pathlib import Path

from core import checkpoint as ckpt
from core.chat import REPLY_END, ChatSession, clean_message
from core.sampling import SamplingConfig

FIXTURE = Path(__file__).parents[1] / "fixtures" / "classic_tiny"


def loaded(tmp_path) -> ckpt.LoadedModel:
    shutil.copytree(FIXTURE, tmp_path / "models" / "tiny")
    return ckpt.load_model("tiny", tmp_path / "models")


def test_a_reply_is_at_least_min_reply_chars_long_unless_the_length_limit_ends_it(tmp_path):
    model = loaded(tmp_path)
    for least in (0, 60):
        session = ChatSession(model, SamplingConfig(seed=1, max_new_tokens=300, min_reply_chars=least))
        reply = "".join(session.reply("To be"))
        assert REPLY_END not in reply[least:]  # it ends at the first blank line past the minimum
        assert len(reply) >= least or len(reply) == 300
        kept = 4 * model.model.config.block_size  # the next turn continues the conversation's latest part
        assert session.transcript == ("To be\n" + reply + REPLY_END)[-kept:]


def test_characters_the_model_does_not_know_are_named_and_dropped(tmp_path):
    session = ChatSession(loaded(tmp_path), SamplingConfig(seed=0, max_new_tokens=5))
    assert "dropped" in session.unknown_notice("To be \u2603")
    assert session.unknown_notice("To be") is None
    "".join(session.reply("To be \u2603"))
    assert "\u2603" not in session.transcript and clean_message("a\x00b\tc") == "ab\tc"

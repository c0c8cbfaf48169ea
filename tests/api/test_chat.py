"""/v1/chat/completions as chat front ends call it (OpenAI's client, streaming and not): the messages become the
prompt the model's chat template says, and the reply ends where the next speaker would begin."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import openai
import pytest
import torch

from core import checkpoint as ckpt
from core.config import ModelConfig
from core.data import Dataset, prepare
from core.model import GPT
from core.sampling import SamplingConfig, stream
from tests.helpers import serving

SPEAKERS = {"layout": "own-line", "names": ["ROMEO", "JULIET"]}
PLAY = "".join(f"ROMEO:\nBut soft, what light {i}.\n\nJULIET:\nAy me, a night {i}.\n\n" for i in range(40))


def reply(loaded, prompt: str, sampling: SamplingConfig) -> str:
    """What the chat endpoint answers: the model's continuation, its leading line ends skipped, to a blank line."""
    return "".join(stream(loaded.model, loaded.vocab, prompt, sampling, ("\n\n",), skip_leading="\n"))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    (root / "play.txt").write_text(PLAY, encoding="utf-8")
    prepare([root / "play.txt"], root / "dataset")
    vocab = Dataset(root / "dataset").vocab
    torch.manual_seed(0)
    config = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=len(vocab))
    weights = ckpt.weights_for_saving(GPT(config))
    ckpt.save_model(root / "models" / "play", weights, config, vocab, {"data": {"speakers": SPEAKERS}})
    ckpt.save_model(root / "models" / "prose", weights, config, vocab, {"data": {"speakers": None}})
    return {name: ckpt.load_model(name, root / "models") for name in ("play", "prose")}


@pytest.fixture(scope="module")
def play(models) -> Iterator[openai.OpenAI]:
    with serving(models["play"]) as url:
        yield openai.OpenAI(base_url=url, api_key="none")


def test_a_dialogue_model_replies_as_the_next_speaker_and_stops_before_the_one_after(play, models):
    loaded = models["play"]
    card = play.models.retrieve("play")
    assert "speakers" in card.chat_template and "ROMEO's" in card.chat_template
    messages = [{"role": "user", "content": "But soft"}, {"role": "assistant", "content": "Ay me"},
                {"role": "user", "content": "what light"}]  # fmt: skip
    prompt = "ROMEO:\nBut soft\n\nJULIET:\nAy me\n\nROMEO:\nwhat light\n\nJULIET:\n"
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=200, seed=5)
    expected = reply(loaded, prompt, sampling)
    done = play.chat.completions.create(model="play", messages=messages, max_tokens=200, temperature=1.0, seed=5)
    choice = done.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == expected
    assert choice.finish_reason == ("stop" if len(loaded.vocab.encode(expected)) < 200 else "length")
    assert done.usage.prompt_tokens == len(prompt) and done.object == "chat.completion"

    chunks = list(play.chat.completions.create(model="play", messages=messages, max_tokens=200, temperature=1.0,
                                               seed=5, stream=True, stream_options={"include_usage": True}))  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].usage.completion_tokens == done.usage.completion_tokens and not chunks[-1].choices
    assert all(c.usage is None for c in chunks[:-1])  # null until the last, as OpenAI streams it

    named = play.chat.completions.create(model="play", messages=[{"role": "user", "content": "Ay", "name": "JULIET"}],
                                         max_tokens=5, temperature=1.0, seed=5)  # fmt: skip
    assert named.choices[0].message.content == reply(
        loaded, "JULIET:\nAy\n\nJULIET:\n", SamplingConfig(temperature=1.0, max_new_tokens=5, seed=5)
    )


def test_a_model_without_speakers_continues_the_users_text(models):
    loaded = models["prose"]
    with serving(loaded) as url:
        client = openai.OpenAI(base_url=url, api_key="none")
        assert client.models.retrieve("prose").chat_template.startswith("continue")
        done = client.chat.completions.create(model="prose", max_completion_tokens=60, temperature=0.8, seed=1,
                                              messages=[{"role": "system", "content": "But soft"},
                                                        {"role": "user", "content": "what light"}])  # fmt: skip
    expected = reply(loaded, "But soft\nwhat light\n", SamplingConfig(temperature=0.8, max_new_tokens=60, seed=1))
    assert done.choices[0].message.content == expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": []}, r"messages must hold 1 to 1,000 messages, got 0"),
        ({"messages": "hi"}, "messages must be a list of messages"),
        ({"messages": [{"role": "king", "content": "hi"}]}, r"messages\[0\].role must be one of system"),
        ({"messages": [{"role": "user", "content": "hi"}, "hi"]}, r"messages\[1\] must be an object"),
        ({"messages": [{"role": "user", "content": None}]}, "content must be a string or a list of text parts"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "text parts .*text only",
        ),
        ({"messages": [{"role": "user", "content": "hi", "tool_calls": [{}]}]}, "'tool_calls': .*no tools"),
        ({"messages": [{"role": "user", "content": "hi", "name": "A:B"}]}, "name must be a speaker's name"),
        ({"messages": [{"role": "user", "content": "hi", "name": "X" * 65}]}, "name must be a speaker's name"),
        ({"messages": [{"role": "user", "content": "Zebra €"}]}, "messages has characters .*'€'"),
        ({"messages": [{"role": "user", "content": "a" * 600_000}] * 2}, "longer than 1,000,000 bytes together"),
        ({"messages": [{"role": "user", "content": "a"}]} | {"stream_options": {"x": 1}}, "include_usage"),
        (
            {"messages": [{"role": "user", "content": "a"}]} | {"stream_options": {"include_usage": True}},
            "stream_options is for streamed requests",
        ),
        ({"messages": [{"role": "user", "content": "a"}], "prompt": "a"}, "unknown field 'prompt'"),
        ({"messages": [{"role": "user", "content": "a"}], "max_completion_tokens": -1}, "max_completion_tokens must"),
        ({"messages": [{"role": "user", "content": "a"}]} | {"stop": ["\n"] * 5}, "up to 4 strings"),
    ],
)
def test_bad_chat_requests_get_400_with_a_message(play, body, message):
    answer = httpx.post(f"{play.base_url}chat/completions", content=json.dumps(body).encode(), timeout=30)
    assert answer.status_code == 400, answer.text
    assert re.search(message, answer.json()["error"]["message"]), answer.json()

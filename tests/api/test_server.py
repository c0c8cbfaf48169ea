"""The completion API (api.server, `python app.py serve-api`) as its users call it: OpenAI's own client, plain
HTTP for what a client would never send, and several requests at once."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator

import httpx
import openai
import pytest
import torch

from api.server import Limits
from core import checkpoint as ckpt
from core.config import ModelConfig
from core.data import Dataset, prepare
from core.model import GPT
from core.sampling import SamplingConfig, complete
from tests.helpers import run_app, serving

KEY = "test-key"


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> ckpt.LoadedModel:
    from tests.conftest import VERSE

    root = tmp_path_factory.mktemp("api")
    (root / "verse.txt").write_text(VERSE * 20, encoding="utf-8")
    prepare([root / "verse.txt"], root / "dataset")
    vocab = Dataset(root / "dataset").vocab
    torch.manual_seed(0)
    config = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=len(vocab))
    ckpt.save_model(root / "models" / "verse", ckpt.weights_for_saving(GPT(config)), config, vocab, {})
    return ckpt.load_model("verse", root / "models")


@pytest.fixture(scope="module")
def api(loaded) -> Iterator[str]:
    with serving(loaded, api_key=KEY, limits=Limits(max_tokens=2000)) as url:
        yield url


def test_the_openai_client_completes_and_streams_what_the_model_samples(api, loaded):
    client = openai.OpenAI(base_url=api, api_key=KEY)
    assert [m.id for m in client.models.list()] == ["verse"]
    done = client.completions.create(model="verse", prompt="To be", max_tokens=40, temperature=0.8, seed=3)
    expected = complete(loaded.model, loaded.vocab, "To be", SamplingConfig(temperature=0.8, max_new_tokens=40, seed=3))
    assert done.choices[0].text == expected and done.choices[0].finish_reason == "length"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (5, len(expected))
    chunks = list(client.completions.create(model="verse", prompt="To be", max_tokens=40, temperature=0.8,
                                            seed=3, stream=True))  # fmt: skip
    assert "".join(c.choices[0].text for c in chunks) == expected and len(chunks) > 2
    assert chunks[-1].choices[0].finish_reason == "length"

    stop = expected[10]  # the completion ends before the first occurrence of a stop string
    stopped = client.completions.create(model="verse", prompt="To be", max_tokens=40, temperature=0.8, seed=3,
                                        stop=[stop, "\x00never"])  # fmt: skip
    assert stopped.choices[0].text == expected[: expected.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"


def test_a_wrong_or_missing_key_is_refused(api):
    for key in ("wrong", ""):
        with pytest.raises(openai.AuthenticationError, match="invalid or missing API key"):
            openai.OpenAI(base_url=api, api_key=key or "x", default_headers={} if key else {"Authorization": ""}
                          ).completions.create(model="verse", prompt="To", max_tokens=2)  # fmt: skip
    assert httpx.get(f"{api}/models").status_code == 401


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (json.dumps({"prompt": "To", "logprobs": 3}).encode(), "unknown field 'logprobs'"),
        (json.dumps({"prompt": "To", "max_tokens": -1}).encode(), r"max_tokens must be in \[0, 2000\]"),
        (json.dumps({"prompt": "To", "max_tokens": 10**9}).encode(), r"max_tokens must be in \[0, 2000\]"),
        (json.dumps({"prompt": "To", "max_tokens": "9"}).encode(), "max_tokens must be an integer"),
        (json.dumps({"prompt": "To", "temperature": -0.5}).encode(), "temperature must be in"),
        (json.dumps({"prompt": "To", "n": 2}).encode(), "n must be 1"),
        (json.dumps({"prompt": "Zebra €"}).encode(), "characters this model does not know: .*'€'"),
        (json.dumps({"prompt": "T" * 1_000_001}).encode(), "longer than 1,000,000 bytes"),
        (json.dumps({"prompt": "To", "stop": ["a", "b", "c", "d", "e"]}).encode(), "up to 4 strings"),
    ],
)
def test_bad_requests_get_400_with_a_message(api, body, message):
    answer = httpx.post(f"{api}/completions", content=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert re.search(message, error["message"]), error["message"]


def test_another_model_name_is_not_found(api):
    with pytest.raises(openai.NotFoundError, match="'other' is not served here; this server serves 'verse'"):
        openai.OpenAI(base_url=api, api_key=KEY).completions.create(model="other", prompt="To", max_tokens=2)


def test_a_long_stream_does_not_hold_up_a_short_request(api):
    client = openai.OpenAI(base_url=api, api_key=KEY)
    long_done = threading.Event()
    first_piece = threading.Event()

    def long_stream() -> None:
        for _ in client.completions.create(model="verse", prompt="To", max_tokens=2000, stream=True, seed=1):
            first_piece.set()
        long_done.set()

    thread = threading.Thread(target=long_stream)
    thread.start()
    assert first_piece.wait(30)
    short = client.completions.create(model="verse", prompt="To", max_tokens=5, seed=2)
    assert len(short.choices[0].text) <= 5 and not long_done.is_set()  # answered while the long one streams
    thread.join(120)
    assert long_done.is_set()


def test_serve_api_refuses_to_listen_beyond_this_machine_without_a_key(tmp_path):
    done = run_app("serve-api", "--host", "0.0.0.0", cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and "--host 0.0.0.0 lets other machines call the API: give --api-key" in done.stderr


def test_without_a_key_on_this_machine_no_header_is_needed(loaded):
    with serving(loaded) as url:
        answer = httpx.post(f"{url}/completions", json={"prompt": "To", "max_tokens": 3, "seed": 0}, timeout=30)
    assert answer.status_code == 200 and answer.json()["object"] == "text_completion"

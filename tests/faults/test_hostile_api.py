"""The completion API against what a hostile page or client sends: each row of ATTACKS is one request and the
answer it must get (a status, OpenAI's error shape, a message). Add a row for each new door."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import openai
import pytest

from api.server import Access, Limits, normal_origin
from tests.helpers import save_verse_model, serving


@dataclass
class Attack:
    name: str
    body: bytes | None = None  # POSTed to /v1/completions; None: a GET of `path`
    status: int = 400
    message: str = ""  # a regex the error message must match
    path: str = "/completions"
    method: str = ""  # default: POST with a body, GET without
    headers: dict[str, str] = field(default_factory=dict)


def _json(**fields) -> bytes:
    return json.dumps({"prompt": "To be", "max_tokens": 5, **fields}).encode()


ATTACKS = [
    Attack("a 1 MB stop string", _json(stop="x" * 1_000_000), 400, "stop string may be 1,000 characters long"),
    Attack("a stop list with a long string", _json(stop=["a", "y" * 1001]), 400, "stop string may be 1,000"),
    Attack("a body past the limit", b'{"prompt": "' + b"T" * 6_200_000 + b'"}', 413, "body is longer"),
    Attack("JSON nested 200k deep", b"[" * 200_000 + b"]" * 200_000, 400, "nested too deeply"),
    Attack("temperature NaN", b'{"prompt": "To", "temperature": NaN}', 400, "temperature must be a finite number"),
    Attack("temperature Infinity", b'{"prompt": "To", "temperature": Infinity}', 400, "finite number"),
    Attack("top_p NaN", b'{"prompt": "To", "top_p": NaN}', 400, "top_p must be a finite number"),
    Attack("temperature of 400 digits", b'{"prompt": "To", "temperature": 1' + b"0" * 400 + b"}", 400, "finite"),
    Attack("a Host with userinfo", _json(), 403, "localhost only", headers={"host": "127.0.0.1:80@evil.example"}),
    Attack("a Host past its brackets", _json(), 403, "localhost only", headers={"host": "[::1]evil.example"}),
    Attack("temperature 1e-40", _json(temperature=1e-40), 200),
    Attack("top_p 1e-300", _json(top_p=1e-300), 200),
    Attack("a lone surrogate prompt", _json(prompt="\ud800"), 400, "lone surrogate"),
    Attack("a lone surrogate stop", _json(stop="\udcff"), 400, "lone surrogate"),
    Attack("a field named by a lone surrogate", b'{"prompt": "To", "\\ud800": 1}', 400, "unknown"),
    Attack("a megabyte field name", b'{"prompt": "To", "' + b"k" * 1_000_000 + b'": 1}', 400, "unknown"),
    Attack("a page rebound to 127.0.0.1", _json(), 403, "localhost only", headers={"host": "evil.example:8000"}),
    Attack(
        "a page's cross-origin POST",
        _json(),
        403,
        "may not call this server; start it with --allow-origin",
        headers={"origin": "http://evil.example", "content-type": "text/plain"},
    ),  # fmt: skip
    Attack("an unknown path", None, 404, "Not Found", path="/nowhere"),
    Attack("a wrong method", None, 405, "Method Not Allowed", method="DELETE"),
    Attack("another model's id", None, 404, "'other' is not served here", path="/models/other"),
]


@pytest.fixture(scope="module")
def char_api(tmp_path_factory) -> Iterator[tuple[str, object]]:
    loaded = save_verse_model(tmp_path_factory.mktemp("hostile"))
    with serving(loaded, limits=Limits(max_tokens=2000)) as url:
        yield url, loaded


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_each_attack_gets_its_answer_in_openais_error_shape(char_api, attack):
    url, _ = char_api
    method = attack.method or ("POST" if attack.body is not None else "GET")
    started = time.monotonic()
    answer = httpx.request(method, url + attack.path, content=attack.body, headers=attack.headers, timeout=60)
    assert answer.status_code == attack.status, answer.text[:300]
    assert time.monotonic() - started < 30
    if attack.status != 200:
        error = answer.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert re.search(attack.message, error["message"]), error["message"]
        assert len(answer.content) < 10_000  # an error echoes what was sent, never all of it


def test_a_body_sent_in_chunks_is_cut_off_at_the_limit(char_api):
    """No Content-Length: the server counts while it reads, and never holds more than its limit."""
    url, _ = char_api

    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(200):  # 200 MB if the server kept it all
            yield b"T" * 1_000_000

    tracemalloc.start()
    try:
        answer = httpx.post(url + "/completions", content=chunks(), timeout=60)
        assert answer.status_code == 413 and "body is longer" in answer.json()["error"]["message"]
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 50_000_000, f"{peak:,} bytes held"


def test_a_body_declared_too_long_is_refused_before_it_is_sent(char_api):
    url, _ = char_api
    host, port = url.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Length: 999999999999\r\n"
                     "Content-Type: application/json\r\n\r\n{".encode())  # fmt: skip
        answer = b""
        while b"body is longer" not in answer and (chunk := conn.recv(65536)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413") and b"body is longer" in answer, answer[:300]


def test_the_model_is_retrieved_by_its_id(char_api):
    url, _ = char_api
    model = openai.OpenAI(base_url=url, api_key="x").models.retrieve("verse")
    assert (model.id, model.object, model.owned_by) == ("verse", "model", "chargpt-workbench")


def test_an_allowed_origin_is_let_in_with_cors_headers(tmp_path):
    loaded = save_verse_model(tmp_path)
    with serving(loaded, access=Access(origins=(normal_origin("http://LocalHost:3000/"),))) as url:
        page = {"origin": "http://localhost:3000"}
        answer = httpx.post(url + "/completions", content=_json(), headers=page, timeout=30)
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "http://localhost:3000"
        preflight = httpx.options(url + "/completions", headers={**page, "access-control-request-method": "POST"})
        assert preflight.status_code == 200
        other = httpx.post(url + "/completions", content=_json(), headers={"origin": "http://evil.example"})
        assert other.status_code == 403


def test_a_server_bound_beyond_this_machine_answers_any_host_with_its_key(tmp_path):
    loaded = save_verse_model(tmp_path)
    with serving(loaded, access=Access(api_key="k", local=False)) as url:
        answer = httpx.post(url + "/completions", content=_json(), timeout=30,
                            headers={"host": "models.example.org", "authorization": "Bearer k"})  # fmt: skip
        assert answer.status_code == 200


def test_a_bpe_model_counts_the_tokens_it_generated_and_refuses_a_surrogate(tmp_path):
    loaded = save_verse_model(tmp_path, tokenizer="bpe")
    with serving(loaded) as url:
        client = openai.OpenAI(base_url=url, api_key="x")
        for seed in range(5):
            done = client.completions.create(model="verse", prompt="To be", max_tokens=3, seed=seed)
            assert done.usage.completion_tokens == 3 and done.choices[0].finish_reason == "length"
        answer = httpx.post(url + "/completions", content=_json(prompt="a\ud800"), timeout=30)
        assert answer.status_code == 400 and "lone surrogate" in answer.json()["error"]["message"]


def test_the_longest_stop_string_does_not_hold_up_another_client(char_api):
    url, _ = char_api
    client = openai.OpenAI(base_url=url, api_key="x")
    first = threading.Event()

    def worst() -> None:
        for _ in client.completions.create(model="verse", prompt="To", max_tokens=2000, stream=True, seed=1,
                                           stop=["\x01" * 999 + "q"] * 4):  # fmt: skip
            first.set()

    thread = threading.Thread(target=worst)
    thread.start()
    assert first.wait(30)
    started = time.monotonic()
    client.completions.create(model="verse", prompt="To", max_tokens=5, seed=2)
    assert time.monotonic() - started < 5  # it took 15 s a token before stop strings were matched linearly
    thread.join(120)


def test_many_unstreamed_replies_do_not_take_every_thread(char_api):
    """The thread pool has 40 threads: a reply that held one from start to end let 44 long requests starve a
    short one until they were done."""
    url, _ = char_api
    finished: list[str] = []

    def ask(tokens: int, label: str) -> None:
        httpx.post(url + "/completions", content=_json(max_tokens=tokens, seed=len(finished)), timeout=300)
        finished.append(label)

    longs = [threading.Thread(target=ask, args=(400, "long")) for _ in range(44)]
    for thread in longs:
        thread.start()
    time.sleep(1.0)
    ask(5, "short")
    for thread in longs:
        thread.join(300)
    assert finished.index("short") < 5, finished


def test_replies_beyond_the_limit_are_refused_at_once_and_a_slot_comes_back_when_a_stream_is_dropped(tmp_path):
    loaded = save_verse_model(tmp_path)
    with serving(loaded, limits=Limits(max_tokens=4000, replies=2)) as url:
        with httpx.Client(timeout=60) as first, httpx.Client(timeout=60) as second:
            streams = [
                client.stream("POST", url + "/completions", content=_json(max_tokens=4000, stream=True))
                for client in (first, second)
            ]  # fmt: skip
            answers = [s.__enter__() for s in streams]
            for answer in answers:
                assert answer.status_code == 200 and next(answer.iter_lines())  # both under way
            started = time.monotonic()
            refused = httpx.post(url + "/completions", content=_json(), timeout=60)
            assert refused.status_code == 429 and time.monotonic() - started < 5
            assert refused.json()["error"]["code"] == "too_many_requests"
            streams[0].__exit__(None, None, None)  # the client goes away mid-stream
        deadline = time.monotonic() + 30
        while (status := httpx.post(url + "/completions", content=_json(), timeout=60).status_code) == 429:
            assert time.monotonic() < deadline, "the dropped streams' slots never came back"
            time.sleep(0.5)
        assert status == 200

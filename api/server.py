"""An OpenAI-style completion API over a saved model (`python app.py serve-api`): POST /v1/completions, streamed
with "stream": true, and GET /v1/models, in the shapes OpenAI's clients read.

Each request generates in a worker thread with its own KV cache (PyTorch releases the GIL in its kernels), so
requests do not wait for one another; the shared model is only read.
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from core.checkpoint import LoadedModel
from core.sampling import SamplingConfig, stream, taking_turns
from core.vocab import describe_chars

MAX_PROMPT_BYTES = 1_000_000
MAX_STOPS = 4
OWNER = "chargpt-workbench"


class ApiError(ValueError):
    """A request the API refuses; `status` is its HTTP status."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code

    def response(self) -> JSONResponse:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        body = {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


@dataclass
class Limits:
    max_tokens: int = 4096  # the most a request may ask for
    prompt_bytes: int = MAX_PROMPT_BYTES


@dataclass
class Completion:
    """A validated request of /v1/completions."""

    prompt: str
    sampling: SamplingConfig
    stop: tuple[str, ...] = ()
    stream: bool = False


@dataclass
class _Field:
    types: tuple[type, ...]
    kind: str  # the type in words, for the error
    check: Any = None  # value -> message when out of range, else None
    default: Any = None


def _number(low: float, high: float, *, low_open: bool = False):
    def check(value):
        below = value <= low if low_open else value < low
        if below or value > high:
            return f"must be in {'(' if low_open else '['}{low:g}, {high:g}]"
        return None

    return check


def _fields(limits: Limits) -> dict[str, _Field]:
    return {
        "model": _Field((str,), "a string"),
        "prompt": _Field((str, list), "a string"),
        "max_tokens": _Field(
            (int,),
            "an integer",
            lambda v: (
                None
                if 0 <= v <= limits.max_tokens
                else f"must be in [0, {limits.max_tokens}] (this server's --max-tokens-limit)"
            ),
            16,
        ),  # fmt: skip
        "temperature": _Field((int, float), "a number", _number(0, 10), 1.0),
        "top_p": _Field((int, float), "a number", _number(0, 1, low_open=True), 1.0),
        "stop": _Field((str, list), "a string or a list of strings"),
        "seed": _Field((int,), "an integer", lambda v: None if 0 <= v < 2**63 else "must be in [0, 2**63)"),
        "stream": _Field((bool,), "a boolean", None, False),
        "n": _Field((int,), "an integer", lambda v: None if v == 1 else "must be 1: one completion a request", 1),
        "user": _Field((str,), "a string"),
    }


def parse_completion(body: Any, loaded: LoadedModel, limits: Limits) -> Completion:
    """Validate a /v1/completions body; raises ApiError naming the field and what it must be."""
    if not isinstance(body, dict):
        raise ApiError("the body must be a JSON object")
    fields = _fields(limits)
    unknown = sorted(set(body) - fields.keys())
    if unknown:
        raise ApiError(f"unknown field {unknown[0]!r}; this server reads {', '.join(fields)}", unknown[0])
    values = {}
    for name, spec in fields.items():
        value = body.get(name)
        if value is None:
            values[name] = spec.default
            continue
        if isinstance(value, bool) and bool not in spec.types or not isinstance(value, spec.types):
            raise ApiError(f"{name} must be {spec.kind}, got {json.dumps(value)[:40]}", name)
        message = spec.check(value) if spec.check else None
        if message:
            raise ApiError(f"{name} {message}, got {value}", name)
        values[name] = value
    if values["model"] not in (None, loaded.name):
        raise ApiError(f"model {values['model']!r} is not served here; this server serves {loaded.name!r}", "model",
                       status=404, code="model_not_found")  # fmt: skip
    prompt = values["prompt"]
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise ApiError("prompt must be a string (or a list of one string)", "prompt")
        prompt = prompt[0]
    if prompt is None:
        prompt = ""
    if len(prompt.encode("utf-8", "surrogatepass")) > limits.prompt_bytes:
        raise ApiError(f"prompt is longer than {limits.prompt_bytes:,} bytes", "prompt")
    missing = loaded.vocab.unknown(prompt)
    if missing:
        raise ApiError(f"prompt has characters this model does not know: {describe_chars(missing, 5)}", "prompt")
    stop = values["stop"]
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOPS or not all(isinstance(s, str) for s in stops):
        raise ApiError(f"stop must be a string or a list of up to {MAX_STOPS} strings", "stop")
    sampling = SamplingConfig(
        temperature=float(values["temperature"]),
        top_p=float(values["top_p"]),
        max_new_tokens=values["max_tokens"],
        seed=values["seed"] if values["seed"] is not None else -1,
    )
    return Completion(prompt, sampling, tuple(s for s in stops if s), bool(values["stream"]))


@dataclass
class _Reply:
    """One completion as it is generated: its pieces, then why it ended."""

    loaded: LoadedModel
    request: Completion
    finish_reason: str = "length"
    pieces: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[str]:
        model, vocab = self.loaded.model, self.loaded.vocab
        generator = taking_turns(stream(model, vocab, self.request.prompt, self.request.sampling, self.request.stop))
        while True:
            try:
                piece = next(generator)
            except StopIteration as done:
                self.finish_reason = done.value or "length"
                return
            self.pieces.append(piece)
            yield piece

    def usage(self) -> dict[str, int]:
        prompt = len(self.loaded.vocab.encode(self.request.prompt))
        completion = len(self.loaded.vocab.encode("".join(self.pieces)))
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def create_app(loaded: LoadedModel, *, api_key: str | None = None, limits: Limits | None = None) -> FastAPI:
    """The API of one loaded model; with `api_key`, every request must carry `Authorization: Bearer KEY`."""
    limits = limits or Limits()
    app = FastAPI(title=f"chargpt-workbench: {loaded.name}", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(loaded.path.joinpath("model.safetensors").stat().st_mtime)

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        if api_key is not None:
            given = request.headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), api_key.encode()):
                return ApiError("invalid or missing API key (Authorization: Bearer KEY)", status=401,
                                code="invalid_api_key").response()  # fmt: skip
        return await call_next(request)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": loaded.name, "object": "model", "created": created,
                                            "owned_by": OWNER}]}  # fmt: skip

    @app.post("/v1/completions")
    async def completions(request: Request):
        raw = await request.body()
        if len(raw) > limits.prompt_bytes + 64_000:
            return ApiError(f"the body is longer than the {limits.prompt_bytes:,}-byte prompt allows", "prompt").response()  # fmt: skip
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            return ApiError(f"the body is not valid JSON ({err})").response()
        try:
            completion = parse_completion(body, loaded, limits)
        except ApiError as err:
            return err.response()
        reply = _Reply(loaded, completion)
        head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": loaded.name}  # fmt: skip
        if not completion.stream:
            text = await run_in_threadpool(lambda: "".join(reply))
            choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": reply.finish_reason}
            return {**head, "choices": [choice], "usage": reply.usage()}

        def events() -> Iterator[str]:
            for piece in reply:
                choice = {"text": piece, "index": 0, "logprobs": None, "finish_reason": None}
                yield f"data: {json.dumps({**head, 'choices': [choice]})}\n\n"
            last = {"text": "", "index": 0, "logprobs": None, "finish_reason": reply.finish_reason}
            yield f"data: {json.dumps({**head, 'choices': [last]})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app

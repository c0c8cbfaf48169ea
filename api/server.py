"""An OpenAI-style completion API over a saved model (`python app.py serve-api`): POST /v1/completions, streamed
with "stream": true, and GET /v1/models, in the shapes OpenAI's clients read.

Each request generates with its own KV cache; the model steps of all requests take turns (`taking_turns`),
and every other part of a request (reading and checking it, decoding, stop strings) runs outside that turn,
one piece at a time in the thread pool, so no request holds a thread or the model while others wait.
Every input is bounded (docs/reliability-and-security.md): the body, the prompt, the stop strings.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.exceptions import HTTPException

from core.checkpoint import LoadedModel
from core.sampling import SamplingConfig, stream
from core.vocab import describe_chars

MAX_PROMPT_BYTES = 1_000_000
MAX_STOPS = 4
MAX_STOP_CHARS = 1_000
BODY_OVERHEAD_BYTES = 64_000  # what a body may hold besides its prompt and stop strings
OWNER = "chargpt-workbench"
WORKER_THREADS = 128
DISCONNECT_CHECK_EVERY = 16  # pieces of a non-streamed reply between checks that its client is still there


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
    stop_chars: int = MAX_STOP_CHARS  # each stop string

    @property
    def body_bytes(self) -> int:
        # as JSON: a client may escape every character (\\uXXXX is 6 bytes, an emoji's surrogate pair 12)
        return 6 * self.prompt_bytes + MAX_STOPS * self.stop_chars * 12 + BODY_OVERHEAD_BYTES


@dataclass
class Access:
    """Who may call: the key every request must carry, and which Host and Origin headers are let in.

    A keyless server on this machine answers only requests addressed to this machine (a page whose name was
    rebound to 127.0.0.1 sends its own Host) and no browser page except `origins`: any page can send a
    POST to 127.0.0.1, and the browser adds its Origin."""

    api_key: str | None = None
    local: bool = True  # bound to this machine only: the Host header must name it
    origins: tuple[str, ...] = ()  # browser pages that may call (`--allow-origin`), "*" for any

    def refusal(self, request: Request) -> ApiError | None:
        if self.local and not _names_this_machine(request.headers.get("host", "")):
            return ApiError("this server answers requests to localhost only (the Host header names another "
                            "machine)", status=403, code="host_not_allowed")  # fmt: skip
        origin = request.headers.get("origin")
        if origin is not None and "*" not in self.origins and normal_origin(origin) not in self.origins:
            return ApiError(f"browser pages from {origin[:100]} may not call this server; start it with "
                            f"--allow-origin {origin[:100]} to let them", status=403,
                            code="origin_not_allowed")  # fmt: skip
        if self.api_key is not None:
            given = request.headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), self.api_key.encode()):
                return ApiError("invalid or missing API key (Authorization: Bearer KEY)", status=401,
                                code="invalid_api_key")  # fmt: skip
        return None


def normal_origin(origin: str) -> str:
    """An origin as browsers send it: lower-case, no trailing slash (`--allow-origin http://LocalHost:3000/`)."""
    return origin.strip().rstrip("/").lower()


def _names_this_machine(host: str) -> bool:
    """Whether a Host header (`name[:port]`, `[v6]:port`) names this machine by a loopback name or address;
    no Host at all (HTTP/1.0) is no browser's request."""
    if not host:
        return True
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return False
    else:
        name, _, port = host.partition(":")
        if port and not port.isdigit():
            return False
    if name.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


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
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an integer of hundreds of digits
            finite = False
        if not finite:
            return "must be a finite number"
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
    _require_utf8(prompt, "prompt")
    missing = loaded.vocab.unknown(prompt)
    if missing:
        raise ApiError(f"prompt has characters this model does not know: {describe_chars(missing, 5)}", "prompt")
    stop = values["stop"]
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOPS or not all(isinstance(s, str) for s in stops):
        raise ApiError(f"stop must be a string or a list of up to {MAX_STOPS} strings", "stop")
    for each in stops:
        if len(each) > limits.stop_chars:
            raise ApiError(f"a stop string may be {limits.stop_chars:,} characters long at most, got {len(each):,}",
                           "stop")  # fmt: skip
        _require_utf8(each, "stop")
    sampling = SamplingConfig(
        temperature=float(values["temperature"]),
        top_p=float(values["top_p"]),
        max_new_tokens=values["max_tokens"],
        seed=values["seed"] if values["seed"] is not None else -1,
    )
    return Completion(prompt, sampling, tuple(s for s in stops if s), bool(values["stream"]))


def _require_utf8(text: str, name: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ApiError(f"{name} holds a lone surrogate ({text[err.start]!r} at {err.start}): not text", name) from None


@dataclass
class _Reply:
    """One completion as it is generated: its pieces, then why it ended."""

    loaded: LoadedModel
    request: Completion
    finish_reason: str = "length"
    pieces: list[str] = field(default_factory=list)
    tokens: int = 0  # generated, whether shown or cut by a stop string

    def _count(self, _token: int) -> None:
        self.tokens += 1

    def __iter__(self) -> Iterator[str]:
        model, vocab, request = self.loaded.model, self.loaded.vocab, self.request
        generator = stream(model, vocab, request.prompt, request.sampling, request.stop, shared=True,
                           on_token=self._count)  # fmt: skip
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
        return {"prompt_tokens": prompt, "completion_tokens": self.tokens, "total_tokens": prompt + self.tokens}


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it is known to be longer than `limit` (by its header, or while it arrives)."""
    too_long = ApiError(f"the body is longer than this server reads ({limit:,} bytes: the prompt, the stop strings "
                        "and the other fields)", status=413, code="body_too_large")  # fmt: skip
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_long
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_long
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise ApiError(f"the body is not valid JSON ({err})") from None
    except RecursionError:
        raise ApiError("the body is nested too deeply to be a request") from None


def _answer_errors_as_openai_does(app: FastAPI) -> None:
    """Every error, a 404 or 405 included, in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, err: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
        answer = ApiError(str(err.detail), status=err.status_code, code=code).response()
        answer.headers.update(err.headers or {})  # a 405's Allow
        return answer

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, err: ApiError) -> JSONResponse:
        return err.response()

    @app.exception_handler(Exception)
    async def server_error(_request: Request, _err: Exception) -> JSONResponse:
        return ApiError("the server failed on this request; its log says why", status=500).response()


def create_app(
    loaded: LoadedModel, *, api_key: str | None = None, limits: Limits | None = None, access: Access | None = None
) -> FastAPI:
    """The API of one loaded model; with `api_key`, every request must carry `Authorization: Bearer KEY`."""
    limits = limits or Limits()
    access = access or Access(api_key=api_key)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        # a request waiting for its model turn waits in a thread: room for many more than anyio's 40
        anyio.to_thread.current_default_thread_limiter().total_tokens = WORKER_THREADS
        yield

    app = FastAPI(title=f"chargpt-workbench: {loaded.name}", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)  # fmt: skip
    created = int(loaded.path.joinpath("model.safetensors").stat().st_mtime)
    model_card = {"id": loaded.name, "object": "model", "created": created, "owned_by": OWNER}

    @app.middleware("http")
    async def guard(request: Request, call_next):
        refusal = access.refusal(request)
        return refusal.response() if refusal else await call_next(request)

    if access.origins:  # outside the guard: it answers the browser's preflight for the pages let in
        app.add_middleware(CORSMiddleware, allow_origins=list(access.origins), allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type"])  # fmt: skip

    _answer_errors_as_openai_does(app)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        if model_id != loaded.name:
            raise ApiError(f"model {model_id[:100]!r} is not served here; this server serves {loaded.name!r}",
                           "model", status=404, code="model_not_found")  # fmt: skip
        return model_card

    @app.post("/v1/completions")
    async def completions(request: Request):
        raw = await _read_body(request, limits.body_bytes)
        # parsing and scanning a prompt of a megabyte takes a while: in a thread, not on the loop every stream uses
        completion = await run_in_threadpool(lambda: parse_completion(_parse_json(raw), loaded, limits))
        reply = _Reply(loaded, completion)
        head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": loaded.name}  # fmt: skip
        if not completion.stream:
            pieces = 0
            async for _ in iterate_in_threadpool(iter(reply)):  # a thread for each piece, not the whole reply
                pieces += 1
                if pieces % DISCONNECT_CHECK_EVERY == 0 and await request.is_disconnected():
                    return JSONResponse({}, status_code=499)
            choice = {"text": "".join(reply.pieces), "index": 0, "logprobs": None,
                      "finish_reason": reply.finish_reason}  # fmt: skip
            return {**head, "choices": [choice], "usage": await run_in_threadpool(reply.usage)}

        def events() -> Iterator[str]:
            for piece in reply:
                choice = {"text": piece, "index": 0, "logprobs": None, "finish_reason": None}
                yield f"data: {json.dumps({**head, 'choices': [choice]})}\n\n"
            last = {"text": "", "index": 0, "logprobs": None, "finish_reason": reply.finish_reason}
            yield f"data: {json.dumps({**head, 'choices': [last]})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app

"""An OpenAI-style API over a saved model (`python app.py serve-api`): POST /v1/completions and
/v1/chat/completions, streamed with "stream": true, and GET /v1/models, in the shapes OpenAI's clients read.

Each request generates with its own KV cache; the model steps of all requests take turns (`taking_turns`),
and every other part of a request (reading and checking it, decoding, stop strings) runs outside that turn,
one piece at a time in the thread pool, so no request holds a thread or the model while others wait.
Every input is bounded (api/requests.py, docs/reliability-and-security.md).
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from api.requests import ApiError, Completion, Limits, parse_chat, parse_completion
from core.chat_template import template_for
from core.checkpoint import LoadedModel
from core.sampling import stream

OWNER = "chargpt-workbench"
WORKER_THREADS = 128
DISCONNECT_CHECK_EVERY = 16  # pieces of a non-streamed reply between checks that its client is still there


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
                           skip_leading=request.skip_leading, on_token=self._count)  # fmt: skip
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
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_long
            chunks.append(chunk)
    except ClientDisconnect:  # gone mid-upload: nobody to answer, nothing to log
        raise ApiError("the client closed the connection before sending the whole body", status=400) from None
    return b"".join(chunks)


async def _read_json(request: Request, body_bytes: int) -> Any:
    """The body as JSON; the bytes are not kept (a reply may take a while, and many may wait their turn)."""
    return await run_in_threadpool(_parse_json, await _read_body(request, body_bytes))


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


@dataclass
class TextShape:
    """/v1/completions' replies: a text completion, streamed as text chunks."""

    model: str
    id: str = field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def whole(self, text: str, finish_reason: str, usage: dict[str, int]) -> dict[str, Any]:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}
        return {**self._head("text_completion"), "choices": [choice], "usage": usage}

    def chunks(self, pieces: Iterator[str], reply: _Reply) -> Iterator[dict[str, Any]]:
        for piece in pieces:
            yield {**self._head("text_completion"), "choices": [{"text": piece, "index": 0, "logprobs": None,
                                                                  "finish_reason": None}]}  # fmt: skip
        last = {"text": "", "index": 0, "logprobs": None, "finish_reason": reply.finish_reason}
        yield {**self._head("text_completion"), "choices": [last]}


@dataclass
class ChatShape(TextShape):
    """/v1/chat/completions' replies: the assistant's message, streamed as deltas of it."""

    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex[:24]}")

    def whole(self, text: str, finish_reason: str, usage: dict[str, int]) -> dict[str, Any]:
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        return {**self._head("chat.completion"), "choices": [choice], "usage": usage}

    def chunks(self, pieces: Iterator[str], reply: _Reply) -> Iterator[dict[str, Any]]:
        usage = {"usage": None} if reply.request.include_usage else {}  # as OpenAI: null until the last chunk

        def chunk(delta: dict[str, str], finish_reason: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return {**self._head("chat.completion.chunk"), "choices": [choice], **usage}

        yield chunk({"role": "assistant", "content": ""})
        for piece in pieces:
            yield chunk({"content": piece})
        yield chunk({}, reply.finish_reason)
        if reply.request.include_usage:
            yield {**self._head("chat.completion.chunk"), "choices": [], "usage": reply.usage()}


async def _reply_in_slot(
    request: Request, slots: threading.BoundedSemaphore, body_bytes: int, reply_to: Callable[[Any], _Reply],
    shape: TextShape,
):  # fmt: skip
    """Take one of the slots of replies under way (none free: 429 before the body is read, rather than a megabyte
    of prompt queued behind the others' turns), read and check the request (`reply_to` its JSON), answer it. The
    slot is given back when the reply is dropped (answered, streamed to its end, or abandoned by its client), or at
    once if the request is refused."""
    if not slots.acquire(blocking=False):
        raise ApiError("the server is answering as many requests as it takes at once; try again shortly",
                       status=429, code="too_many_requests")  # fmt: skip
    try:
        # parsing and scanning a prompt of a megabyte takes a while: in a thread, not on the loop every stream uses
        reply = await run_in_threadpool(reply_to, await _read_json(request, body_bytes))
    except BaseException:
        slots.release()
        raise
    weakref.finalize(reply, slots.release)
    return await _answer(request, reply, shape)


async def _answer(request: Request, reply: _Reply, shape: TextShape):
    """The reply whole, or streamed as server-sent events in `shape`'s chunks."""
    if not reply.request.stream:
        pieces = 0
        async for _ in iterate_in_threadpool(iter(reply)):  # a thread for each piece, not the whole reply
            pieces += 1
            if pieces % DISCONNECT_CHECK_EVERY == 0 and await request.is_disconnected():
                return JSONResponse({}, status_code=499)
        return shape.whole("".join(reply.pieces), reply.finish_reason, await run_in_threadpool(reply.usage))

    def events() -> Iterator[str]:
        for chunk in shape.chunks(iter(reply), reply):
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def create_app(
    loaded: LoadedModel, *, api_key: str | None = None, limits: Limits | None = None, access: Access | None = None
) -> FastAPI:
    """The API of one loaded model; with `api_key`, every request must carry `Authorization: Bearer KEY`."""
    limits = limits or Limits()
    slots = threading.BoundedSemaphore(limits.replies)
    access = access or Access(api_key=api_key)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        # a request waiting for its model turn waits in a thread: room for many more than anyio's 40
        anyio.to_thread.current_default_thread_limiter().total_tokens = WORKER_THREADS
        yield

    app = FastAPI(title=f"chargpt-workbench: {loaded.name}", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)  # fmt: skip
    created = int(loaded.path.joinpath("model.safetensors").stat().st_mtime)
    template = template_for(loaded.info)
    model_card = {"id": loaded.name, "object": "model", "created": created, "owned_by": OWNER,
                  "chat_template": template.describe()}  # fmt: skip

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
        return await _reply_in_slot(request, slots, limits.body_bytes,
                                    lambda body: _Reply(loaded, parse_completion(body, loaded, limits)),
                                    TextShape(loaded.name))  # fmt: skip

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await _reply_in_slot(request, slots, limits.body_bytes,
                                    lambda body: _Reply(loaded, parse_chat(body, loaded, limits, template)),
                                    ChatShape(loaded.name))  # fmt: skip

    return app

"""What the API reads: each request's body checked field by field, bounded, and turned into a `Completion`
(/v1/completions as it is; /v1/chat/completions through the model's chat template, core.chat_template).

Every input is bounded (docs/reliability-and-security.md): the body, the prompt, the stop strings, the messages.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse

from core.chat_template import MAX_NAME_CHARS, ChatTemplate
from core.checkpoint import LoadedModel
from core.sampling import SamplingConfig
from core.vocab import describe_chars

MAX_PROMPT_BYTES = 1_000_000
MAX_STOPS = 4
MAX_STOP_CHARS = 1_000
BODY_OVERHEAD_BYTES = 64_000  # what a body may hold besides its prompt and stop strings


class ApiError(ValueError):
    """A request the API refuses; `status` is its HTTP status."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code

    def response(self) -> JSONResponse:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        body = {"error": {"message": _printable(str(self), 2000), "type": kind,
                          "param": None if self.param is None else _printable(self.param, 100), "code": self.code}}  # fmt: skip
        return JSONResponse(body, status_code=self.status)


def _printable(text: str, limit: int) -> str:
    """`text` as UTF-8 can carry it (a lone surrogate from a client's field name is escaped) and at most `limit`
    characters: an error echoes what the client sent, never megabytes of it."""
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass
class Limits:
    max_tokens: int = 4096  # the most a request may ask for
    prompt_bytes: int = MAX_PROMPT_BYTES
    stop_chars: int = MAX_STOP_CHARS  # each stop string
    replies: int = 64  # replies under way at once (each holds its prompt); more are answered 429 at once

    @property
    def body_bytes(self) -> int:
        # as JSON: a client may escape every character (\\uXXXX is 6 bytes, an emoji's surrogate pair 12)
        return 6 * self.prompt_bytes + MAX_STOPS * self.stop_chars * 12 + BODY_OVERHEAD_BYTES


@dataclass
class Completion:
    """A validated request of /v1/completions."""

    prompt: str
    sampling: SamplingConfig
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False  # a streamed chat's last chunk carries the usage (stream_options)
    skip_leading: str = ""  # characters a reply does not begin with (a chat reply's line ends)


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


def _chat_fields(limits: Limits) -> dict[str, _Field]:
    fields = {name: spec for name, spec in _fields(limits).items() if name != "prompt"}
    # no default: a chat reply ends at its speaker's end, so without either the limit is the server's
    optional = dataclasses.replace(fields["max_tokens"], default=None)
    return {
        **fields,
        "messages": _Field((list,), "a list of messages"),
        "max_tokens": optional,
        "max_completion_tokens": optional,  # the newer name of max_tokens
        "stream_options": _Field((dict,), "an object"),
    }


def _checked(body: Any, fields: dict[str, _Field], loaded: LoadedModel) -> dict[str, Any]:
    """Each field of `body` of its type and in its range, defaults for the absent; ApiError naming the first
    that is not."""
    if not isinstance(body, dict):
        raise ApiError("the body must be a JSON object")
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
    return values


def _known_text(text: str, name: str, loaded: LoadedModel, limits: Limits) -> str:
    if len(text.encode("utf-8", "surrogatepass")) > limits.prompt_bytes:
        raise ApiError(f"{name} is longer than {limits.prompt_bytes:,} bytes", name)
    _require_utf8(text, name)
    missing = loaded.vocab.unknown(text)
    if missing:
        raise ApiError(f"{name} has characters this model does not know: {describe_chars(missing, 5)}", name)
    return text


def _stops(stop: Any, limits: Limits) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOPS or not all(isinstance(s, str) for s in stops):
        raise ApiError(f"stop must be a string or a list of up to {MAX_STOPS} strings", "stop")
    for each in stops:
        if len(each) > limits.stop_chars:
            raise ApiError(f"a stop string may be {limits.stop_chars:,} characters long at most, got {len(each):,}",
                           "stop")  # fmt: skip
        _require_utf8(each, "stop")
    return tuple(s for s in stops if s)


def _sampling(values: dict[str, Any], max_tokens: int) -> SamplingConfig:
    return SamplingConfig(
        temperature=float(values["temperature"]),
        top_p=float(values["top_p"]),
        max_new_tokens=max_tokens,
        seed=values["seed"] if values["seed"] is not None else -1,
    )


def parse_completion(body: Any, loaded: LoadedModel, limits: Limits) -> Completion:
    """Validate a /v1/completions body; raises ApiError naming the field and what it must be."""
    values = _checked(body, _fields(limits), loaded)
    prompt = values["prompt"]
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise ApiError("prompt must be a string (or a list of one string)", "prompt")
        prompt = prompt[0]
    prompt = _known_text(prompt or "", "prompt", loaded, limits)
    stops = _stops(values["stop"], limits)
    return Completion(prompt, _sampling(values, values["max_tokens"]), stops, bool(values["stream"]))


MAX_MESSAGES = 1_000
ROLES = ("system", "developer", "user", "assistant")


def parse_chat(body: Any, loaded: LoadedModel, limits: Limits, template: ChatTemplate) -> Completion:
    """Validate a /v1/chat/completions body into the completion of its messages' prompt (`template`), stopped
    where the template's reply ends or at the request's own stop strings."""
    values = _checked(body, _chat_fields(limits), loaded)
    messages = values["messages"]
    if not messages or len(messages) > MAX_MESSAGES:
        raise ApiError(f"messages must hold 1 to {MAX_MESSAGES:,} messages, got {len(messages or [])}", "messages")
    read = [_message(m, i) for i, m in enumerate(messages)]
    if sum(len(content.encode("utf-8", "surrogatepass")) for _, content, _ in read) > limits.prompt_bytes:
        raise ApiError(f"the messages are longer than {limits.prompt_bytes:,} bytes together", "messages")
    prompt = _known_text(template.prompt(read), "messages", loaded, limits)
    wanted = values["max_completion_tokens"] if values["max_completion_tokens"] is not None else values["max_tokens"]
    options = values["stream_options"] or {}
    if set(options) - {"include_usage"} or not isinstance(options.get("include_usage", False), bool):
        raise ApiError("stream_options reads include_usage (a boolean) only", "stream_options")
    if options and not values["stream"]:
        raise ApiError("stream_options is for streamed requests (stream: true)", "stream_options")
    stops = template.stops + _stops(values["stop"], limits)
    sampling = _sampling(values, limits.max_tokens if wanted is None else wanted)
    return Completion(prompt, sampling, stops, bool(values["stream"]), bool(options.get("include_usage")), "\n")


def _message(message: Any, index: int) -> tuple[str, str, str | None]:
    """(role, content, name) of one message: text content only (a string, or text parts)."""
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise ApiError(f"{where} must be an object with role and content", "messages")
    extra = sorted(k for k, v in message.items() if k not in ("role", "content", "name") and v is not None)
    if extra:
        raise ApiError(f"{where} has {extra[0]!r}: this model reads role, content and name only (no tools)",
                       "messages")  # fmt: skip
    role, content, name = message.get("role"), message.get("content"), message.get("name")
    if role not in ROLES:
        raise ApiError(f"{where}.role must be one of {', '.join(ROLES)}, got {json.dumps(role)[:40]}", "messages")
    if isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):  # fmt: skip
            raise ApiError(f"{where}.content parts must be text parts ({{\"type\": \"text\", \"text\": ...}}): "
                           "this model reads text only", "messages")  # fmt: skip
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise ApiError(f"{where}.content must be a string or a list of text parts", "messages")
    if name is not None and not (isinstance(name, str) and 0 < len(name) <= MAX_NAME_CHARS
                                 and not set(name) & set(":\n\r")):  # fmt: skip
        raise ApiError(f"{where}.name must be a speaker's name: 1 to {MAX_NAME_CHARS} characters, no colon or newline",
                       "messages")  # fmt: skip
    return ("system" if role == "developer" else role), content, name


def _require_utf8(text: str, name: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ApiError(f"{name} holds a lone surrogate ({text[err.start]!r} at {err.start}): not text", name) from None

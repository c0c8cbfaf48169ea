"""The workbench login: the user:password pairs, checked with repeated failures slowed down per client.

Gradio calls `LoginGuard(...).check(username, password)` for each attempt. Each client (its address; for a connection from this
machine, such as the share link's tunnel or a local proxy, the first X-Forwarded-For hop when there is one) gets `FREE_FAILURES` wrong passwords at full speed; after
that every attempt waits for a slot spaced `delay_s` apart, doubling with each failure up to `MAX_DELAY_S`, and
an attempt whose slot would be more than `MAX_WAIT_S` away is refused without checking. A right password
clears the client's count, so the owner is slowed by an attack, never locked out for good.
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import time
from dataclasses import dataclass

FREE_FAILURES, BASE_DELAY_S, MAX_DELAY_S, MAX_WAIT_S = 3, 0.5, 8.0, 20.0
client_key: contextvars.ContextVar[str] = contextvars.ContextVar("login_client", default="?")


@dataclass
class _Client:
    failures: int = 0
    next_slot: float = 0.0


class LoginGuard:
    """Pass `guard.check` to Gradio: it awaits the check only when it is a coroutine function (a callable object
    with an async __call__ is not one, and its coroutine would count as a yes)."""

    def __init__(self, pairs: list[tuple[str, str]]):
        self.pairs = dict(pairs)
        self.clients: dict[str, _Client] = {}

    def delay_s(self, failures: int) -> float:
        if failures < FREE_FAILURES:
            return 0.0
        return min(MAX_DELAY_S, BASE_DELAY_S * 2 ** (failures - FREE_FAILURES))

    async def check(self, username: str, password: str) -> bool:
        key = client_key.get()
        client = self.clients.setdefault(key, _Client())
        now = time.monotonic()
        delay = self.delay_s(client.failures)
        if delay:
            slot = max(now, client.next_slot)
            if slot - now > MAX_WAIT_S:
                return False  # refused unchecked: this client is trying faster than it may
            client.next_slot = slot + delay
            await asyncio.sleep(slot - now + delay)
        expected = self.pairs.get(username)
        ok = expected is not None and hmac.compare_digest(password.encode(), expected.encode())
        if ok:
            self.clients.pop(key, None)
        else:
            client.failures += 1
        if len(self.clients) > 10_000:  # bounded memory under a flood of addresses
            self.clients.clear()
        return ok


class ClientKeyMiddleware:
    """ASGI middleware that tells LoginGuard which client is logging in."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("path", "").endswith("/login"):
            headers = dict(scope.get("headers") or [])
            host = (scope.get("client") or ("?", 0))[0]
            forwarded = headers.get(b"x-forwarded-for", b"").decode("latin-1").split(",")[0].strip()
            # only a local proxy may speak for a client; a remote one could rotate the header to dodge the delay
            client_key.set(forwarded if forwarded and host in ("127.0.0.1", "::1") else host)
        await self.app(scope, receive, send)

"""optuna-dashboard beside the workbench, guarded.

- Without a login: its own server on 127.0.0.1 (a thread), the full tool, which refuses requests whose Host
  header is not this machine's, so a web page cannot reach it by DNS rebinding.
- With a login: served by the workbench's own server under /dashboard/ (so also through a share link),
  behind the same login, and read-only for everyone: any request that could change the storage (every
  method but GET and HEAD: delete, create, tell, notes, user attributes) is refused. No other dashboard runs.
"""

from __future__ import annotations

import logging
import socketserver
import threading
from collections.abc import Callable, Iterable
from http.cookies import SimpleCookie
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

log = logging.getLogger(__name__)
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")
READ_METHODS = ("GET", "HEAD")
# The dashboard's page, its script and its API: the frontend asks for /static/bundle.js and /api/... at the root.
DASHBOARD_PATHS = ("/dashboard", "/api/", "/static/bundle.js")


def dashboard_wsgi(storage_url: str) -> Callable:
    from optuna_dashboard import wsgi

    from core.tune.storage import make_storage

    return wsgi(make_storage(storage_url, heartbeat=0))


def _refuse(start_response: Callable, status: str, text: str) -> Iterable[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
    return [text.encode()]


def local_hosts_only(app: Callable, port: int) -> Callable:
    """WSGI middleware: answer only requests addressed to this machine by name (no DNS rebinding)."""
    allowed = {f"{host}:{port}" for host in LOCAL_HOSTS} | set(LOCAL_HOSTS)

    def guarded(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("HTTP_HOST", "") not in allowed:
            return _refuse(start_response, "403 Forbidden", "optuna-dashboard answers only 127.0.0.1 and localhost")
        return app(environ, start_response)

    return guarded


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class names it so
        log.debug("dashboard: " + format, *args)


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class Dashboard:
    """optuna-dashboard on 127.0.0.1 in a thread; `close()` stops it (run_server cannot be stopped)."""

    def __init__(self, storage_url: str, host: str = "127.0.0.1", port: int = 0):
        app = dashboard_wsgi(storage_url)
        self.server = make_server(host, port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
        self.server.set_app(local_hosts_only(app, self.server.server_port))
        self.url = f"http://{host}:{self.server.server_port}/dashboard/"
        self.thread = threading.Thread(target=self.server.serve_forever, name="optuna-dashboard", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class LoggedInDashboard:
    """ASGI middleware for the workbench's server: the dashboard's paths go to a read-only dashboard for a
    request that carries the workbench's login cookie; everything else goes on to Gradio."""

    def __init__(self, app: Callable, storage_url: str):
        from a2wsgi import WSGIMiddleware

        self.app = app
        self.dashboard = WSGIMiddleware(dashboard_wsgi(storage_url))

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(DASHBOARD_PATHS):
            return await self.app(scope, receive, send)
        if not _logged_in(scope):
            return await _send(send, 401, "log in to the workbench first (open / and sign in)")
        if scope.get("method", "GET") not in READ_METHODS:
            return await _send(send, 403, "this optuna-dashboard is read-only: studies change only from the workbench")
        return await self.dashboard(scope, receive, send)


def _logged_in(scope: dict) -> bool:
    gradio_app = scope.get("app")
    tokens, cookie_id = getattr(gradio_app, "tokens", None), getattr(gradio_app, "cookie_id", None)
    if not tokens or cookie_id is None:
        return False
    raw = b"; ".join(v for k, v in scope.get("headers", []) if k == b"cookie").decode("latin-1")
    cookies = SimpleCookie()
    try:
        cookies.load(raw)
    except Exception:  # a malformed cookie header is no login
        return False
    for name in (f"access-token-{cookie_id}", f"access-token-unsecure-{cookie_id}"):
        if name in cookies and cookies[name].value in tokens:
            return True
    return False


async def _send(send: Callable, status: int, text: str) -> None:
    body = text.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

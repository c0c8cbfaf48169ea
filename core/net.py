"""Which addresses count as this machine only: a server bound elsewhere must ask for a login or a key."""

from __future__ import annotations

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def is_local(host: str) -> bool:
    return host in LOCAL_HOSTS

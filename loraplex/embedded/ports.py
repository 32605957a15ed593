"""Listen addresses for the embedded stack: URL hosts, a bind check that matches uvicorn's,
free ports for the children."""

from __future__ import annotations

import socket


def url_host(host: str) -> str:
    """The host part of a URL for a listen address: loopback for a wildcard, IPv6 bracketed."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def check_port_free(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound now (another loraplex up, say), or None.

    Binds as uvicorn will (``SO_REUSEADDR``), so connections of a run that just ended, still in
    TIME_WAIT, do not block a new ``make run``, while a live listener still does."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return f"cannot listen on {host}:{port} ({exc.strerror}); pass another --port"
    return None


def free_port(host: str) -> int:
    """A port the OS says is free now (tiny race until the child binds it; fine on loopback)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])

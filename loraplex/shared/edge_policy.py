"""What the HTTP edge of router and worker accepts, before any handler runs. No HTTP framework.

The settings (:class:`EdgeSettings`, one set of fields for both components) and the pure rules
the ASGI guard in :mod:`loraplex.shared.edge` applies to each request:

* **Host** (DNS rebinding): the ``Host`` header must name this server. Default: a server on a
  loopback or specific address accepts that address and the loopback names (``localhost``,
  ``127.0.0.1``, ``[::1]``) only; one on a wildcard address (``0.0.0.0``, ``::``: a container
  behind a Kubernetes Service/Ingress) accepts any Host, because which names reach it is the
  cluster's business (kubelet probes and the operator's scrapes reach a pod by its IP, which no
  host list can name, so leave it unset there and let the Ingress choose the names). 400.
* **Origin** (cross-site requests): a state-changing request (POST, …) that carries ``Origin``
  must come from this server's own origin (Origin's host:port = Host) or from one of
  ``cors_origins``. Clients that are not browsers (curl, huggingface_hub, the openai SDK) send
  no Origin and are unaffected. A CORS preflight (OPTIONS with Access-Control-Request-Method)
  is held to the same rule, so a foreign origin gets this JSON 403, not a preflight answer.
  403.
* **Content type**: a body that is not JSON (curl's default form type, text/plain — the types a
  web page can send cross-site without a CORS preflight) is accepted only from a client with no
  Origin or the same origin; a CORS-allowed origin sends JSON (after its preflight). 415.
* **Size**: a declared ``Content-Length`` over ``max_body_bytes`` is refused before one body
  byte is read (413); streamed (chunked) bodies are counted by the guard as they arrive.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Final
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from loraplex.shared.settings import ComponentSettings

KIB: Final = 1024
LOOPBACK_NAMES: Final = ("localhost", "127.0.0.1", "[::1]")
WILDCARD_ADDRESSES: Final = ("0.0.0.0", "::", "[::]", "")
ANY: Final = "*"
# Methods that only read: no Origin check (CORS already keeps their answers from other sites).
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS: Final = {"http": "80", "https": "443"}

HostList = Annotated[list[str], NoDecode]


class EdgeSettings(ComponentSettings):
    """Limits and checks at the HTTP edge; every component that serves HTTP inherits them.

    Environment: the component's prefix plus the upper-case name, e.g.
    ``LORAPLEX_ROUTER_MAX_BODY_BYTES``; lists as JSON (``'["a.example", "b.example"]'``) or
    comma-separated (``a.example,b.example``).
    """

    max_body_bytes: int = Field(
        256 * KIB,
        ge=1,
        description="Largest request body, bytes (default 256 KiB: a prompt is at most 2,000 "
        "characters, so real bodies are under 20 KB). Larger ones are answered 413 before "
        "they are read: a declared Content-Length at once, a streamed body when it passes "
        "the limit.",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Seconds a connection may take to send a complete request head (request "
        "line and headers), counted from its opening or from the previous answer (default "
        "10). Past it the connection is closed (408 when part of a head had arrived): a "
        "client trickling header bytes, or sending nothing, cannot hold a connection open "
        "(slow loris). Below uvicorn's keep-alive (5 s) it also ends idle keep-alive sooner.",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Seconds from the request head to the last body byte (default 30: 256 KiB "
        "at under 10 KB/s). Past it the answer is 408 and the connection is closed.",
    )
    allowed_hosts: HostList = Field(
        default_factory=list,
        description="Host header values this server answers ('*': any; '*.example.com': "
        "that domain's subdomains). Default (empty): on a loopback or specific listen "
        "address, that address plus localhost, 127.0.0.1 and [::1]; on a wildcard address "
        "(0.0.0.0, ::; containers) any host — set the public name(s) there. Other hosts get "
        "400: a web page cannot reach a local server through a DNS-rebinding name.",
    )
    cors_origins: HostList = Field(
        default_factory=list,
        description="Origins (scheme://host[:port]) of web pages allowed to call this server "
        "from a browser ('*': any). Default none: a POST carrying another site's Origin is "
        "403, so no web page can make a local server generate. Listed origins also get CORS "
        "answers (preflight, Access-Control-Allow-Origin) and must send JSON.",
    )

    @field_validator("allowed_hosts", "cors_origins", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        """A JSON list or a comma-separated string (the friendlier form in env and charts)."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith('["') or text == "[]":  # not "[::1],…": an IPv6 host, not JSON
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]


@dataclass(frozen=True)
class EdgeRefusal:
    """An answer the edge gives instead of the app: status and ``{"error"}`` message."""

    status: int
    message: str


@dataclass(frozen=True)
class EdgePolicy:
    """The edge rules of one server, resolved from its settings and listen address."""

    allowed_hosts: tuple[str, ...]
    cors_origins: tuple[str, ...]
    max_body_bytes: int
    body_timeout_s: float
    env_prefix: str = "LORAPLEX_"  # named in refusals, so a user knows which variable to set

    @classmethod
    def from_settings(cls, edge: EdgeSettings, listen_host: str, env_prefix: str) -> EdgePolicy:
        return cls(
            allowed_hosts=effective_allowed_hosts(edge.allowed_hosts, listen_host),
            cors_origins=tuple(normalize_origin(o) or o for o in edge.cors_origins),
            max_body_bytes=edge.max_body_bytes,
            body_timeout_s=edge.body_timeout_s,
            env_prefix=env_prefix,
        )


def normalize_host(host: str) -> str:
    """Lower case, no trailing dot, IPv6 literals bracketed: one spelling per name."""
    host = host.strip().lower().rstrip(".")
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def effective_allowed_hosts(configured: list[str], listen_host: str) -> tuple[str, ...]:
    """The configured list, or the default for ``listen_host`` (see :class:`EdgeSettings`)."""
    if configured:
        return tuple(ANY if h == ANY else normalize_host(h) for h in configured)
    if listen_host.strip() in WILDCARD_ADDRESSES:
        return (ANY,)
    return tuple(dict.fromkeys([normalize_host(listen_host), *LOOPBACK_NAMES]))


def embedded_allowed_hosts(listen_host: str) -> list[str]:
    """``loraplex up``'s list: the listen address (a wildcard adds nothing: a LAN client's
    name or address must be listed explicitly) and the loopback names. Never ``*``: a local
    server is exactly what DNS rebinding targets."""
    named = [] if listen_host.strip() in WILDCARD_ADDRESSES else [normalize_host(listen_host)]
    return list(dict.fromkeys([*named, *LOOPBACK_NAMES]))


def split_host_header(value: str) -> tuple[str, str]:
    """``host[:port]`` → (normalized host, port or ''); IPv6 literals keep their brackets."""
    value = value.strip()
    if value.startswith("["):
        host, _, rest = value.partition("]")
        return normalize_host(host + "]"), rest.removeprefix(":")
    host, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    return normalize_host(host), port


def host_allowed(host_header: str | None, allowed: tuple[str, ...]) -> bool:
    if ANY in allowed:
        return True
    if not host_header:
        return False
    host, _ = split_host_header(host_header)
    return any(
        host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:]))
        for pattern in allowed
    )


def normalize_origin(origin: str) -> str | None:
    """``scheme://host[:port]`` with default ports dropped and case folded; None if it is no
    such URL (``null``, a path, garbage)."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return None
    netloc = normalize_host(parts.hostname)
    if port is not None and str(port) != _DEFAULT_PORTS[parts.scheme]:
        netloc += f":{port}"
    return f"{parts.scheme}://{netloc}"


def same_origin(origin: str, host_header: str | None) -> bool:
    """True when ``origin`` names the host:port the request was sent to (its Host header).

    The scheme is not compared: behind a TLS-terminating Ingress the page is https while the
    server sees plain http; the Host header is what the browser itself sent."""
    normalized = normalize_origin(origin)
    if normalized is None or not host_header:
        return False
    scheme, _, netloc = normalized.partition("://")
    host, port = split_host_header(host_header)
    if port in ("", _DEFAULT_PORTS[scheme]):
        return netloc == host
    return netloc == f"{host}:{port}"


def is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def check_head(
    policy: EdgePolicy,
    method: str,
    headers: dict[str, str],
) -> EdgeRefusal | None:
    """The refusal for a request head (lower-case header names → first values), or None."""
    host = headers.get("host")
    if not host_allowed(host, policy.allowed_hosts):
        return EdgeRefusal(
            400,
            f"Host {host!r} is not served here; add it to {policy.env_prefix}ALLOWED_HOSTS "
            "(comma-separated, '*' for any) if this server should answer to that name",
        )
    declared = _content_length(headers.get("content-length"))
    if declared is not None and declared > policy.max_body_bytes:
        return too_large(policy)
    method = method.upper()
    # A CORS preflight asks leave for a POST: refuse it here, as JSON, for a foreign origin.
    preflight = method == "OPTIONS" and "access-control-request-method" in headers
    if method in SAFE_METHODS and not preflight:
        return None
    return _check_origin(policy, headers)


def _check_origin(policy: EdgePolicy, headers: dict[str, str]) -> EdgeRefusal | None:
    origin = headers.get("origin")
    if origin is None:
        return None  # not a browser (curl, SDKs): nothing cross-site to defend against
    if same_origin(origin, headers.get("host")):
        return None
    normalized = normalize_origin(origin)
    if ANY not in policy.cors_origins and normalized not in policy.cors_origins:
        return EdgeRefusal(
            403,
            f"cross-origin request from {origin[:200]!r} refused: add that origin to "
            f"{policy.env_prefix}CORS_ORIGINS to let its pages call this server",
        )
    has_body = "content-length" in headers or "transfer-encoding" in headers
    if has_body and not is_json(headers.get("content-type")):
        return EdgeRefusal(415, "a cross-origin request must send its body as application/json")
    return None


def too_large(policy: EdgePolicy) -> EdgeRefusal:
    return EdgeRefusal(
        413,
        f"request body is over this server's limit of {policy.max_body_bytes} bytes "
        f"({policy.env_prefix}MAX_BODY_BYTES); prompts are at most 2,000 characters",
    )


def _content_length(value: str | None) -> int | None:
    """The declared length; None when absent or not a number (the HTTP parser refuses those)."""
    if value is None or not value.strip().isdigit():
        return None
    return int(value)

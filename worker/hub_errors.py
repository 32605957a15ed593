"""Hub failures of the worker's downloads as domain errors (used by :mod:`loraplex.worker.fetch`).

:func:`hub_errors` names what was being fetched and never the token: 401 without a token for
gated/private repos, 403 for a refused token, 404 for a missing repo/revision/file, 502 when the
Hub answers an error or cannot be reached.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from loraplex.shared.errors import (
    Forbidden,
    LoraplexError,
    NotFound,
    Unauthorized,
    UpstreamFailed,
)

try:  # huggingface_hub 2.x talks through httpx2; 1.x through httpx
    from httpx2 import HTTPError as HubTransportError
except ImportError:  # pragma: no cover - depends on the installed huggingface_hub
    from httpx import HTTPError as HubTransportError


@contextmanager
def hub_errors(what: str, token: str | None) -> Iterator[None]:
    """Turn huggingface_hub failures into domain errors that name ``what`` (never the token)."""
    try:
        yield
    except GatedRepoError as exc:
        raise _gated(what, token, _status(exc)) from None
    except RepositoryNotFoundError as exc:
        if _status(exc) == 403:
            raise Forbidden(f"{what}: the Hub refused access with the given token") from None
        if _status(exc) == 401 and token is None:  # the Hub's answer for private, no token
            raise Unauthorized(
                f"{what} was not found without a token; if it is private, send a Hub token "
                "that can read it (Authorization: Bearer)"
            ) from None
        raise NotFound(
            f"{what} not found on the Hub (or private and not readable with the given token)"
        ) from None
    except RevisionNotFoundError:
        raise NotFound(f"{what}: no such revision on the Hub") from None
    except RemoteEntryNotFoundError:
        raise NotFound(f"{what}: the weight file is gone from the Hub") from None
    except HfHubHTTPError as exc:
        status = _status(exc)
        if status in (401, 403):
            raise _gated(what, token, status) from None
        raise UpstreamFailed(f"{what}: the Hub answered {status}; retry later") from None
    except (HubTransportError, LocalEntryNotFoundError) as exc:
        raise UpstreamFailed(f"{what}: the Hub is unreachable ({type(exc).__name__})") from None


def _status(exc: HfHubHTTPError) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _gated(what: str, token: str | None, status: int | None) -> LoraplexError:
    if token is None and status != 403:
        return Unauthorized(
            f"{what} is gated or private: send a Hub token with access "
            "(Authorization: Bearer) or set HF_TOKEN on the worker"
        )
    return Forbidden(f"{what} is gated and the Hub refused the token; request access first")

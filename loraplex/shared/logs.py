"""Log setup shared by every entry point: readable lines, or one JSON object per line.

User prompts never reach a log: diffusers' pipelines warn "The following part of your input
was truncated because CLIP can only handle sequences up to 77 tokens: <the rest of the
prompt>" on every long prompt (~8 KB per request at the 2,000-character limit). The text is
replaced where records are made (:func:`redact_prompt_echoes`), because no filter placed on a
handler or logger sees them all: diffusers and transformers log to handlers of their own with
``propagate = False`` (never reaching the root handler), and a filter on a parent logger does
not apply to records of its child loggers (each pipeline module logs under its own name).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Final

# Loggers of the libraries that echo prompts, and the phrase of those warnings (all of
# diffusers' variants: CLIP, T5, Gemma, CLAP, `max_sequence_length`).
_ECHOING_LIBRARIES: Final = ("diffusers", "transformers")
_ECHO_PHRASE: Final = "input was truncated"
REDACTED_TRUNCATION: Final = (
    "a prompt was longer than the text encoder's token limit and was truncated to it "
    "(the prompt is not logged)"
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg (and exc when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class _RedactingFactory:
    """A LogRecord factory that replaces prompt echoes of :data:`_ECHOING_LIBRARIES` and
    otherwise builds records as the factory it wraps does."""

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = self.wrapped(*args, **kwargs)
        if record.name.partition(".")[0] in _ECHOING_LIBRARIES and _echoes_prompt(record):
            record.msg, record.args = REDACTED_TRUNCATION, ()
        return record


def _echoes_prompt(record: logging.LogRecord) -> bool:
    msg = record.msg if isinstance(record.msg, str) else ""
    return _ECHO_PHRASE in msg.lower()


def redact_prompt_echoes() -> None:
    """Install the redacting record factory (idempotent; process-wide, as logging is)."""
    current = logging.getLogRecordFactory()
    if not isinstance(current, _RedactingFactory):
        logging.setLogRecordFactory(_RedactingFactory(current))


def configure_logging(level: str = "INFO", *, json_lines: bool = False) -> None:
    redact_prompt_echoes()
    handler = logging.StreamHandler()
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # One line per outgoing HTTP call (Hub downloads, state polls) drowns the lines that matter.
    for chatty in ("httpx", "httpx2", "httpcore", "huggingface_hub", "uvicorn.access"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))

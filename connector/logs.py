"""Structured logging: one JSON object per line on stdout, for our events and for libraries.

structlog renders both its own events and standard-library records (httpx, APScheduler,
urllib3) through one ProcessorFormatter, so every line has the same keys and carries the
context bound with ``structlog.contextvars`` (``cycle_id``, ``mode``, ``pipeline``).

Two guards keep secrets out of the output: values under secret-looking keys are masked,
and every string is scrubbed of the secret values registered at start-up. Tracebacks are
rendered without local variables, which can hold credentials.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import stamina.instrumentation
import structlog
from structlog.tracebacks import ExceptionDictTransformer

REDACTED = "[REDACTED]"
_SECRET_KEY_PARTS = ("password", "secret", "token", "api_key", "apikey", "private_key", "authorization", "assertion")
# APScheduler logs every run of the job at INFO; the cycle's own lines say more.
_NOISY_LIBRARIES = ("httpx", "httpcore", "urllib3", "requests", "simple_salesforce", "apscheduler.scheduler", "apscheduler.executors")

_secret_values: set[str] = set()
_secret_lock = threading.Lock()


def register_secrets(values: Iterable[str | None]) -> None:
    """Remember secret values so that any log line containing one is scrubbed."""
    with _secret_lock:
        # Very short values would scrub ordinary words; real keys and tokens are long.
        _secret_values.update(value for value in values if value and len(value) >= 6)


def _scrub(value: Any, secrets: frozenset[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {key: _redact_item(key, item, secrets) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(item, secrets) for item in value]
    return value


def _redact_item(key: Any, value: Any, secrets: frozenset[str]) -> Any:
    if isinstance(key, str) and any(part in key.lower() for part in _SECRET_KEY_PARTS) and value is not None:
        return REDACTED
    return _scrub(value, secrets)


def redact_secrets(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask secret-named keys and registered secret values."""
    with _secret_lock:
        secrets = frozenset(_secret_values)
    for key in list(event_dict):
        event_dict[key] = _redact_item(key, event_dict[key], secrets)
    return event_dict


def _leading_keys(event_key: str) -> Any:
    """structlog processor: put timestamp, level, event name and logger first, for people reading raw lines."""
    order = ("timestamp", "level", event_key, "logger")

    def reorder(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        ordered = {key: event_dict[key] for key in order if key in event_dict}
        ordered.update((key, value) for key, value in event_dict.items() if key not in ordered)
        return ordered

    return reorder


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]


def configure_logging(
    level: str = "INFO",
    fmt: str = "auto",
    event_key: str = "event",
    stream: TextIO | None = None,
) -> None:
    """Send every log record to ``stream`` (stdout by default) as JSON or console text.

    ``fmt`` "auto" picks console text when the stream is a terminal, else JSON.

    ``event_key`` renames structlog's ``event`` key, for Elastic's ECS mapping, in which a
    top-level string ``event`` collides with the ``event.*`` object.
    """
    output = sys.stdout if stream is None else stream
    if fmt == "auto":
        # People at a terminal get readable lines; pipes, files and log shippers get JSON.
        fmt = "console" if output.isatty() else "json"
    final: list[Any] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if fmt == "console":
        final += [redact_secrets, structlog.dev.ConsoleRenderer(colors=output.isatty())]
    else:
        if event_key != "event":
            final.append(structlog.processors.EventRenamer(event_key))
        # Render the traceback before redacting, so exception messages are scrubbed too.
        final.append(structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)))
        final += [redact_secrets, _leading_keys(event_key), structlog.processors.JSONRenderer(ensure_ascii=False)]

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=final,
    )
    handler = logging.StreamHandler(output)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))

    # stamina logs a warning per retry through structlog by default; the Charles sink logs
    # its own charles.upsert_retrying lines at debug, with the record id.
    stamina.instrumentation.set_on_retry_hooks([])

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)

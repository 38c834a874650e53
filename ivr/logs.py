"""Logging set-up for every Décroché process.

Why it looks like this:

* A controller beside a PBX is debugged after the fact, from logs, often by
  someone answering a complaint ("I waited 20 minutes and was cut off").
  One JSON object per line, with an ISO-8601 UTC timestamp and the level,
  can be grepped, shipped and joined with Asterisk's own logs.
* Every line written while a call is being handled should carry that call's
  Asterisk ``uniqueid``. The code handling a call binds it once with
  ``structlog.contextvars.bind_contextvars(uniqueid=...)``; since each call
  runs in its own asyncio task (which copies the context), the binding
  follows the call and nothing else.
* Libraries (aiohttp, asyncio, redis) log through the standard ``logging``
  module; their records go through the same renderer, with the same bound
  context, so there is a single format to read.
* A person at a terminal wants something readable, so when stderr is a TTY
  the default is structlog's ``ConsoleRenderer`` instead of JSON.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from structlog.typing import Processor

__all__ = ["configure_logging", "get_logger"]

# The handler we installed on the root logger, so that a second call replaces
# it instead of adding another one (which would print every line twice).
_handler: logging.Handler | None = None
_configured_with: tuple[int, bool] | None = None


def _level_number(level: str | int) -> int:
    """Accept ``"info"``, ``"INFO"`` or ``logging.INFO``; refuse anything else loudly."""
    if isinstance(level, int):
        return level
    mapping = logging.getLevelNamesMapping()
    try:
        return mapping[level.upper()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; expected one of {sorted(mapping)}") from None


def _shared_processors() -> list[Processor]:
    """Steps applied to structlog calls and stdlib records alike, before rendering."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]


def configure_logging(level: str | int = "INFO", json: bool | None = None) -> None:
    """Route structlog and stdlib logging to stderr, once.

    ``json=None`` picks JSON lines unless stderr is a terminal. Calling this
    again with the same arguments does nothing; with other arguments it
    replaces the previous set-up (never stacking handlers), which lets a
    command-line ``--log-level`` override an earlier default.
    """
    global _handler, _configured_with

    level_no = _level_number(level)
    if json is None:
        json = not sys.stderr.isatty()
    if _configured_with == (level_no, json) and _handler is not None:
        return

    shared = _shared_processors()
    # structlog's own pipeline stops before rendering and hands the event dict
    # to stdlib logging, so that level filtering and output happen in exactly
    # one place for both kinds of loggers.
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: a module-level logger used before configure_logging()
        # (at import time, say) would otherwise keep structlog's defaults forever.
        cache_logger_on_first_use=False,
    )

    renderer: list[Processor]
    if json:
        renderer = [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ]
    else:
        # ConsoleRenderer formats exceptions itself (and prettier than format_exc_info).
        renderer = [structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(level_no)
    _handler = handler
    _configured_with = (level_no, json)


def get_logger(name: str | None = None, **initial_values: Any) -> structlog.stdlib.BoundLogger:
    """A typed structlog logger; use it after (or before) ``configure_logging``."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name, **initial_values)
    return logger

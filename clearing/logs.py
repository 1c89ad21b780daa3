"""Structured logs: JSON lines in production, readable lines on a terminal.

Every line of a call carries its request id (``clearing.server.observe``).
A card number never appears whole: any field that names a card keeps only
its last four digits, enough to match a dispute, too few to use.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any

import structlog

CARD_FIELDS = frozenset({"card_id", "old_card_id", "new_card_id", "card"})
CARD_DIGITS_SHOWN = 4
LOG_FORMAT_ENV = "CLEARING_LOG_FORMAT"  # "json" or "console"; default: console on a terminal
_LONG_NUMBER = re.compile(r"\d{8,}")  # card numbers inside free text (messages, details)


def mask_card(value: Any) -> str:
    text = str(value)
    return "*" * max(0, len(text) - CARD_DIGITS_SHOWN) + text[-CARD_DIGITS_SHOWN:]


def mask_cards(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: card fields masked, long numbers in text masked too."""
    for key, value in event.items():
        if key in CARD_FIELDS:
            event[key] = mask_card(value)
        elif key != "request_id" and isinstance(value, str) and _LONG_NUMBER.search(value):
            event[key] = _LONG_NUMBER.sub(lambda m: mask_card(m.group()), value)
    return event


def _json_wanted() -> bool:
    chosen = os.environ.get(LOG_FORMAT_ENV, "")
    return chosen == "json" or (chosen != "console" and not sys.stderr.isatty())


def configure_logging(level: int = logging.INFO) -> None:
    renderer = (
        structlog.processors.JSONRenderer()
        if _json_wanted()
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            mask_cards,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )

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
from collections.abc import MutableMapping
from typing import Any

import structlog

CARD_FIELDS = frozenset({"card_id", "old_card_id", "new_card_id", "card"})
CARD_DIGITS_SHOWN = 4
LOG_FORMAT_ENV = "CLEARING_LOG_FORMAT"  # "json" or "console"; default: console on a terminal
# Card numbers inside free text (messages, details): any number right after the
# word "card", and any run of digits as long as a card number.
_CARD_NUMBER = re.compile(r"(?i)(?<=card)(\D{0,3})(\d{5,})|\d{12,}")


def mask_card(value: Any) -> str:
    text = str(value)
    return "*" * max(0, len(text) - CARD_DIGITS_SHOWN) + text[-CARD_DIGITS_SHOWN:]


def _mask_text(text: str) -> str:
    def one(match: re.Match) -> str:
        if match.group(2) is not None:
            return match.group(1) + mask_card(match.group(2))
        return mask_card(match.group())

    return _CARD_NUMBER.sub(one, text)


def _mask(key: str, value: Any) -> Any:
    if key in CARD_FIELDS and isinstance(value, int | str):
        return mask_card(value)
    if isinstance(value, str) and key != "request_id":
        return _mask_text(value)
    if isinstance(value, list | tuple):
        return [_mask(key, item) for item in value]
    if isinstance(value, dict):
        return {k: _mask(str(k), v) for k, v in value.items()}
    return value


def mask_cards(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: card fields masked, card numbers in text masked too."""
    for key, value in list(event.items()):
        event[key] = _mask(key, value)
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

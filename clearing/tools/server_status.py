"""`clearing status`: a running server's health and position, for operators.

Reads gRPC health and the server's /metrics; needs no token. Counts and fen are
integers: they are read and printed exactly, never through a float's rounding.
Money is printed in CNY (yuan with two decimals, from integer fen); ``--json`` gives
the figures as integers (``float_fen``) instead.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.request
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

STATUS_TIMEOUT_SECONDS = 5.0
FLOAT_EXACT = 2**53  # every integer up to this is exact in a float (a double)


def health(target: str, credentials: grpc.ChannelCredentials | None = None) -> str:
    """SERVING, NOT_SERVING, or why it could not be asked."""
    chan = (
        grpc.secure_channel(target, credentials)
        if credentials is not None
        else grpc.insecure_channel(target)
    )
    with chan:
        try:
            reply = health_pb2_grpc.HealthStub(chan).Check(
                health_pb2.HealthCheckRequest(), timeout=STATUS_TIMEOUT_SECONDS
            )
        except grpc.RpcError as exc:
            return f"UNREACHABLE ({exc.code().name})"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def scrape(url: str) -> dict[str, int | float]:
    """The samples of a /metrics page: ``name`` or ``name{label=value,...}`` -> value."""
    with urllib.request.urlopen(url, timeout=STATUS_TIMEOUT_SECONDS) as response:
        return parse_samples(response.read().decode())


def parse_samples(text: str) -> dict[str, int | float]:
    """``scrape`` of a page's text. An integer is an ``int``: exact as written, or a float's
    value where floats hold integers exactly (prometheus_client writes 1234567 as
    ``1234567.0`` and 12345678 as ``1.2345678e+07``). Beyond that a float stays a float."""
    samples: dict[str, int | float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            value = sample.value  # the parser gives an int for an integer as written
            if isinstance(value, float) and value.is_integer() and abs(value) <= FLOAT_EXACT:
                value = int(value)
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = value
    return samples


def count_text(value: int | float) -> str:
    """An integer as such; a float beyond exact integers marked ``~`` (never ``1.8e+19``)."""
    if isinstance(value, int):
        return str(value)
    if value.is_integer():
        return f"~{int(value)}" if abs(value) > FLOAT_EXACT else str(int(value))
    return f"{value:g}"


def _cny(fen: int | float) -> str:
    """Fen as CNY with two decimals (the word every CLI and report output uses)."""
    if not isinstance(fen, int):
        return f"{fen / 100:,.2f}"
    whole, cents = divmod(abs(fen), 100)
    return f"{'-' if fen < 0 else ''}{whole:,}.{cents:02d}"


def _age(unix_s: float, never: str) -> str:
    if not unix_s:
        return never
    return f"{time.time() - unix_s:,.0f} s ago"


def _utc(unix_s: float) -> str | None:
    """An instant as RFC 3339 UTC, None for 0 (never)."""
    if not unix_s:
        return None
    return dt.datetime.fromtimestamp(unix_s, dt.UTC).isoformat(timespec="seconds")


def facts(target: str, metrics_url: str, credentials=None) -> dict[str, Any]:
    """What `clearing status --json` prints: integers as integers (fen, counts), instants
    as RFC 3339 UTC, null for "never" or "unknown"; ``serving`` decides the exit code."""
    state = health(target, credentials)
    found: dict[str, Any] = {
        "health": state,
        "serving": state == "SERVING",
        "target": target,
        "metrics_url": metrics_url,
    }
    try:
        m = scrape(metrics_url)
    except OSError as exc:
        return {**found, "metrics_error": str(exc)}
    day = m.get("clearing_settlement_last_business_day_timestamp_seconds", 0)
    settled = m.get("clearing_settlement_last_success_timestamp_seconds", 0)
    return {
        **found,
        "metrics_error": None,
        "journal": {
            "last_seq": m.get("clearing_journal_last_seq", 0),
            "size_bytes": m.get("clearing_journal_size_bytes", 0),
            "map_size_bytes": m.get("clearing_journal_map_size_bytes"),
        },
        "last_settlement": {
            # Local midnight + 12 h is the business date's noon: its date in any zone.
            "business_date": dt.datetime.fromtimestamp(day + 43_200, dt.UTC).date().isoformat()
            if day
            else None,
            "settled_at": _utc(settled),
        },
        "deny_list_version": m.get("clearing_deny_list_version", 0),
        "last_checkpoint_at": _utc(m.get("clearing_checkpoint_last_success_timestamp_seconds", 0)),
        "float_fen": m.get("clearing_float_fen", 0),
        "terminal_gap_taps": {
            k.split("=")[1][:-1]: v for k, v in m.items() if k.startswith("clearing_terminal_gap")
        },
    }


def render(f: dict[str, Any]) -> str:
    """``facts`` as the lines `clearing status` prints."""
    lines = [f"health            {f['health']} ({f['target']})"]
    if f["metrics_error"] is not None:
        lines.append(f"metrics           unreachable at {f['metrics_url']}: {f['metrics_error']}")
        return "\n".join(lines)
    journal, settlement = f["journal"], f["last_settlement"]
    size, room = journal["size_bytes"], journal["map_size_bytes"]
    settled = settlement["settled_at"]
    settled_s = dt.datetime.fromisoformat(settled).timestamp() if settled else 0
    checkpoint = f["last_checkpoint_at"]
    checkpoint_s = dt.datetime.fromisoformat(checkpoint).timestamp() if checkpoint else 0
    lines += [
        f"journal           entry {int(journal['last_seq']):,}, "
        f"{size / 2**20:,.1f} MiB of a {room / 2**20 if room else 0:,.0f} MiB map",
        "last settlement   "
        + (
            f"{settlement['business_date']}, settled {_age(settled_s, 'never')}"
            if settlement["business_date"]
            else "none yet"
        ),
        f"deny list         version {int(f['deny_list_version'])}",
        f"last checkpoint   {_age(checkpoint_s, 'never since the start')}",
        f"float             {_cny(f['float_fen'])} CNY",
        "terminal gaps     "
        + (", ".join(f"{c} {count_text(n)}" for c, n in f["terminal_gap_taps"].items()) or "none"),
    ]
    return "\n".join(lines)


def report(target: str, metrics_url: str, credentials=None) -> tuple[str, bool]:
    """(the text to print, whether the server is serving)."""
    f = facts(target, metrics_url, credentials)
    return render(f), f["serving"]


def report_json(target: str, metrics_url: str, credentials=None) -> tuple[str, bool]:
    """(``facts`` as one JSON object, whether the server is serving)."""
    f = facts(target, metrics_url, credentials)
    return json.dumps(f, ensure_ascii=False, sort_keys=True), f["serving"]

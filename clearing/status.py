"""`clearing status`: a running server's health and position, for operators.

Reads gRPC health and the server's /metrics; needs no token. Counts and fen are
integers: they are read and printed exactly, never through a float's rounding.
"""

from __future__ import annotations

import datetime as dt
import time
import urllib.request

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


def _yuan(fen: int | float) -> str:
    if not isinstance(fen, int):
        return f"{fen / 100:,.2f}"
    whole, cents = divmod(abs(fen), 100)
    return f"{'-' if fen < 0 else ''}{whole:,}.{cents:02d}"


def _age(unix_s: float) -> str:
    if not unix_s:
        return "never since the start"
    return f"{time.time() - unix_s:,.0f} s ago"


def report(target: str, metrics_url: str, credentials=None) -> tuple[str, bool]:
    """(the text to print, whether the server is serving)."""
    state = health(target, credentials)
    lines = [f"health            {state} ({target})"]
    try:
        m = scrape(metrics_url)
    except OSError as exc:
        lines.append(f"metrics           unreachable at {metrics_url}: {exc}")
        return "\n".join(lines), state == "SERVING"
    size, room = m.get("clearing_journal_size_bytes", 0), m.get("clearing_journal_map_size_bytes")
    day = m.get("clearing_settlement_last_business_day_timestamp_seconds", 0)
    gaps = {k.split("=")[1][:-1]: v for k, v in m.items() if k.startswith("clearing_terminal_gap")}
    lines += [
        f"journal           entry {int(m.get('clearing_journal_last_seq', 0)):,}, "
        f"{size / 2**20:,.1f} MiB of a {room / 2**20 if room else 0:,.0f} MiB map",
        "last settlement   "
        + (
            f"{dt.datetime.fromtimestamp(day + 43_200, dt.UTC).date()}, settled "
            f"{_age(m.get('clearing_settlement_last_success_timestamp_seconds', 0))}"
            if day
            else "none yet"
        ),
        f"deny list         version {int(m.get('clearing_deny_list_version', 0))}",
        f"last checkpoint   {_age(m.get('clearing_checkpoint_last_success_timestamp_seconds', 0))}",
        f"float             {_yuan(m.get('clearing_float_fen', 0))} yuan",
        "terminal gaps     "
        + (", ".join(f"{c} {count_text(n)}" for c, n in gaps.items()) or "none"),
    ]
    return "\n".join(lines), state == "SERVING"

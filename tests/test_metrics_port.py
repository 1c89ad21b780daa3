"""The /metrics port faces anyone who can reach it (issue 12, defect 3): an
oversized request line, garbage, half requests and clients that vanish get an
error answer or nothing, never a traceback in the log, and scrapes go on."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import struct
import time
import urllib.error
import urllib.request

import pytest

from clearing.limits import METRICS_CONNECTIONS_MAX, METRICS_REQUEST_LINE_BYTES_MAX
from clearing.server.app import Server
from clearing.tools.client import free_port
from clearing.tools.server_status import scrape
from loadgen.soak.common import soak_city
from loadgen.soak.server import ServerProcess

CONNECT_SECONDS_MAX = 10.0  # the metrics port opens just before the journal's replay


def _connect(target: str) -> socket.socket:
    host, _, port = target.rpartition(":")
    deadline = time.monotonic() + CONNECT_SECONDS_MAX
    while True:
        try:
            return socket.create_connection((host, int(port)), timeout=5)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _send_and_vanish(target: str, data: bytes, *, reset: bool) -> None:
    """Send ``data`` and disconnect: with a RST (``reset``) or a plain close."""
    sock = _connect(target)
    with contextlib.suppress(OSError):  # the server may have answered and closed: fine too
        sock.sendall(data)
    if reset:  # SO_LINGER 0: close() sends RST, the server's next write fails
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _answer_to(target: str, data: bytes) -> bytes:
    """Send ``data``, half-close, read what comes back (b"" when the server just closed)."""
    sock = _connect(target)
    try:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:  # closed unanswered: a reset, or ENOTCONN when it closed first
        return b""
    finally:
        sock.close()


def _hostile_clients(target: str) -> dict[str, bytes]:
    long_line = b"GET /" + b"a" * 200_000 + b" HTTP/1.1\r\n"
    for reset in (True, False):
        _send_and_vanish(target, long_line, reset=reset)
        _send_and_vanish(target, bytes(range(256)) * 40 + b"\r\n\r\n", reset=reset)
        _send_and_vanish(target, b"GET /metrics HTTP/1.1\r\nHost: x", reset=reset)
        _send_and_vanish(target, b"GET /metrics HTTP/1.1\r\n\r\n", reset=reset)  # reply unread
    return {
        # One byte over the bound, and no more: nothing is left unread to turn the
        # server's close into a reset that could beat its answer to the client.
        "long": _answer_to(target, b"GET /" + b"a" * (METRICS_REQUEST_LINE_BYTES_MAX - 4)),
        "garbage": _answer_to(target, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n"),
        "half": _answer_to(target, b"GET /metrics HT"),
    }


def _get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.headers["Content-Type"], response.read()


async def test_hostile_metrics_clients_leave_no_traceback_and_scrapes_go_on(tmp_path):
    root = tmp_path / "metrics"
    server = ServerProcess(
        str(root), soak_city(str(root / "data")), env={"CLEARING_LOG_FORMAT": "json"}
    )
    await server.start()
    try:
        target = server.metrics_target
        # A client holding a half request open does not stop anyone else's scrape.
        idle = await asyncio.to_thread(_connect, target)
        idle.sendall(b"GET /metrics HTTP/1.1\r\n")
        answers = await asyncio.to_thread(_hostile_clients, target)
        status, content_type, body = await asyncio.to_thread(_get, f"http://{target}/metrics")
        samples = await asyncio.to_thread(scrape, f"http://{target}/metrics")
        ready = await asyncio.to_thread(_status_of, f"http://{target}/readyz")
        idle.close()
    finally:
        code = server.terminate()
    assert code == 0, server.log_tail()
    with open(server.log_path, encoding="utf-8", errors="replace") as f:
        log = f.read()
    assert "Traceback" not in log, log[-3_000:]
    assert "ConnectionResetError" not in log and "BrokenPipeError" not in log, log[-3_000:]
    for line in log.splitlines():  # the log stays JSON lines
        json.loads(line)
    # An error page (with a status line when the request line named an HTTP version).
    assert b"Error code: 414" in answers["long"], answers["long"][:300]
    assert b"Error code: 400" in answers["garbage"], answers["garbage"][:300]
    assert b"Error code: 400" in answers["half"], answers["half"][:300]
    assert status == 200
    assert content_type.startswith("text/plain; version=")
    assert b"clearing_serving 1.0" in body
    assert samples["clearing_serving"] == 1.0 and "clearing_journal_last_seq" in samples
    assert ready == (200, "ready: acknowledging work\n")


def test_idle_connections_are_bounded_and_dropped_then_scrapes_go_on(monkeypatch, capfd):
    """The metrics server alone, as the product starts it: past METRICS_CONNECTIONS_MAX
    open connections a new one is closed unanswered; a silent client is dropped after
    its timeout (shortened here) and the scrape after it is the usual page."""
    from clearing.runtime import metrics as module

    monkeypatch.setattr(module._MetricsRequest, "timeout", 2.0)
    metrics = module.Metrics()
    target = f"127.0.0.1:{free_port()}"
    metrics.serve_http(target)
    try:
        idle = [_connect(target) for _ in range(METRICS_CONNECTIONS_MAX)]
        for sock in idle:
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")
        time.sleep(0.1)  # all accepted, each holding its thread
        assert _answer_to(target, b"GET /metrics HTTP/1.1\r\n\r\n") == b""  # no slot left
        for sock in idle:  # each dropped at its timeout, unanswered
            sock.settimeout(5)
            assert sock.recv(100) == b""
            sock.close()
        request = urllib.request.Request(
            f"http://{target}/metrics?name[]=clearing_serving", headers={"Accept-Encoding": "gzip"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
            assert response.headers["Content-Encoding"] == "gzip"
            page = gzip.decompress(response.read()).decode()
        assert "clearing_serving 0.0" in page and "clearing_taps" not in page
    finally:
        metrics.stop_http()
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err, out + err


def test_a_client_trickling_its_request_is_dropped_at_the_deadline(monkeypatch):
    """The time bound covers the whole request, not each read (a byte every second
    would otherwise hold a connection slot for ever)."""
    from clearing.runtime import metrics as module

    monkeypatch.setattr(module._MetricsRequest, "timeout", 2.0)
    metrics = module.Metrics()
    target = f"127.0.0.1:{free_port()}"
    metrics.serve_http(target)
    try:
        sock = _connect(target)
        started = time.monotonic()
        dropped = False
        for byte in b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 20:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                dropped = True
                break
            sock.settimeout(0.9)
            try:
                if sock.recv(100) == b"":
                    dropped = True
                    break
            except TimeoutError:
                pass  # still open: keep trickling
        assert dropped and time.monotonic() - started < 6.0
        sock.close()
    finally:
        metrics.stop_http()


def _status_of(url: str) -> tuple[int, str]:
    """(HTTP status, body) of a GET, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode()


async def test_health_and_readiness_follow_the_server_from_replay_to_stop(city):
    """/healthz answers from before the replay; /readyz and /metrics only once the
    journal is replayed and the server serves; /readyz turns 503 as it stops.
    Every other path is 404, not the metrics page."""
    server = Server(city)
    target = f"127.0.0.1:{free_port()}"
    server.serve_http(target)
    try:
        before = {p: _status_of(f"http://{target}{p}") for p in ("/healthz", "/readyz", "/metrics")}
        await server.start("127.0.0.1:0")
        serving = {
            p: _status_of(f"http://{target}{p}") for p in ("/healthz", "/readyz", "/metrics")
        }
        unknown = {
            p: _status_of(f"http://{target}{p}") for p in ("/", "/metrics/x", "/favicon.ico")
        }
        server.service.serving = False  # what stop() does first, before the port closes
        stopping = _status_of(f"http://{target}/readyz")
    finally:
        await server.stop(0.5)
    assert before["/healthz"][0] == 200
    assert before["/readyz"] == (503, "not ready: starting: the journal is being replayed\n")
    assert before["/metrics"][0] == 503
    assert serving["/healthz"][0] == 200 and serving["/readyz"][0] == 200
    assert serving["/metrics"][0] == 200 and "clearing_serving 1.0" in serving["/metrics"][1]
    assert all(status == 404 for status, _ in unknown.values()), unknown
    assert "clearing_" not in "".join(body for _, body in unknown.values())
    assert stopping == (503, "not ready: not serving (stopping)\n")
    with pytest.raises(OSError):  # closed with the server
        _status_of(f"http://{target}/healthz")


async def test_readiness_reports_a_storage_failure(city):
    """A journal that failed (disk full, map full) makes /readyz 503 with the reason
    while the process, and /healthz, stay up."""
    server = Server(city)
    target = f"127.0.0.1:{free_port()}"
    server.serve_http(target)
    try:
        await server.start("127.0.0.1:0")
        server.service.journal.failure = "MDB_MAP_FULL: the map is full"  # as a failed commit
        ready = _status_of(f"http://{target}/readyz")
        healthy = _status_of(f"http://{target}/healthz")
    finally:
        server.service.journal.failure = None
        await server.stop(0.5)
    assert ready[0] == 503 and "storage failure: MDB_MAP_FULL" in ready[1]
    assert healthy[0] == 200

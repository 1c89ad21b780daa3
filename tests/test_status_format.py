"""`clearing status` prints integer figures from /metrics as integers, exactly (issue 12).

A served /metrics page (a fixed text on a loopback HTTP server) stands in for the engine's.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from clearing.tools import server_status

PAGE = """\
# HELP clearing_terminal_gap_taps Taps missing below each terminal's highest sequence number
# TYPE clearing_terminal_gap_taps gauge
clearing_terminal_gap_taps{terminal_class="VALIDATOR"} 18446744073709551615
clearing_terminal_gap_taps{terminal_class="POS"} 9.007199254740991e+15
clearing_terminal_gap_taps{terminal_class="BILLING"} 1.8446744073709552e+19
# HELP clearing_journal_last_seq Last committed journal entry
# TYPE clearing_journal_last_seq gauge
clearing_journal_last_seq 1.234567e+06
# HELP clearing_deny_list_version Deny-list version
# TYPE clearing_deny_list_version gauge
clearing_deny_list_version 9007199254740993
# HELP clearing_float_fen Σ card balances
# TYPE clearing_float_fen gauge
clearing_float_fen 4611686018427387905
# HELP clearing_taps_total Taps answered
# TYPE clearing_taps_total counter
clearing_taps_total{status="OK",terminal_class="VALIDATOR"} 7.0
# HELP clearing_checkpoint_last_duration_seconds From the fork to the stored checkpoint
# TYPE clearing_checkpoint_last_duration_seconds gauge
clearing_checkpoint_last_duration_seconds 0.25
"""


@pytest.fixture
def metrics_url() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = PAGE.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def test_scrape_keeps_integers_exact(metrics_url):
    samples = server_status.scrape(metrics_url)
    gaps = samples["clearing_terminal_gap_taps{terminal_class=VALIDATOR}"]
    assert gaps == 2**64 - 1 and isinstance(gaps, int)  # not 1.8446744073709552e+19
    assert samples["clearing_deny_list_version"] == 2**53 + 1  # a float would hold 2**53
    assert samples["clearing_terminal_gap_taps{terminal_class=POS}"] == 2**53 - 1
    assert samples["clearing_journal_last_seq"] == 1_234_567
    assert samples["clearing_taps_total{status=OK,terminal_class=VALIDATOR}"] == 7
    exact = [k for k in samples if "duration" not in k and "BILLING" not in k]
    assert all(isinstance(samples[k], int) for k in exact), samples  # integers are ints
    assert samples["clearing_float_fen"] == 2**62 + 1
    assert samples["clearing_checkpoint_last_duration_seconds"] == 0.25


def test_status_prints_a_large_integer_gauge_exactly(metrics_url, monkeypatch):
    monkeypatch.setattr(server_status, "health", lambda target, credentials=None: "SERVING")
    text, serving = server_status.report("127.0.0.1:1", metrics_url)
    assert serving
    gaps_line = next(line for line in text.splitlines() if line.startswith("terminal gaps"))
    assert "VALIDATOR 18446744073709551615" in gaps_line, gaps_line
    assert "POS 9007199254740991" in gaps_line, gaps_line
    # A float beyond 2**53 on the page: its integer, marked as not exact.
    assert "BILLING ~18446744073709551616" in gaps_line, gaps_line
    assert "e+" not in text, text
    assert "entry 1,234,567," in text
    assert "version 9007199254740993" in text
    assert "46,116,860,184,273,879.05 CNY" in text  # money is fen: never through a float


def test_a_float_beyond_exact_integers_is_marked_approximate():
    samples = server_status.parse_samples(
        "# TYPE clearing_terminal_gap_taps gauge\n"
        'clearing_terminal_gap_taps{terminal_class="VALIDATOR"} 1.8446744073709552e+19\n'
    )
    (value,) = samples.values()
    assert isinstance(value, float)  # 2**64 exactly, but the count it stood for is lost
    assert server_status.count_text(value) == "~18446744073709551616"
    assert (
        server_status.count_text(12) == "12"
        and server_status.count_text(2**64 - 1) == "18446744073709551615"
    )

"""The `clearing` command line (issue 13, point 16): --version, status --json, exit
codes that tell a usage error from a failure, help text printed as written, CNY."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import subprocess
import sys

from clearing.tools.cli import EXIT_FAILED, EXIT_NOT_SERVING, EXIT_USAGE
from clearing.tools.client import free_port


def _cli(*args: str) -> subprocess.CompletedProcess:
    """The installed command as an operator runs it (a process, its own exit status)."""
    return subprocess.run(
        [sys.executable, "-m", "clearing", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )


def test_version_is_the_package_version():
    run = _cli("--version")
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"clearing {importlib.metadata.version('clearing')}\n"


def test_exit_codes_are_distinct_and_documented(tmp_path):
    assert len({0, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_SERVING}) == 4
    assert EXIT_FAILED == 2  # issue 12: a damaged journal is refused with exit 2
    assert EXIT_USAGE == 64  # EX_USAGE, remapped from click's 2
    usage = [
        _cli("no-such-command"),
        _cli("serve", "--no-such-option"),
        _cli("settle"),  # --date is required
        _cli("journal", "backup"),  # the target argument is missing
    ]
    assert [r.returncode for r in usage] == [EXIT_USAGE] * 4, [r.stderr for r in usage]
    failed = _cli("journal", "verify", "--data-dir", str(tmp_path / "nowhere"))
    assert failed.returncode == EXIT_FAILED, failed.stderr
    (line,) = failed.stderr.strip().splitlines()
    assert line.startswith("error: ")
    helped = _cli("--help")
    for code in (EXIT_FAILED, EXIT_USAGE, EXIT_NOT_SERVING):
        assert f"\n{code:>5}  " in helped.stdout, helped.stdout  # the help documents each


def test_help_keeps_square_brackets():
    """rich markup would take "[server]" for a tag and print "override  data_dir"."""
    run = _cli("serve", "--help")
    assert run.returncode == 0, run.stderr
    for option in ("data_dir", "listen", "metrics_listen"):
        assert f"override [server] {option}" in run.stdout, run.stdout


def test_status_of_an_unreachable_server_exits_3_in_text_and_json():
    dead = f"127.0.0.1:{free_port()}"
    text = _cli("status", "--target", dead, "--metrics", f"http://{dead}/metrics")
    assert text.returncode == EXIT_NOT_SERVING and "UNREACHABLE" in text.stdout
    shown = _cli("status", "--json", "--target", dead, "--metrics", f"http://{dead}/metrics")
    assert shown.returncode == EXIT_NOT_SERVING, shown.stderr
    found = json.loads(shown.stdout)
    assert found["serving"] is False and found["health"].startswith("UNREACHABLE")
    assert found["metrics_error"] and "journal" not in found


async def test_status_json_of_a_running_server(harness):
    """A real server with its metrics port: every figure as JSON, integers exact, and
    the text form in CNY."""
    h = harness
    await h.issue(9_000_001, 1, 12_345)
    metrics = f"127.0.0.1:{free_port()}"
    h.server.serve_http(metrics)
    target = f"127.0.0.1:{h.server.port}"
    args = ["status", "--target", target, "--metrics", f"http://{metrics}/metrics"]
    shown = await asyncio.to_thread(_cli, *args, "--json")  # a process: this one logs
    text = await asyncio.to_thread(_cli, *args)
    assert shown.returncode == 0, shown.stderr
    found = json.loads(shown.stdout)
    assert found["health"] == "SERVING" and found["serving"] is True
    assert found["float_fen"] == 12_345 and isinstance(found["float_fen"], int)
    assert found["journal"]["last_seq"] == h.last_seq and found["journal"]["map_size_bytes"] > 0
    assert found["last_settlement"] == {"business_date": None, "settled_at": None}
    assert found["last_checkpoint_at"] is None  # none since the start
    assert found["deny_list_version"] >= 0 and isinstance(found["terminal_gap_taps"], dict)
    assert text.returncode == 0, text.stderr
    assert "float             123.45 CNY" in text.stdout
    assert "yuan" not in text.stdout

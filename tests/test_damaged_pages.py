"""A journal damaged at any one page: `clearing serve` and `clearing journal verify`
refuse in one line naming the page or the entry, exit 2, and leave the file as it was
(issue 12: tracebacks, SIGBUS, and a `format` key written to an unverified journal).

The journal is the issue's: a server started and stopped on a fresh demo city.
Each page in turn gets 4,080 random bytes after its header (loadgen.soak.pages runs
both commands on each copy in forked children). A page that neither of the two
snapshots LMDB keeps uses holds no data: damage there changes nothing, so there
the commands must serve and verify exactly what the undamaged journal holds.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import lmdb
import msgspec
import pytest

from clearing.errors import JournalError
from clearing.storage.journal import Journal
from clearing.tools.cli import EXIT_FAILED
from clearing.tools.client import serve_command
from loadgen.soak.pages import Outcome, damage_page

SERVE_SECONDS_MAX = 60.0
REFUSAL = re.compile(r"^error: journal (page (\d+)|entry \d+)\b[^\n]*$")
FREE_PAGES_MAX = 3  # pages neither snapshot uses, in a journal of two commits


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clearing", *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def demo_journal(tmp_path_factory) -> tuple[str, str]:
    """(config path, data directory) of a demo city started once and stopped."""
    root = tmp_path_factory.mktemp("demo-journal")
    config = str(root / "demo.toml")
    with open(config, "w") as f:
        f.write(_cli("demo-config").stdout)
    data_dir = str(root / "data")
    log_path = root / "serve.log"
    with open(log_path, "wb") as log:
        argv = serve_command("127.0.0.1:0", "127.0.0.1:0", config=config, data_dir=data_dir)
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + SERVE_SECONDS_MAX
    while b'"serving"' not in log_path.read_bytes() and time.monotonic() < deadline:
        assert proc.poll() is None, log_path.read_text()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, log_path.read_text()
    return config, data_dir


def test_every_damaged_page_is_refused_or_harmless(demo_journal, tmp_path):
    config, data_dir = demo_journal
    intact = _cli("journal", "verify", "--config", config, "--data-dir", data_dir)
    assert intact.returncode == 0 and intact.stdout.startswith("journal OK"), intact
    probe = subprocess.run(
        [sys.executable, "-m", "loadgen.soak.pages", config, data_dir, str(tmp_path)],
        capture_output=True,
        timeout=600,
    )
    assert probe.returncode == 0, probe.stderr.decode()
    outcomes = [msgspec.json.decode(line, type=Outcome) for line in probe.stdout.splitlines()]
    pages = os.path.getsize(os.path.join(data_dir, "journal", "data.mdb")) // 4096
    assert {(o.page, o.command) for o in outcomes} == {
        (page, command) for page in range(pages) for command in ("verify", "serve")
    }
    harmless: set[int] = set()
    for o in outcomes:
        where = f"page {o.page}, {o.command}"
        assert o.signal is None and not o.traceback, (where, o)
        assert not o.file_changed, f"{where}: the damaged file was written to"
        if o.exit_code == 0:  # it ran: the page held nothing (checked below)
            harmless.add(o.page)
            continue
        assert o.exit_code == EXIT_FAILED, (where, o)
        assert len(o.stderr_lines) == 1, (where, o.stderr_lines)
        refusal = REFUSAL.match(o.stderr_lines[0])
        assert refusal, (where, o.stderr_lines)
        assert refusal.group(2) in (None, str(o.page)), f"{where}: names another page"
    assert len(harmless) <= FREE_PAGES_MAX, sorted(harmless)
    for page in harmless:  # both commands ran, and on the same state as the intact one
        ran = {o.command: o for o in outcomes if o.page == page}
        assert ran["verify"].exit_code == 0 and ran["serve"].served, ran
        assert ran["verify"].stdout_tail.strip() == intact.stdout.strip()
    # The issue's own cases: page 4 (a leaf) and 37 (the free-page tree's root).
    assert {4, 37} <= {o.page for o in outcomes if o.exit_code == EXIT_FAILED}


def test_a_journal_with_data_but_no_format_is_refused_and_not_written(demo_journal, tmp_path):
    """The format key is written only to a new, empty journal (issue 12: the server wrote
    it to a journal copy it had not verified)."""
    _, data_dir = demo_journal
    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    path = str(copy / "journal")
    env = lmdb.open(path, max_dbs=4, map_size=2**30)
    with env.begin(write=True, db=env.open_db(b"meta")) as txn:
        assert txn.delete(b"format")
    env.close()
    before = (copy / "journal" / "data.mdb").read_bytes()
    with pytest.raises(JournalError, match="no format record"):
        Journal(path, 2**30)
    assert (copy / "journal" / "data.mdb").read_bytes() == before


def test_a_new_journal_gets_its_format(tmp_path):
    journal = Journal(str(tmp_path / "journal"), 2**24)
    journal.close()
    env = lmdb.open(str(tmp_path / "journal"), max_dbs=4, readonly=True)
    with env.begin(db=env.open_db(b"meta", create=False)) as txn:
        assert txn.get(b"format").startswith(b"clearing-journal-")
    env.close()
    Journal(str(tmp_path / "journal"), 2**24).close()  # and opens again


def test_the_damage_is_where_the_probe_says(tmp_path):
    path = tmp_path / "file"
    path.write_bytes(bytes(3 * 4096))
    damage_page(str(path), 1, seed=1)
    data = path.read_bytes()
    assert data[: 4096 + 16] == bytes(4096 + 16) and data[2 * 4096 :] == bytes(4096)
    assert data[4096 + 16 : 2 * 4096] != bytes(4080)

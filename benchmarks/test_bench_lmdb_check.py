"""What the page check costs at every start: ``lmdb_check.check_store`` over a
journal-shaped LMDB file vs LMDB's own walk of the same keys, side by side.

The file: 20,000 entries of 36,000 bytes (a 1,000-tap batch's packed taps), 250
per commit, so about 180,000 overflow pages behind a few hundred leaves. The
check reads every branch and leaf page of both snapshots, the first page of
every overflow run, and the free lists; (b) is a read transaction that steps a
cursor over every key (LMDB touches the same branch and leaf pages, no values).
Both run warm (the file was just written), as a restart right after a stop is.
"""

from __future__ import annotations

import os
import tempfile

import lmdb
import pytest
from conftest import Stopwatch, figure, report, scratch_root

from clearing.storage.lmdb_check import check_store

ENTRIES = 20_000
ENTRIES_PER_COMMIT = 250
VALUE_BYTES = 36_000
_seconds: dict[str, float] = {}


@pytest.fixture(scope="module")
def journal_file():
    with tempfile.TemporaryDirectory(dir=scratch_root()) as path:
        env = lmdb.open(path, map_size=2**32, max_dbs=4, sync=False, metasync=False)
        db = env.open_db(b"journal")
        value = os.urandom(VALUE_BYTES)
        for first in range(1, ENTRIES + 1, ENTRIES_PER_COMMIT):
            with env.begin(write=True, db=db) as txn:
                for seq in range(first, first + ENTRIES_PER_COMMIT):
                    txn.put(seq.to_bytes(8, "big"), value, append=True)
        env.sync(True)
        env.close()
        yield path


def test_check_store(benchmark, journal_file):
    watch = Stopwatch()
    data = os.path.join(journal_file, "data.mdb")
    benchmark.pedantic(lambda: watch.time(lambda: check_store(data, "journal")), rounds=5)
    _seconds["check"] = watch.median_seconds
    mib = os.path.getsize(data) / 2**20
    report("lmdb_check", figure("lmdb_check", f"check of {mib:.0f} MiB", watch.median_seconds, "s"))


def test_lmdb_key_walk(benchmark, journal_file):
    watch = Stopwatch()
    env = lmdb.open(journal_file, readonly=True, max_dbs=4, map_size=2**32)
    db = env.open_db(b"journal", create=False)

    def walk() -> int:
        with env.begin(db=db) as txn:
            return sum(1 for _ in txn.cursor().iternext(keys=True, values=False))

    try:
        benchmark.pedantic(lambda: watch.time(walk), rounds=5)
    finally:
        env.close()
    figures = [figure("lmdb_check", "LMDB key walk", watch.median_seconds, "s")]
    if "check" in _seconds:
        figures.append(
            figure("lmdb_check", "check/key walk", _seconds["check"] / watch.median_seconds, "x")
        )
    report("lmdb_check", *figures)

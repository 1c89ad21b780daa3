"""clearing.storage.lmdb_check: sound LMDB files always pass, damaged ones name the page.

A false refusal would keep a sound journal from starting, so the healthy side is
tested hardest: random puts, overwrites and deletes of small and overflow-sized
values over several named databases, readers held across commits (free-page
lists grow), and a check run while another process commits.
"""

from __future__ import annotations

import multiprocessing
import os
import struct
import time

import lmdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clearing.errors import JournalError, StoreDamaged
from clearing.storage.lmdb_check import check_store, open_checked

NAMES = [b"journal", b"meta", b"checkpoints"]
MAP_BYTES = 2**30  # sparse: the hot check's writer may grow its file while readers pin pages
operation = st.tuples(
    st.sampled_from(["put", "put", "delete", "commit", "hold reader", "drop reader"]),
    st.sampled_from(NAMES),
    st.integers(0, 300),  # key
    st.sampled_from([0, 1, 40, 500, 2_000, 4_100, 20_000, 70_000]),  # value bytes
)


def _env(path: str) -> lmdb.Environment:
    return lmdb.open(path, map_size=MAP_BYTES, max_dbs=4, sync=False, metasync=False)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operations=st.lists(operation, min_size=1, max_size=120))
def test_a_sound_store_always_passes(tmp_path_factory, operations):
    path = str(tmp_path_factory.mktemp("store"))
    env = _env(path)
    dbs = {name: env.open_db(name) for name in NAMES}
    readers: list[lmdb.Transaction] = []
    txn = env.begin(write=True)
    try:
        for kind, name, key, size in operations:
            if kind == "put":
                txn.put(key.to_bytes(2, "big"), bytes([key % 251]) * size, db=dbs[name])
            elif kind == "delete":
                txn.delete(key.to_bytes(2, "big"), db=dbs[name])
            elif kind == "commit":
                txn.commit()
                check_store(os.path.join(path, "data.mdb"), "store")
                txn = env.begin(write=True)
            elif kind == "hold reader":
                readers.append(env.begin())
            elif readers:
                readers.pop().abort()
        txn.commit()
        check_store(os.path.join(path, "data.mdb"), "store")
    finally:
        for reader in readers:
            reader.abort()
        env.close()


def _fill(path: str, entries: int, *, one_commit: bool = False) -> None:
    """Entries of 100 B to 9 KB; in one commit, no page of the file is free."""
    env = _env(path)
    db = env.open_db(b"journal")
    txn = env.begin(write=True, db=db)
    for i in range(entries):
        txn.put(i.to_bytes(8, "big"), bytes([i % 251]) * (100 + 3_000 * (i % 4)))
        if not one_commit:
            txn.commit()
            txn = env.begin(write=True, db=db)
    txn.commit()
    env.close()


def test_a_truncated_copy_names_the_first_missing_page(tmp_path):
    _fill(str(tmp_path), 200)
    data = tmp_path / "data.mdb"
    pages = data.stat().st_size // 4096
    with open(data, "r+b") as f:
        f.truncate((pages - 5) * 4096)
    with pytest.raises(StoreDamaged, match=r"page \d+ lies past the end of the file"):
        check_store(str(data), "journal")


def test_a_copy_cut_inside_an_overflow_run_is_refused_not_mapped(tmp_path):
    """LMDB would read the value's pages past the end of the file: SIGBUS."""
    env = _env(str(tmp_path))
    db = env.open_db(b"journal")
    with env.begin(write=True, db=db) as txn:
        txn.put(b"a", b"small")
    with env.begin(write=True, db=db) as txn:  # its leaf first, then ten overflow pages
        txn.put(b"big", bytes(40_000))
    env.close()
    data = tmp_path / "data.mdb"
    pages = data.stat().st_size // 4096
    with open(data, "r+b") as f:
        f.truncate((pages - 2) * 4096)  # the free-page leaf and the run's last page
    with pytest.raises(StoreDamaged, match=r"page (\d+) lies past the end of the file") as e:
        check_store(str(data), "journal")
    assert e.value.page == pages - 2  # the run's last page, found before any leaf is read


def test_an_unreadable_file_is_a_journal_error_not_a_traceback(tmp_path):
    with pytest.raises(JournalError, match="cannot read the journal file"):
        check_store(str(tmp_path / "missing" / "data.mdb"), "journal")


def test_damage_to_any_tree_page_is_named(tmp_path):
    _fill(str(tmp_path), 200, one_commit=True)
    data = tmp_path / "data.mdb"
    env = lmdb.open(str(tmp_path), max_dbs=4, readonly=True)
    root = env.open_db(b"journal", create=False)
    with env.begin(db=root) as txn:
        depth = txn.stat(root)["depth"]
    env.close()
    assert depth >= 2
    sound = data.read_bytes()
    headers = [struct.unpack_from("<QHH", sound, p * 4096) for p in range(len(sound) // 4096)]
    # Pages that say they are themselves and P_BRANCH or P_LEAF (not overflow data).
    tree_pages = [p for p, (pgno, _, flags) in enumerate(headers) if pgno == p and flags in (1, 2)]
    assert len(tree_pages) > 5
    for page in tree_pages:
        raw = bytearray(sound)
        raw[page * 4096 + 16 : page * 4096 + 24] = b"\xff" * 8  # its first node offsets
        data.write_bytes(bytes(raw))
        with pytest.raises(StoreDamaged, match=rf"^journal page {page} "):
            check_store(str(data), "journal")


def _keep_committing(path: str, seconds: float) -> None:
    env = _env(path)
    db = env.open_db(b"journal")
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        with env.begin(write=True, db=db) as txn:
            txn.put(i.to_bytes(8, "big"), bytes(100 + 2_000 * (i % 3)))
            if i >= 50:  # deletes free pages for later commits to reuse
                txn.delete((i - 50).to_bytes(8, "big"))
        i += 1
    env.close()


def test_a_check_while_another_process_commits_never_refuses(tmp_path):
    """A hot `journal verify` or backup: the read transaction pins what is checked."""
    _fill(str(tmp_path), 10)
    writer = multiprocessing.get_context("spawn").Process(
        target=_keep_committing, args=(str(tmp_path), 2.0)
    )
    writer.start()
    checks = 0
    try:
        while writer.is_alive():
            env = open_checked(
                str(tmp_path),
                "journal",
                lambda: lmdb.open(str(tmp_path), readonly=True, max_dbs=4, map_size=MAP_BYTES),
            )
            env.close()
            checks += 1
    finally:
        writer.join(10)
    assert writer.exitcode == 0 and checks > 5, checks

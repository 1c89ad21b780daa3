"""What guards a journal before and around its use: one writing process (the
writer lock), the format record, and what a storage failure tells the operator."""

from __future__ import annotations

import fcntl
import os
import time

import lmdb

from clearing.errors import JournalError
from clearing.limits import DISK_FULL_BYTES, WRITER_LOCK_WAIT_SECONDS

FORMAT_VERSION = b"clearing-journal-2"  # 2: day closes, deposits in card operations


def _disk_nearly_full(path: str) -> bool:
    try:
        stat = os.statvfs(path)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < DISK_FULL_BYTES


def storage_message(exc: BaseException, map_size_bytes: int, path: str = ".") -> str:
    """What went wrong with storage, and what the operator should do."""
    if isinstance(exc, lmdb.MapFullError):
        return (
            f"journal map is full ({map_size_bytes} bytes): raise [server] map_size_bytes "
            "and restart; nothing acknowledged was lost"
        )
    # A full disk shows as ENOSPC, or as EIO when LMDB's write comes back short.
    if isinstance(exc, OSError | lmdb.Error) and (
        "No space left" in str(exc) or _disk_nearly_full(path)
    ):
        return "disk full under the journal: free space and restart; nothing acknowledged was lost"
    if isinstance(exc, OSError | lmdb.Error) and "File too large" in str(exc):
        return (
            "the journal file reached the process's file size limit (ulimit -f, "
            "LimitFSIZE=): raise it and restart; nothing acknowledged was lost"
        )
    return f"journal storage failed ({type(exc).__name__}: {exc}); check the disk and restart"


def take_writer_lock(path: str) -> int:
    """One writing process per journal: a second writer would fork the hash chain.

    Waits a little: a killed server's checkpoint child holds the lock it inherited
    until it has written its file (a second or two).
    """
    fd = os.open(os.path.join(path, "writer.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + WRITER_LOCK_WAIT_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(0.1)
                continue
        os.close(fd)
        raise JournalError(
            f"another process is writing the journal at {path} (a running server?): "
            "stop it first, or ask the server (SettlementService for settlement)"
        ) from None


def check_format(env: lmdb.Environment, path: str) -> None:
    """A journal says which format wrote it; only a new, empty one is given ours.

    Nothing is written to a journal that holds anything else: its pages were
    checked, its entries are not yet.
    """
    with env.begin() as txn:
        names = [bytes(key) for key, _ in txn.cursor()]  # the named databases
    found = None
    if b"meta" in names:
        with env.begin(db=env.open_db(b"meta", create=False)) as txn:
            found = txn.get(b"format")
    if found is None and names:
        raise JournalError(
            f"journal at {path} holds {sorted(n.decode(errors='replace') for n in names)}"
            " but no format record: not a journal this engine wrote, or damaged. Keep "
            "the data directory as it is (RUNBOOK, ClearingDown)"
        )
    if found is None:
        with env.begin(write=True) as txn:  # a new journal
            txn.put(b"format", FORMAT_VERSION, db=env.open_db(b"meta", txn=txn))
            env.open_db(b"journal", txn=txn)
    elif found != FORMAT_VERSION:
        raise JournalError(
            f"journal at {path} has format {found.decode(errors='replace')}, "
            f"this engine writes {FORMAT_VERSION.decode()}: keep that data directory "
            "with the version that wrote it and start this one on a new one"
        )

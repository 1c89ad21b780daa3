"""Append-only LMDB journal with a hash chain, group commit and checkpoints.

One LMDB environment, two named databases:

- ``journal``: key = seq (u64 BE), value = ``entries.encode(Envelope)``; never
  updated or deleted.
- ``meta``: format version, and the head (last seq and its chain hash).

Checkpoints live apart, in ``<path>/checkpoints`` (``clearing.storage.checkpoints``).

Commits are durable (``sync=True, metasync=True``, no ``writemap``). Appends
from the event loop are queued to one writer thread, which encodes, chains and
commits every queued entry in one transaction (group commit) and resolves the
callers' futures after the commit; fsync never runs on the event loop.

A storage failure (map full, disk full, I/O error) is sticky: the journal
refuses every later append, so the service stops acknowledging work.
"""

from __future__ import annotations

import asyncio
import os
import queue
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import lmdb
import msgspec
import structlog

from clearing.domain import entries
from clearing.domain.entries import GENESIS_HASH, Envelope
from clearing.errors import JournalCorrupt, JournalError, StorageError
from clearing.limits import GROUP_COMMIT_ENTRIES_MAX
from clearing.storage.checkpoints import Checkpoint, CheckpointStore, ForkedCheckpoint, open_durable
from clearing.storage.crashpoints import crash_point
from clearing.storage.journal_guard import check_format, storage_message, take_writer_lock

log = structlog.get_logger("clearing.storage.journal")
_SEQ = struct.Struct(">Q")


def journal_path(data_dir: str) -> str:
    """Where a data directory keeps its journal environment."""
    return os.path.join(data_dir, "journal")


class _Head(msgspec.Struct, array_like=True, frozen=True):
    """An envelope with its body left encoded: verification without decoding."""

    seq: int
    accepted_at_ms: int
    prev_hash: bytes
    body: msgspec.Raw


_head_decoder = msgspec.msgpack.Decoder(_Head)

# Writer queue items: ("entry", seq, accepted_at_ms, body) or ("checkpoint", builder)
_Item = tuple[Any, ...]
CommitListener = Callable[[int, float, int], None]  # (entries, seconds, last seq)


def _seq_of(key: bytes | memoryview, expected_seq: int) -> int:
    """The seq a journal key holds; a key of another size is damage (near ``expected_seq``)."""
    if len(key) != _SEQ.size:
        raise JournalCorrupt(
            expected_seq, f"a {len(key)}-byte key where an 8-byte sequence number belongs"
        )
    return _SEQ.unpack(key)[0]


class Journal:
    def __init__(self, path: str, map_size_bytes: int, *, readonly: bool = False) -> None:
        self.path = path
        self.map_size_bytes = map_size_bytes
        self._lock_fd = -1
        if not readonly:
            os.makedirs(path, exist_ok=True)
            self._lock_fd = take_writer_lock(path)
        elif not os.path.exists(os.path.join(path, "data.mdb")):
            raise JournalError(f"no journal at {path}: check the data directory")
        try:
            self._env = open_durable(
                path, map_size_bytes, readonly=readonly, max_dbs=4, label="journal"
            )
        except lmdb.Error as exc:
            self._release_lock()
            raise JournalError(f"cannot open the journal at {path}: {exc}") from exc
        except BaseException:
            self._release_lock()
            raise
        try:
            if not readonly:
                self._env.reader_check()  # clear reader slots left by killed processes
                check_format(self._env, path)  # writes only to a new, empty journal
            self._entries = self._env.open_db(b"journal", create=False)
            self._meta = self._env.open_db(b"meta", create=False)
            self.checkpoints = CheckpointStore(
                os.path.join(path, "checkpoints"), map_size_bytes, readonly=readonly
            )
        except BaseException as exc:
            self._env.close()
            self._release_lock()
            if isinstance(exc, lmdb.NotFoundError):
                raise JournalError(
                    f"journal at {path} lacks its journal or meta database: not a journal, "
                    "or damaged. Keep the data directory as it is (RUNBOOK, ClearingDown)"
                ) from exc
            raise
        self._head_hash, self._head_seq = self._read_head()
        if not readonly:
            self.checkpoints.drop_after(self._head_seq)
        self._committed_seq = self._head_seq  # the seq ``_head_hash`` belongs to
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._last_future: asyncio.Future[None] | None = None
        self.failure: str | None = None
        self.on_commit: CommitListener | None = None
        self.on_failure: Callable[[str], None] | None = None

    # Reading ---------------------------------------------------------------

    def _read_head(self) -> tuple[bytes, int]:
        with self._env.begin(db=self._entries) as txn:
            cursor = txn.cursor()
            if not cursor.last():
                return GENESIS_HASH, 0
            return entries.chain_hash(cursor.value()), _seq_of(cursor.key(), 0)

    @property
    def last_seq(self) -> int:
        """Highest seq committed or queued."""
        return self._head_seq

    @property
    def committed_seq(self) -> int:
        """Highest seq durably committed."""
        return self._committed_seq

    def size_bytes(self) -> int:
        info = self._env.info()
        return info["last_pgno"] * self._env.stat()["psize"]

    def scan(self, first_seq: int = 1) -> Iterator[tuple[int, bytes]]:
        """(seq, value) of every committed entry from ``first_seq`` on."""
        with self._env.begin(db=self._entries, buffers=True) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(_SEQ.pack(first_seq)):
                return
            seq = first_seq - 1
            try:
                for key, value in cursor:
                    seq = _seq_of(key, seq + 1)
                    yield seq, bytes(value)
            except lmdb.Error as exc:  # a damaged page LMDB itself cannot follow
                raise JournalCorrupt(seq + 1, f"unreadable ({exc})") from exc

    def get(self, seq: int) -> Envelope | None:
        with self._env.begin(db=self._entries) as txn:
            value = txn.get(_SEQ.pack(seq))
        return None if value is None else entries.decode(value)

    def verified_scan(self) -> Iterator[tuple[int, bytes, bytes]]:
        """(seq, value, chain hash) from seq 1, checking sequence and chain.

        An entry is yielded only once the NEXT one vouches for it (its prev_hash),
        or, for the last, the recorded head: damaged bytes are never replayed.
        """
        prev_hash = GENESIS_HASH
        expected = 1
        pending: tuple[int, bytes, bytes] | None = None
        for seq, value in self.scan(1):
            if seq != expected:
                raise JournalCorrupt(expected, f"missing; the next stored entry is {seq}")
            try:
                head = _head_decoder.decode(value)
            except msgspec.DecodeError as exc:
                raise JournalCorrupt(seq, f"undecodable record ({exc})") from exc
            if head.seq != seq:
                raise JournalCorrupt(seq, f"record says it is entry {head.seq}")
            if head.prev_hash != prev_hash:
                raise JournalCorrupt(
                    seq - 1, "hash chain broken: the next entry's prev_hash does not match it"
                )
            if pending is not None:
                yield pending
            prev_hash = entries.chain_hash(value)
            pending = (seq, value, prev_hash)
            expected += 1
        self._check_head(expected - 1, prev_hash)
        if pending is not None:
            yield pending

    def _check_head(self, last_seq: int, last_hash: bytes) -> None:
        with self._env.begin(db=self._meta) as txn:
            head = txn.get(b"head")
        if head is None:
            if last_seq:
                raise JournalCorrupt(last_seq, "the recorded journal head is missing")
            return
        head_seq = _SEQ.unpack(head[:8])[0]
        if head_seq != last_seq:
            raise JournalCorrupt(
                head_seq, f"recorded as the head, but the journal ends at {last_seq}"
            )
        if head[8:] != last_hash:
            raise JournalCorrupt(last_seq, "last entry does not match the recorded head hash")

    def accepted_at_ms(self, seq: int) -> int:
        """When entry ``seq`` was accepted, without decoding its body."""
        with self._env.begin(db=self._entries, buffers=True) as txn:
            value = txn.get(_SEQ.pack(seq))
            assert value is not None, f"entry {seq} is not committed"
            return _head_decoder.decode(value).accepted_at_ms

    def first_seq_at_or_after(self, ms: int) -> int:
        """The first committed seq accepted at or after ``ms`` (last + 1 if none).

        Stamps strictly increase with seq, so a binary search finds it.
        """
        with self._env.begin(db=self._entries, buffers=True) as txn:
            low, high = 1, self._committed_seq + 1
            while low < high:
                middle = (low + high) // 2
                value = txn.get(_SEQ.pack(middle))
                assert value is not None, f"entry {middle} of 1..{self._committed_seq} is missing"
                head = _head_decoder.decode(value)
                if head.accepted_at_ms >= ms:
                    high = middle
                else:
                    low = middle + 1
            return low

    def latest_checkpoint(self) -> Checkpoint | None:
        return self.checkpoints.latest(self._head_seq)

    def chain_hash_at(self, seq: int) -> bytes | None:
        """The chain hash of entry ``seq`` (None when there is no such entry)."""
        with self._env.begin(db=self._entries, buffers=True) as txn:
            value = txn.get(_SEQ.pack(seq))
            return None if value is None else entries.chain_hash(value)

    # Writing (start-up and offline tools: synchronous) --------------------------

    def append_now(self, seq: int, accepted_at_ms: int, body: entries.Body) -> None:
        """Commit one entry synchronously (start-up, before the writer runs)."""
        assert self._writer is None, "use append() once the writer thread runs"
        self._commit([("entry", seq, accepted_at_ms, body)])

    # Writing (the service: writer thread, group commit) ---------------------------

    def start_writer(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._writer is None
        self._loop = loop
        self._writer = threading.Thread(target=self._write_loop, name="journal-writer", daemon=True)
        self._writer.start()

    def append(self, seq: int, accepted_at_ms: int, body: entries.Body) -> asyncio.Future[None]:
        """Queue an entry; the future completes once it is durably committed."""
        assert self._loop is not None, "start_writer() first"
        if self.failure is not None:
            raise StorageError(self.failure)
        assert seq == self._head_seq + 1, "entries are appended in sequence"
        self._head_seq = seq
        future = self._loop.create_future()
        self._pending[seq] = future
        self._last_future = future
        self._queue.put(("entry", seq, accepted_at_ms, body))
        return future

    def append_checkpoint(self, build: Callable[[bytes], ForkedCheckpoint]) -> None:
        """Queue a checkpoint after every entry queued so far.

        ``build(chain_hash)`` runs on the writer thread, when the hash of the
        last entry before it is known.
        """
        self._queue.put(("checkpoint", build))

    @property
    def backlog_entries(self) -> int:
        """Entries appended whose commit has not been settled yet."""
        return len(self._pending)

    async def wait_durable(self) -> None:
        """Wait until everything queued so far is committed (for consistent reads)."""
        if self._last_future is not None and not self._last_future.done():
            await asyncio.shield(self._last_future)
        if self.failure is not None:
            raise StorageError(self.failure)

    def close(self) -> None:
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
            self._writer = None
        self.checkpoints.close()
        self._env.close()
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor releases the lock
            self._lock_fd = -1

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            group = [item]
            while len(group) < GROUP_COMMIT_ENTRIES_MAX:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # stop after this group
                    break
                group.append(more)
            self._write_group(group)

    def _write_group(self, group: list[_Item]) -> None:
        seqs = [item[1] for item in group if item[0] == "entry"]
        if self.failure is not None:
            self._resolve(seqs, StorageError(self.failure), 0.0)
            return
        started = time.perf_counter()
        try:
            self._commit(group)
        except Exception as exc:  # anything: a dead writer must not leave callers hanging
            self.failure = storage_message(exc, self.map_size_bytes, self.path)
            self._resolve(seqs, StorageError(self.failure), 0.0)
            if self.on_failure is not None and self._loop is not None:
                self._loop.call_soon_threadsafe(self.on_failure, self.failure)
            return
        self._resolve(seqs, None, time.perf_counter() - started)

    def _commit(self, group: list[_Item]) -> None:
        """Write a group in one durable transaction; the chain moves only on success."""
        head_hash, head_seq = self._head_hash, self._committed_seq
        checkpoints: list[ForkedCheckpoint] = []
        with self._env.begin(write=True) as txn:
            for item in group:
                if item[0] == "entry":
                    _, seq, accepted_at_ms, body = item
                    value = entries.encode(Envelope(seq, accepted_at_ms, head_hash, body))
                    if not txn.put(_SEQ.pack(seq), value, append=True, db=self._entries):
                        raise JournalError(f"entry {seq} already exists: two writers?")
                    head_hash, head_seq = entries.chain_hash(value), seq
                else:
                    cp = item[1](head_hash)
                    if cp.seq == head_seq:  # only a state of exactly the last entry is true
                        checkpoints.append(cp)
                    else:
                        self.checkpoints.release(cp)
            last = [item[1] for item in group if item[0] == "entry"]
            if last:  # the head is recorded apart so that a damaged last entry shows
                txn.put(b"head", _SEQ.pack(last[-1]) + head_hash, db=self._meta)
            crash_point("journal.before_commit")
        crash_point("journal.after_commit")
        self._head_hash, self._committed_seq = head_hash, head_seq
        for cp in checkpoints:  # its entry is durable now: write it aside, in the background
            try:
                self.checkpoints.submit(cp)
            except Exception as exc:  # a missed checkpoint costs replay time, nothing else
                log.warning("checkpoint not queued", seq=cp.seq, reason=repr(exc))
        if self._writer is None:  # the synchronous path moves the queued seq too
            self._head_seq = max([self._head_seq] + [i[1] for i in group if i[0] == "entry"])

    def _resolve(self, seqs: list[int], error: BaseException | None, seconds: float) -> None:
        if self._loop is None or not seqs:
            return
        self._loop.call_soon_threadsafe(self._settle, seqs, error, seconds)

    def _settle(self, seqs: list[int], error: BaseException | None, seconds: float) -> None:
        for seq in seqs:
            future = self._pending.pop(seq, None)
            if future is None or future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
        if error is None and self.on_commit is not None:
            self.on_commit(len(seqs), seconds, seqs[-1])

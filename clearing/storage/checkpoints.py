"""Checkpoints: the derived state after an entry, kept to shorten replay at start.

They live in an LMDB environment of their own (``<journal>/checkpoints``),
written by a thread of their own: a checkpoint is hundreds of MiB, and writing
and syncing it inside the journal's environment would hold every commit (and
so every answer) for seconds. The journal hands over a checkpoint only after
the entry it describes is durably committed. A checkpoint that is torn, damaged
or missing only costs replay time: each is sealed with a digest and checked.
"""

from __future__ import annotations

import contextlib
import gc
import hmac
import os
import queue
import signal
import struct
import threading
import time
import warnings

import lmdb
import msgspec
import structlog

from clearing.domain.checkpoint_record import Checkpoint, checkpoint_digest
from clearing.errors import JournalError
from clearing.limits import CHECKPOINT_CHILD_SECONDS_MAX, CHECKPOINTS_KEPT
from clearing.storage.crashpoints import crash_point
from clearing.storage.lmdb_check import open_checked

log = structlog.get_logger("clearing.storage.checkpoints")
_SEQ = struct.Struct(">Q")


def open_durable(
    path: str, map_size_bytes: int, *, readonly: bool, max_dbs: int, label: str
) -> lmdb.Environment:
    """An LMDB environment whose every commit is fsync'd (data and meta), no writemap,
    opened only once its pages pass ``lmdb_check`` (StoreDamaged names the page)."""
    return open_checked(
        path,
        label,
        lambda: lmdb.open(
            path,
            map_size=map_size_bytes,
            subdir=True,
            readonly=readonly,
            sync=True,
            metasync=True,
            writemap=False,
            max_dbs=max_dbs,
            lock=True,
        ),
    )


class ForkedCheckpoint:
    """A checkpoint being written by a child process from its copy-on-write image.

    The parent pays only for the fork (page tables, tens of ms), not for copying
    hundreds of MiB on its event loop. The checkpoint thread collects the file:
    plain reads (the GIL is released while the kernel copies) and no re-encoding.
    """

    def __init__(self, seq: int, chain_hash: bytes, implementation: str, pid: int, path: str):
        self.seq, self.chain_hash, self.implementation = seq, chain_hash, implementation
        self.pid, self.path = pid, path
        self.forked_at = time.monotonic()

    def collect(self) -> Checkpoint | None:
        """Wait for the child; the checkpoint it wrote, or None if it failed."""
        try:
            if not _reap(self.pid):
                return None
            with open(self.path, "rb") as f:
                ledger_bytes, engine_bytes = _LENGTHS.unpack(f.read(_LENGTHS.size))
                ledger, engine = f.read(ledger_bytes), f.read(engine_bytes)
            if (len(ledger), len(engine)) != (ledger_bytes, engine_bytes):
                log.warning("checkpoint file short", seq=self.seq)
                return None
        except (OSError, struct.error) as exc:
            log.warning("checkpoint child lost", seq=self.seq, reason=repr(exc))
            return None
        finally:
            _unlink(self.path)
        return Checkpoint(self.seq, self.chain_hash, self.implementation, ledger, engine)

    def discard(self) -> None:
        _reap(self.pid)
        _unlink(self.path)


_FORK_WARNING = r"This process \(pid=\d+\) is multi-threaded, use of fork\(\) may lead to deadlocks"


def forked_builder(engine, directory: str):
    """Fork; the child writes ``engine``'s checkpoint blobs as of now and exits.

    Returns the journal's builder: ``build(chain_hash)`` -> ForkedCheckpoint.
    """
    seq, implementation = engine.last_seq, engine.ledger.implementation
    collecting = gc.isenabled()
    gc.disable()  # the child must never run the parent's finalizers (gRPC, files...)
    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns at every fork of a process with threads. The child takes
            # no lock another thread may hold: it serialises memory, writes a file, _exits.
            warnings.filterwarnings("ignore", _FORK_WARNING, DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            _child(engine, os.path.join(directory, _child_file(seq, os.getpid())))
    finally:
        if collecting:  # (the child never returns here: _child ends in os._exit)
            gc.enable()
    _children.add(pid)
    engine.taps_since_checkpoint = 0
    crash_point("checkpoint.forked")
    path = os.path.join(directory, _child_file(seq, pid))

    def build(chain_hash: bytes) -> ForkedCheckpoint:
        return ForkedCheckpoint(seq, chain_hash, implementation, pid, path)

    return build


def _child_file(seq: int, pid: int) -> str:
    return f"snapshot-{seq}-{pid}{PARTIAL_SUFFIX}"


def _child(engine, path: str) -> None:
    """The child: a frozen image of the fork's instant. Writes the blobs, exits."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)  # the parent's event loop is not ours
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        # Let go of the parent's sockets, journal and writer lock at once: a killed
        # server's port and lock must not wait for this child.
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        ledger_blob, engine_blob = engine.checkpoint_blobs()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(_LENGTHS.pack(len(ledger_blob), len(engine_blob)))
            f.write(ledger_blob)
            f.write(engine_blob)
        code = 0
    finally:
        os._exit(code)


def _reap(pid: int) -> bool:
    """Wait for a checkpoint child (killing it after a while); True if it succeeded."""
    deadline = time.monotonic() + CHECKPOINT_CHILD_SECONDS_MAX
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                log.warning("checkpoint child too slow: killed", pid=pid)
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return False
            time.sleep(0.01)
    except ChildProcessError:
        return False
    finally:
        _children.discard(pid)
    if status != 0:
        log.warning("checkpoint child failed", pid=pid, status=status)
    return status == 0


def reap_children() -> None:
    """Reap checkpoint children whose checkpoint was dropped (a failed journal)."""
    for pid in list(_children):
        _reap(pid)


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


PARTIAL_SUFFIX = ".partial"
_LENGTHS = struct.Struct(">QQ")  # the child's file: ledger and engine lengths, then both
_LEDGER_KEY_SUFFIX = b"L"  # the ledger snapshot is stored apart, as is: never re-encoded
_children: set[int] = set()  # checkpoint children not yet reaped


class _Release:
    def __init__(self, checkpoint: ForkedCheckpoint) -> None:
        self.checkpoint = checkpoint


def _seqs(txn) -> set[int]:
    """The seqs of the stored checkpoints (each has a record and a ledger value)."""
    return {_SEQ.unpack(bytes(k[:8]))[0] for k in txn.cursor().iternext(keys=True, values=False)}


def _delete(txn, seq: int) -> None:
    txn.delete(_SEQ.pack(seq))
    txn.delete(_SEQ.pack(seq) + _LEDGER_KEY_SUFFIX)


_decoder = msgspec.msgpack.Decoder(Checkpoint)
_encoder = msgspec.msgpack.Encoder()


class CheckpointStats:
    """What the metrics show of checkpoints (written by the checkpoint thread)."""

    def __init__(self) -> None:
        self.last_written_unix_s = 0.0  # wall time of the last stored checkpoint
        self.last_seq = 0
        self.last_seconds = 0.0  # fork to stored
        self.failures = 0


class CheckpointStore:
    def __init__(self, path: str, map_size_bytes: int, *, readonly: bool = False) -> None:
        self.path = path
        self.stats = CheckpointStats()
        self._env: lmdb.Environment | None = None
        self._queue: queue.SimpleQueue[ForkedCheckpoint | _Release | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        if readonly and not os.path.exists(os.path.join(path, "data.mdb")):
            return  # none written yet: nothing to read
        try:
            self._open(map_size_bytes, readonly)
        except (lmdb.Error, JournalError) as exc:  # damaged: costs a full replay, not the start
            log.warning("checkpoint store unusable", path=path, reason=repr(exc))
            self._env = None
            if not readonly:
                os.replace(path, f"{path}.damaged-{os.getpid()}")
                self._open(map_size_bytes, readonly)

    def _open(self, map_size_bytes: int, readonly: bool) -> None:
        os.makedirs(self.path, exist_ok=True)
        if not readonly:  # files a killed server's checkpoint children left behind
            for name in os.listdir(self.path):
                if name.endswith(PARTIAL_SUFFIX):
                    _unlink(os.path.join(self.path, name))
        self._env = open_durable(
            self.path, map_size_bytes, readonly=readonly, max_dbs=1, label="checkpoints"
        )
        self._db = self._env.open_db(b"checkpoints", create=not readonly)
        if not readonly:
            self._env.reader_check()  # reader slots left by killed processes

    def drop_after(self, head_seq: int) -> None:
        """Forget checkpoints of entries the journal does not hold (a journal reset or
        restored apart from them): they would never be used, nor pruned."""
        if self._env is None:
            return
        with self._env.begin(write=True, db=self._db) as txn:
            for seq in _seqs(txn):
                if seq > head_seq:
                    _delete(txn, seq)

    def latest(self, head_seq: int) -> Checkpoint | None:
        """The newest sound checkpoint at or before ``head_seq``."""
        if self._env is None:
            return None
        try:
            return self._latest(head_seq)
        except lmdb.Error as exc:
            log.warning("checkpoints unreadable: full replay", reason=repr(exc))
            return None

    def _latest(self, head_seq: int) -> Checkpoint | None:
        assert self._env is not None
        with self._env.begin(db=self._db) as txn:
            for seq in sorted(_seqs(txn), reverse=True):
                if seq > head_seq:
                    continue
                try:
                    cp = _decoder.decode(txn.get(_SEQ.pack(seq)) or b"")
                except msgspec.DecodeError:
                    continue  # a damaged checkpoint only costs replay time
                ledger = txn.get(_SEQ.pack(seq) + _LEDGER_KEY_SUFFIX)
                if ledger is not None:
                    cp = msgspec.structs.replace(cp, ledger=ledger)
                if hmac.compare_digest(cp.digest, checkpoint_digest(cp)):
                    return cp
        return None

    def submit(self, cp: ForkedCheckpoint) -> None:
        """Queue a checkpoint of a durably committed entry; written in the background."""
        assert self._env is not None, "a read-only journal takes no checkpoints"
        self._start()
        self._queue.put(cp)

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="checkpoints", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                if isinstance(item, _Release):
                    item.checkpoint.discard()
                    continue
                cp = item.collect()
                if cp is None:
                    self.stats.failures += 1
                    continue
                self._write(cp.sealed())
                self._written(item)
            except Exception as exc:  # costs replay time at the next start, nothing else
                self.stats.failures += 1
                log.warning("checkpoint not written", reason=repr(exc))

    def _written(self, item: ForkedCheckpoint) -> None:
        stats = self.stats
        stats.last_seconds = time.monotonic() - item.forked_at
        stats.last_written_unix_s, stats.last_seq = time.time(), item.seq
        log.info("checkpoint written", seq=item.seq, seconds=round(stats.last_seconds, 3))

    def _write(self, cp: Checkpoint) -> None:
        assert self._env is not None
        key = _SEQ.pack(cp.seq)
        with self._env.begin(write=True, db=self._db) as txn:
            txn.put(key + _LEDGER_KEY_SUFFIX, cp.ledger)
            crash_point("checkpoint.mid_store")
            txn.put(key, _encoder.encode(msgspec.structs.replace(cp, ledger=b"")))
            for old in sorted(_seqs(txn))[:-CHECKPOINTS_KEPT]:
                _delete(txn, old)

    def release(self, item: ForkedCheckpoint) -> None:
        """A checkpoint that will not be written: reaped in the background, not here
        (the journal calls this inside its write transaction)."""
        self._start()
        self._queue.put(_Release(item))

    def close(self) -> None:
        """Finish what is queued (a graceful stop's checkpoint), then close."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        reap_children()
        if self._env is not None:
            self._env.close()
            self._env = None

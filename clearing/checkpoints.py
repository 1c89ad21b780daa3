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
import hashlib
import hmac
import os
import queue
import struct
import threading

import lmdb
import msgspec
import structlog

from clearing.limits import CHECKPOINTS_KEPT

log = structlog.get_logger("clearing.checkpoints")
_SEQ = struct.Struct(">Q")


class Checkpoint(msgspec.Struct, array_like=True, frozen=True):
    seq: int
    chain_hash: bytes  # chain hash of entry ``seq``: ties the state to the journal
    implementation: str  # which ledger core wrote ``ledger``
    ledger: bytes
    engine: bytes
    digest: bytes = b""  # of everything above: a damaged checkpoint is skipped, not served

    def sealed(self) -> Checkpoint:
        return msgspec.structs.replace(self, digest=checkpoint_digest(self))


def checkpoint_digest(cp: Checkpoint) -> bytes:
    h = hashlib.blake2b(digest_size=32)
    h.update(_SEQ.pack(cp.seq) + cp.chain_hash + cp.implementation.encode() + b"\0")
    h.update(_SEQ.pack(len(cp.ledger)))
    h.update(cp.ledger)
    h.update(cp.engine)
    return h.digest()


def open_durable(
    path: str, map_size_bytes: int, *, readonly: bool, max_dbs: int
) -> lmdb.Environment:
    """An LMDB environment whose every commit is fsync'd (data and meta), no writemap."""
    return lmdb.open(
        path,
        map_size=map_size_bytes,
        subdir=True,
        readonly=readonly,
        sync=True,
        metasync=True,
        writemap=False,
        max_dbs=max_dbs,
        lock=True,
    )


class ForkedCheckpoint:
    """A checkpoint being written by a child process from its copy-on-write image.

    The parent pays only for the fork (page tables, tens of ms), not for copying
    hundreds of MiB on its event loop; the checkpoint thread collects the file.
    """

    def __init__(self, seq: int, chain_hash: bytes, implementation: str, pid: int, path: str):
        self.seq, self.chain_hash, self.implementation = seq, chain_hash, implementation
        self.pid, self.path = pid, path

    def collect(self) -> Checkpoint | None:
        """Wait for the child; the checkpoint it wrote, or None if it failed."""
        try:
            _, status = os.waitpid(self.pid, 0)
            if status != 0:
                log.warning("checkpoint child failed", seq=self.seq, status=status)
                return None
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError as exc:
            log.warning("checkpoint child lost", seq=self.seq, reason=repr(exc))
            return None
        finally:
            _unlink(self.path)
        (ledger_bytes,) = _SEQ.unpack_from(data)
        ledger_end = _SEQ.size + ledger_bytes
        return Checkpoint(
            self.seq,
            self.chain_hash,
            self.implementation,
            data[_SEQ.size : ledger_end],
            data[ledger_end:],
        )

    def discard(self) -> None:
        self.collect()


def forked_builder(engine, directory: str):
    """Fork; the child writes ``engine``'s checkpoint blobs as of now and exits.

    Returns the journal's builder: ``build(chain_hash)`` -> ForkedCheckpoint.
    """
    seq, implementation = engine.last_seq, engine.ledger.implementation
    path = os.path.join(directory, f"snapshot-{seq}{PARTIAL_SUFFIX}")
    pid = os.fork()
    if pid == 0:  # the child: a frozen image of this instant; nothing here may block
        code = 1
        try:
            # Let go of the parent's sockets, journal and writer lock at once: a killed
            # server's port and lock must not wait for this child.
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))
            ledger_blob, engine_blob = engine.checkpoint_blobs()
            with open(path, "wb") as f:
                f.write(_SEQ.pack(len(ledger_blob)))
                f.write(ledger_blob)
                f.write(engine_blob)
            code = 0
        finally:
            os._exit(code)
    engine.taps_since_checkpoint = 0

    def build(chain_hash: bytes) -> ForkedCheckpoint:
        return ForkedCheckpoint(seq, chain_hash, implementation, pid, path)

    return build


def discard(item: Pending) -> None:
    """Let go of a checkpoint that will not be written (reap its child, if any)."""
    if isinstance(item, ForkedCheckpoint):
        item.discard()


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


PARTIAL_SUFFIX = ".partial"
Pending = Checkpoint | ForkedCheckpoint

_decoder = msgspec.msgpack.Decoder(Checkpoint)
_encoder = msgspec.msgpack.Encoder()


class CheckpointStore:
    def __init__(self, path: str, map_size_bytes: int, *, readonly: bool = False) -> None:
        self.path = path
        self._env: lmdb.Environment | None = None
        self._queue: queue.SimpleQueue[Pending | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        if readonly and not os.path.exists(os.path.join(path, "data.mdb")):
            return  # none written yet: nothing to read
        try:
            self._open(map_size_bytes, readonly)
        except lmdb.Error as exc:  # damaged: costs a full replay, never the start
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
        self._env = open_durable(self.path, map_size_bytes, readonly=readonly, max_dbs=1)
        self._db = self._env.open_db(b"checkpoints", create=not readonly)
        if not readonly:
            self._env.reader_check()  # reader slots left by killed processes

    def drop_after(self, head_seq: int) -> None:
        """Forget checkpoints of entries the journal does not hold (a journal reset or
        restored apart from them): they would never be used, nor pruned."""
        if self._env is None:
            return
        with self._env.begin(write=True, db=self._db) as txn:
            stale = [
                bytes(k)
                for k in txn.cursor().iternext(keys=True, values=False)
                if _SEQ.unpack(k)[0] > head_seq
            ]
            for key in stale:
                txn.delete(key)

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
            cursor = txn.cursor()
            found = cursor.last()
            while found:
                try:
                    cp = _decoder.decode(cursor.value())
                except msgspec.DecodeError:
                    cp = None  # a damaged checkpoint only costs replay time
                if (
                    cp is not None
                    and cp.seq <= head_seq
                    and hmac.compare_digest(cp.digest, checkpoint_digest(cp))
                ):
                    return cp
                found = cursor.prev()
        return None

    def submit(self, cp: Pending) -> None:
        """Queue a checkpoint of a durably committed entry; written in the background."""
        assert self._env is not None, "a read-only journal takes no checkpoints"
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="checkpoints", daemon=True)
            self._thread.start()
        self._queue.put(cp)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            while True:  # a newer checkpoint makes the queued older ones pointless
                try:
                    newer = self._queue.get_nowait()
                except queue.Empty:
                    break
                if newer is None:
                    self._queue.put(None)  # stop after this one
                    break
                discard(item)
                item = newer
            try:
                cp = item.collect() if isinstance(item, ForkedCheckpoint) else item
                if cp is not None:
                    self._write(cp.sealed())
            except Exception as exc:  # costs replay time at the next start, nothing else
                log.warning("checkpoint not written", seq=item.seq, reason=repr(exc))

    def _write(self, cp: Checkpoint) -> None:
        assert self._env is not None
        with self._env.begin(write=True, db=self._db) as txn:
            txn.put(_SEQ.pack(cp.seq), _encoder.encode(cp))
            keys = [bytes(k) for k in txn.cursor().iternext(keys=True, values=False)]
            for old in keys[:-CHECKPOINTS_KEPT]:
                txn.delete(old)

    def close(self) -> None:
        """Finish what is queued (a graceful stop's checkpoint), then close."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._env is not None:
            self._env.close()
            self._env = None

"""Hot backups of the journal, and their restore.

A backup is LMDB's own consistent copy of the journal environment (one read
transaction), taken while the server keeps writing. The checkpoint store is
copied first, so the backup's checkpoints are never ahead of its journal: a
server restored from it starts from the newest and replays what follows.
``backup.json`` records the head the copy ends at. Settlement files are not
copied: they are derived, and rewritten from the journal when asked for.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil

import lmdb
import msgspec

from clearing.errors import ClearingError
from clearing.storage.journal import Journal, journal_path
from clearing.storage.lmdb_check import open_checked
from clearing.storage.verify import READ_MAP_SIZE_BYTES

MANIFEST_NAME = "backup.json"


class BackupManifest(msgspec.Struct, frozen=True):
    taken_at: str  # UTC, ISO 8601
    last_seq: int
    head_hash: str
    journal_bytes: int
    checkpoints: bool


def _empty_dir(path: str, what: str) -> None:
    if os.path.exists(path) and os.listdir(path):
        raise ClearingError(f"{what} {path} is not empty: give a new or empty directory")
    os.makedirs(path, exist_ok=True)


def _copy_env(source: str, target: str, max_dbs: int, map_size_bytes: int, label: str) -> None:
    # The running server's map size: a smaller map would see the file grow past it
    # mid-copy (MDB_MAP_RESIZED). The compacting copy follows every tree: checked first.
    env = open_checked(
        source,
        label,
        lambda: lmdb.open(
            source, readonly=True, lock=True, max_dbs=max_dbs, map_size=map_size_bytes
        ),
    )
    try:
        os.makedirs(target, exist_ok=True)
        env.copy(target, compact=True)
    finally:
        env.close()


def backup(data_dir: str, target: str, map_size_bytes: int) -> BackupManifest:
    """Copy the journal (and its checkpoints) under ``data_dir`` to ``target``;
    ``map_size_bytes`` is the server's ``[server] map_size_bytes``."""
    source = journal_path(data_dir)
    if not os.path.exists(os.path.join(source, "data.mdb")):
        raise ClearingError(f"no journal at {source}: check --config / --data-dir")
    _empty_dir(target, "backup directory")
    copied = os.path.join(target, "journal")
    checkpoints = os.path.join(source, "checkpoints")
    has_checkpoints = os.path.exists(os.path.join(checkpoints, "data.mdb"))
    try:
        if has_checkpoints:  # first: never newer than the journal copied after it
            _copy_env(
                checkpoints, os.path.join(copied, "checkpoints"), 1, map_size_bytes, "checkpoints"
            )
        _copy_env(source, copied, 4, map_size_bytes, "journal")
    except lmdb.Error as exc:
        raise ClearingError(f"backup of {source} failed: {exc}") from exc
    manifest = _check_copy(copied, has_checkpoints)
    with open(os.path.join(target, MANIFEST_NAME), "wb") as f:
        f.write(msgspec.json.format(msgspec.json.encode(manifest)))
    return manifest


def _check_copy(journal_dir: str, has_checkpoints: bool) -> BackupManifest:
    """Walk the copy's hash chain up to its recorded head (JournalCorrupt if broken)."""
    journal = Journal(journal_dir, READ_MAP_SIZE_BYTES, readonly=True)
    try:
        last_seq, head = 0, b""
        for seq, _, chain in journal.verified_scan():
            last_seq, head = seq, chain
    finally:
        journal.close()
    return BackupManifest(
        dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        last_seq,
        head.hex(),
        os.path.getsize(os.path.join(journal_dir, "data.mdb")),
        has_checkpoints,
    )


def restore(backup_dir: str, data_dir: str) -> BackupManifest:
    """Put a backup's journal in place under ``data_dir`` (which must hold none)."""
    try:
        with open(os.path.join(backup_dir, MANIFEST_NAME), "rb") as f:
            manifest = msgspec.json.decode(f.read(), type=BackupManifest)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ClearingError(f"{backup_dir} is not a backup ({MANIFEST_NAME}: {exc})") from exc
    target = journal_path(data_dir)
    if os.path.exists(os.path.join(target, "data.mdb")):
        raise ClearingError(
            f"{target} already holds a journal: stop the server and move it aside first "
            "(restore never overwrites a journal)"
        )
    # Staged beside it, synced and checked against the manifest, then renamed into
    # place: a failed or interrupted restore leaves no journal that looks real.
    staging = f"{target}.restoring"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        shutil.copytree(os.path.join(backup_dir, "journal"), staging)
        _fsync_tree(staging)
        found = _check_copy(staging, manifest.checkpoints)
        if (found.last_seq, found.head_hash) != (manifest.last_seq, manifest.head_hash):
            raise ClearingError(
                f"the backup's journal ends at entry {found.last_seq}, its manifest says "
                f"{manifest.last_seq}: the backup is damaged, take another"
            )
    except Exception:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)  # an empty leftover at most (checked above)
    os.rename(staging, target)
    _fsync_dir(os.path.dirname(target))
    return manifest


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: str) -> None:
    for directory, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(directory, name), "rb+") as f:
                os.fsync(f.fileno())
        _fsync_dir(directory)

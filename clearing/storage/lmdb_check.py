"""Check an LMDB file's pages with plain reads before LMDB maps any of them.

LMDB 0.9 has no page checksums and trusts every page it follows: a damaged
branch or leaf sends it outside its map (SIGBUS, no message) or into a
``CorruptedError`` halfway through a replay. So before a store is used, this
module reads, with ``os.pread``, both meta pages and every page of the two
snapshots they name (the free-page tree, the main tree and each named
database), and checks what LMDB relies on: page numbers and kinds, node
offsets and sizes inside their page, keys in order and inside their parent's
range, overflow runs, depths and the page and entry counts each database
records, and free-page lists that name pages in the file and not in use.

Damage in a page that neither snapshot uses cannot be seen (its bytes are
stale and nothing will read them before overwriting them) and is harmless.
Damage inside an entry's bytes is found by the journal's hash chain.

Only what our stores use is accepted: plain named databases (no DUPSORT, so no
sub-pages or sub-databases); anything else is reported as damage.

Layouts are LMDB 0.9's on a 64-bit build (``mdb.c``: MDB_page, MDB_meta,
MDB_db, MDB_node); ``SUPPORTED_LMDB`` pins the version they were read from.
"""

from __future__ import annotations

import bisect
import os
import struct
import time
from collections.abc import Callable

import lmdb

from clearing.errors import JournalError, StoreDamaged
from clearing.limits import LMDB_CHECK_RETRY_SECONDS

SUPPORTED_LMDB = (0, 9)  # the layouts below are LMDB 0.9's
_PAGE_HEADER = struct.Struct("<QHHHH")  # pgno, pad, flags, lower, upper (PAGEHDRSZ 16)
_OVERFLOW_PAGES = struct.Struct("<I")  # at offset 12 of an overflow run's first page
_DB = struct.Struct("<IHHQQQQQ")  # pad, flags, depth, branch, leaf, overflow, entries, root
_META = struct.Struct("<II")  # magic, version at offset 16
_META_TAIL = struct.Struct("<QQ")  # last_pg, txnid at offset 136
_META_BYTES = 160  # a meta page's header and MDB_meta
_NODE = struct.Struct("<HHHH")  # lo, hi, flags, ksize
_U64, _U16 = struct.Struct("<Q"), struct.Struct("<H")
_HEADER_BYTES, _NODE_BYTES = 16, 8
_FREE_DB_OFFSET, _MAIN_DB_OFFSET, _META_TAIL_OFFSET = 40, 88, 136
_MAGIC, _DATA_VERSION = 0xBEEFC0DE, 1
_P_BRANCH, _P_LEAF, _P_OVERFLOW, _P_META = 0x01, 0x02, 0x04, 0x08
_P_TRANSIENT = 0x10 | 0x4000 | 0x8000  # P_DIRTY, P_LOOSE, P_KEEP: in-memory marks
_F_BIGDATA, _F_SUBDATA = 0x01, 0x02
_MDB_INTEGERKEY = 0x08
_ENV_FLAGS = 0x01 | 0x4000  # MDB_FIXEDMAP, MDB_NOSUBDIR: mm_flags shares the field
_NO_ROOT = 0xFFFFFFFFFFFFFFFF  # P_INVALID: an empty database
_DEPTH_MAX = 32  # CURSOR_STACK in mdb.c: LMDB cannot follow a deeper tree
_PAGE_SIZES = (4096, 8192, 16384, 32768, 65536)
_PAGES_MAX = 2**48  # page numbers beyond any file a 64-bit LMDB can map


class _Db:
    """One database's record (MDB_db): what a walk of its tree must find."""

    def __init__(self, name: str, raw: bytes) -> None:
        (_, self.flags, self.depth, self.branch_pages, self.leaf_pages,
         self.overflow_pages, self.entries, self.root) = _DB.unpack(raw)  # fmt: skip
        self.name = name


class _Walk:
    """What a subtree holds: its pages, counts and key range (reused across snapshots)."""

    def __init__(self) -> None:
        self.branch = self.leaf = self.overflow = self.entries = 0
        self.runs: list[tuple[int, int]] = []  # (first page, pages): overflow runs stay short
        self.first_key: Key | None = None
        self.last_key: Key | None = None

    def add(self, child: _Walk) -> None:
        self.runs += child.runs
        self.branch += child.branch
        self.leaf += child.leaf
        self.overflow += child.overflow
        self.entries += child.entries
        if self.first_key is None:
            self.first_key = child.first_key
        self.last_key = child.last_key


Key = bytes | int  # integer keys (the free-page tree) compare as numbers
LeafVisitor = Callable[[int, bytes, int, bytes], None]  # (page, key, node flags, value)
_Memo = dict[tuple[int, int, bool], _Walk]  # (page, depth, integer keys) -> its walk


class _File:
    def __init__(self, fd: int, label: str, page_bytes: int, file_pages: int) -> None:
        self.fd, self.label, self.page_bytes, self.file_pages = fd, label, page_bytes, file_pages
        self.last_page = 1  # the snapshot's last page, set per snapshot
        self.memo: _Memo = {}

    def damaged(self, page: int, what: str) -> StoreDamaged:
        return StoreDamaged(self.label, page, what)

    def read(self, page: int, count: int = 1) -> bytes:
        assert page >= 2 and page + count - 1 <= self.last_page, "page numbers checked first"
        if page + count > self.file_pages:
            raise self.damaged(page, "lies past the end of the file (a truncated copy?)")
        data = _pread(self.fd, self.label, page, count * self.page_bytes, page * self.page_bytes)
        if len(data) != count * self.page_bytes:
            raise self.damaged(page, "could not be read whole")
        return data


def _pread(fd: int, label: str, page: int, size: int, offset: int) -> bytes:
    try:
        return os.pread(fd, size, offset)
    except OSError as exc:  # a bad sector (EIO): the page cannot be trusted either
        raise StoreDamaged(label, page, f"could not be read ({exc.strerror})") from exc


def check_store(path: str, label: str, *, metas_only: bool = False) -> None:
    """Raise StoreDamaged naming the first damaged page of the LMDB file ``path``.

    ``label`` names the store in the message (``journal``, ``checkpoints``). An
    empty file is a store LMDB has yet to initialise. A reader that shares the
    file with a writer checks ``metas_only`` before it opens the environment,
    and the trees only while a read transaction pins them.
    """
    assert lmdb.version()[:2] == SUPPORTED_LMDB, "page layouts are LMDB 0.9's"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise JournalError(f"cannot read the {label} file {path}: {exc.strerror}") from exc
    try:
        if os.fstat(fd).st_size:
            _check(fd, label, metas_only)
    finally:
        os.close(fd)


def _check(fd: int, label: str, metas_only: bool) -> None:
    first = _pread(fd, label, 0, _META_BYTES, 0)
    page_bytes = _DB.unpack_from(first, _FREE_DB_OFFSET)[0] if len(first) == _META_BYTES else 0
    if page_bytes not in _PAGE_SIZES:
        raise StoreDamaged(label, 0, "(a meta page) is not an LMDB meta page")
    raw_metas = [_pread(fd, label, page, _META_BYTES, page * page_bytes) for page in (0, 1)]
    # The size after the metas: a commit racing with these reads only grows the file.
    file = _File(fd, label, page_bytes, os.fstat(fd).st_size // page_bytes)
    metas = [_meta(file, page, raw) for page, raw in enumerate(raw_metas)]
    if metas_only:
        return
    for last_page, _, free_db, main_db in sorted(metas, key=lambda meta: meta[1]):
        file.last_page = last_page  # the older snapshot first: it shares most pages
        _check_snapshot(file, free_db, main_db)


def _check_snapshot(file: _File, free_db: _Db, main_db: _Db) -> None:
    in_use: list[tuple[int, int]] = [(0, 2)]
    named: list[_Db] = []
    free_lists: list[tuple[int, bytes]] = []

    def on_main_leaf(page: int, key: bytes, flags: int, value: bytes) -> None:
        if flags != _F_SUBDATA:
            raise file.damaged(page, f"main database entry {key!r} is not a database")
        named.append(_Db(key.decode(errors="replace"), value))

    def on_free_leaf(page: int, key: bytes, flags: int, value: bytes) -> None:
        if flags == _F_SUBDATA:
            raise file.damaged(page, "holds a database where a free-page list belongs")
        free_lists.append((page, value))

    _walk_db(file, main_db, in_use, on_main_leaf)
    for db in named:
        _walk_db(file, db, in_use)
    _walk_db(file, free_db, in_use, on_free_leaf)
    _check_free_lists(file, free_lists, _merged(file, in_use))


def _meta(file: _File, page: int, raw: bytes) -> tuple[int, int, _Db, _Db]:
    """(last page, txnid, free-page db, main db) of a meta page."""
    if len(raw) < _META_BYTES:
        raise file.damaged(page, "(a meta page) is missing: the file is truncated")
    pgno, _, flags, _, _ = _PAGE_HEADER.unpack_from(raw)
    magic, version = _META.unpack_from(raw, _HEADER_BYTES)
    if pgno != page or flags & ~_P_TRANSIENT != _P_META or magic != _MAGIC:
        raise file.damaged(page, "(a meta page) is not an LMDB meta page")
    if version != _DATA_VERSION:
        raise file.damaged(page, f"(a meta page) has LMDB data version {version}")
    free_db = _Db("free pages", raw[_FREE_DB_OFFSET : _FREE_DB_OFFSET + _DB.size])
    main_db = _Db("main", raw[_MAIN_DB_OFFSET : _MAIN_DB_OFFSET + _DB.size])
    last_page, txnid = _META_TAIL.unpack_from(raw, _META_TAIL_OFFSET)
    free_db.flags &= ~_ENV_FLAGS  # the free-page record also keeps the environment's flags
    if not 1 <= last_page < _PAGES_MAX or free_db.flags != _MDB_INTEGERKEY or main_db.flags:
        raise file.damaged(page, "(a meta page) holds impossible database records")
    return last_page, txnid, free_db, main_db


def _walk_db(
    file: _File, db: _Db, in_use: list[tuple[int, int]], on_leaf: LeafVisitor | None = None
) -> None:
    """Walk one database's tree; its pages join ``in_use``; its counts must match."""
    integer_keys = db.name == "free pages"
    if db.flags != (_MDB_INTEGERKEY if integer_keys else 0):
        raise file.damaged(1, f"database {db.name!r} has flags {db.flags:#x} we never set")
    if db.root == _NO_ROOT:
        if db.depth or db.entries or db.branch_pages or db.leaf_pages or db.overflow_pages:
            raise file.damaged(1, f"database {db.name!r} is empty but records contents")
        return
    if not 1 <= db.depth <= _DEPTH_MAX or not 2 <= db.root <= file.last_page:
        raise file.damaged(1, f"database {db.name!r} has an impossible root or depth")
    walk = _walk_page(file, db.root, db.depth, integer_keys, on_leaf)
    in_use += walk.runs
    counts = (walk.branch, walk.leaf, walk.overflow, walk.entries)
    recorded = (db.branch_pages, db.leaf_pages, db.overflow_pages, db.entries)
    if counts != recorded:
        raise file.damaged(
            db.root, f"database {db.name!r} records {recorded} pages/entries, its tree {counts}"
        )


def _walk_page(
    file: _File, page: int, depth: int, integer_keys: bool, on_leaf: LeafVisitor | None
) -> _Walk:
    """Check one page and its subtree. A subtree checked in the other snapshot is
    reused, except where a visitor must see every entry (main and free trees: small)."""
    memo_key = (page, depth, integer_keys)
    if on_leaf is None and memo_key in file.memo:
        return file.memo[memo_key]
    raw = file.read(page)
    pgno, _, flags, lower, upper = _PAGE_HEADER.unpack_from(raw)
    is_branch = depth > 1
    if pgno != page:
        raise file.damaged(page, f"says it is page {pgno}")
    if flags & ~_P_TRANSIENT != (_P_BRANCH if is_branch else _P_LEAF):
        raise file.damaged(page, f"has page flags {flags:#x} where a tree page belongs")
    if lower % 2 or not _HEADER_BYTES + 2 <= lower <= upper <= file.page_bytes:
        raise file.damaged(page, "has an impossible node index")
    walk = _Walk()
    walk.runs.append((page, 1))
    for index in range((lower - _HEADER_BYTES) // 2):
        offset = _U16.unpack_from(raw, _HEADER_BYTES + 2 * index)[0]
        if offset % 2 or not upper <= offset <= file.page_bytes - _NODE_BYTES:
            raise file.damaged(page, f"node {index} lies outside its page")
        lo, hi, node_flags, key_bytes = _NODE.unpack_from(raw, offset)
        key_start = offset + _NODE_BYTES
        if key_start + key_bytes > file.page_bytes:
            raise file.damaged(page, f"node {index}'s key runs past its page")
        key = raw[key_start : key_start + key_bytes]
        separator = _key(file, page, index, key, integer_keys, is_branch and index == 0)
        if separator is not None and walk.last_key is not None and not walk.last_key < separator:  # type: ignore[operator]
            raise file.damaged(page, f"node {index}'s key is out of order")
        if is_branch:
            child = lo | hi << 16 | node_flags << 32
            if not 2 <= child <= file.last_page:
                raise file.damaged(page, f"branch node {index} points outside the file")
            below = _walk_page(file, child, depth - 1, integer_keys, on_leaf)
            if separator is not None and below.first_key < separator:  # type: ignore[operator]
                raise file.damaged(child, "holds keys below its parent's range")
            walk.add(below)
        else:
            value = _leaf_value(file, walk, page, index, raw, key_start + key_bytes,
                                lo | hi << 16, node_flags, on_leaf is not None)  # fmt: skip
            walk.entries += 1
            walk.first_key = separator if walk.first_key is None else walk.first_key
            walk.last_key = separator
            if on_leaf is not None:
                on_leaf(page, key, node_flags, value)
    if is_branch:
        walk.branch += 1
    else:
        walk.leaf += 1
    file.memo[memo_key] = walk
    return walk


def _key(
    file: _File, page: int, index: int, key: bytes, integer_keys: bool, implicit: bool
) -> Key | None:
    """A node's key as it orders (None for a branch page's first, implicit key)."""
    if implicit:
        if key:
            raise file.damaged(page, "has a key in its first branch node")
        return None
    if not integer_keys:
        return key
    if len(key) != 8:
        raise file.damaged(page, f"node {index} has a {len(key)}-byte integer key")
    return int(_U64.unpack(key)[0])


def _leaf_value(
    file: _File,
    walk: _Walk,
    page: int,
    index: int,
    raw: bytes,
    data_start: int,
    data_bytes: int,
    node_flags: int,
    wanted: bool,
) -> bytes:
    """A leaf node's value (read from its overflow run only when ``wanted``)."""
    if node_flags not in (0, _F_BIGDATA, _F_SUBDATA):
        raise file.damaged(page, f"leaf node {index} has node flags {node_flags:#x}")
    if node_flags != _F_BIGDATA:
        if data_start + data_bytes > file.page_bytes:
            raise file.damaged(page, f"leaf node {index}'s data runs past its page")
        if node_flags == _F_SUBDATA and data_bytes != _DB.size:
            raise file.damaged(page, f"leaf node {index} holds a damaged database record")
        return raw[data_start : data_start + data_bytes]
    if data_start + 8 > file.page_bytes:
        raise file.damaged(page, f"leaf node {index} runs past its page")
    first = _U64.unpack_from(raw, data_start)[0]
    # OVPAGES in mdb.c. A run can be longer: LMDB rewrites a smaller value in place.
    needed = (_HEADER_BYTES - 1 + data_bytes) // file.page_bytes + 1
    if first < 2 or first + needed - 1 > file.last_page:
        raise file.damaged(page, f"leaf node {index}'s overflow pages lie outside the file")
    if first + needed > file.file_pages:  # LMDB would read past the end: SIGBUS
        raise file.damaged(first + needed - 1, "lies past the end of the file (a truncated copy?)")
    head = file.read(first)
    pgno, _, flags, _, _ = _PAGE_HEADER.unpack_from(head)
    if pgno != first or flags & ~_P_TRANSIENT != _P_OVERFLOW:
        raise file.damaged(first, "is not the overflow page its leaf points to")
    count = _OVERFLOW_PAGES.unpack_from(head, 12)[0]
    if count < needed or first + count - 1 > file.last_page:
        raise file.damaged(first, "has an overflow page count that does not fit its data")
    run = file.read(first, needed) if wanted else head
    walk.runs.append((first, count))
    walk.overflow += count
    return run[_HEADER_BYTES : _HEADER_BYTES + data_bytes]


def _merged(file: _File, runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The snapshot's pages in use as sorted (first, end) ranges; no page twice."""
    merged: list[tuple[int, int]] = []
    for first, count in sorted(runs):
        if merged and first < merged[-1][1]:
            raise file.damaged(first, "is used twice in one snapshot")
        if merged and first == merged[-1][1]:
            merged[-1] = (merged[-1][0], first + count)
        else:
            merged.append((first, first + count))
    return merged


def _check_free_lists(
    file: _File, free_lists: list[tuple[int, bytes]], in_use: list[tuple[int, int]]
) -> None:
    """Every page a free list names lies in the snapshot, once, and is not in use."""
    named: list[tuple[int, int]] = []  # (free page, leaf page that lists it)
    for page, value in free_lists:
        if len(value) % 8 or not value or _U64.unpack_from(value)[0] > len(value) // 8 - 1:
            raise file.damaged(page, "holds a damaged free-page list")
        count = _U64.unpack_from(value)[0]
        named += [(listed, page) for (listed,) in _U64.iter_unpack(value[8 : 8 + 8 * count])]
    named.sort()
    for position, (listed, page) in enumerate(named):
        used = bisect.bisect_right(in_use, (listed, _PAGES_MAX)) - 1
        if (
            not 2 <= listed <= file.last_page
            or (position and named[position - 1][0] == listed)
            or (used >= 0 and in_use[used][0] <= listed < in_use[used][1])
        ):
            raise file.damaged(page, f"lists page {listed} as free, which it cannot be")


def open_checked(
    directory: str, label: str, open_env: Callable[[], lmdb.Environment]
) -> lmdb.Environment:
    """``open_env()`` for the LMDB store in ``directory``, once its pages are checked.

    The metas are checked before LMDB reads them, the trees while a read
    transaction pins both snapshots against a writer in another process (a hot
    verify or backup). A check that fails is tried once more: a commit racing
    with the reads can tear a meta page as read, never as written.
    """
    data = os.path.join(directory, "data.mdb")
    if not os.path.exists(data):
        return open_env()  # a new store: LMDB creates it
    _twice(lambda: check_store(data, label, metas_only=True))
    env = open_env()
    try:

        def pinned() -> None:
            with env.begin():
                check_store(data, label)

        _twice(pinned)
    except BaseException:
        env.close()
        raise
    return env


def _twice(check: Callable[[], None]) -> None:
    try:
        check()
    except StoreDamaged:
        time.sleep(LMDB_CHECK_RETRY_SECONDS)
        check()

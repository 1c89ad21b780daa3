"""Every hard limit of the engine, with the reason it exists (TIGER_STYLE).

Configurable business limits (``max_tap_fen`` ...) live in ``config.py``;
these are the bounds the code itself relies on.
"""

from __future__ import annotations

import struct

# Wire formats ---------------------------------------------------------------

# SPEC §9 canonical tap bytes: card_id u64, terminal_seq u64, list_amount_fen i64,
# occurred_at_ms i64, route_id u32, all big-endian.
TAP_STRUCT = struct.Struct(">QQqqI")
TAP_BYTES = TAP_STRUCT.size  # 36
assert TAP_BYTES == 36

# Packed tap result: status u8, charged_to u8, duplicate u8, 5 pad bytes,
# charged_fen i64, discount_fen i64, balance_after_fen i64, journal_seq u64 (BE).
RESULT_STRUCT = struct.Struct(">BBB5xqqqQ")
RESULT_BYTES = RESULT_STRUCT.size  # 40
assert RESULT_BYTES == 40

TERMINAL_ID_STRUCT = struct.Struct(">I")

# Ranges ---------------------------------------------------------------------

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
UINT64_MAX = 2**64 - 1
UINT32_MAX = 2**32 - 1

BP_SCALE = 10_000  # one basis point is 1/10,000
BP_MAX = 10_000  # no rate above 100 % (concessions, discounts, fees)

# An amount limit above this could overflow `amount * bp` in int64.
AMOUNT_LIMIT_FEN_MAX = INT64_MAX // BP_SCALE // 2

# Batches ----------------------------------------------------------------------

# Upper bound of the configurable max_batch_taps: keeps one journal record
# (taps + results, 76 bytes a tap) well under 8 MiB and one call under 10 ms.
BATCH_TAPS_MAX = 100_000
# gRPC message bound derived from it (taps, results and framing headroom).
GRPC_MESSAGE_BYTES_MAX = BATCH_TAPS_MAX * (TAP_BYTES + RESULT_BYTES) + 64 * 1024

# The ledger core indexes cards and tap records with 31-bit positions.
LEDGER_RECORDS_MAX = 2**31 - 1

# Terminal sequences (SPEC §5) -----------------------------------------------------

# A tap whose terminal_seq is more than this above its terminal's highest so far is
# refused (SEQUENCE_TOO_FAR_AHEAD) and does not count as received: one bad number
# would otherwise report ~1.8e19 missing taps for good. A validator that lost a
# week of records at one tap a second around the clock (604,800) still fits.
TERMINAL_SEQ_AHEAD_MAX = 1_000_000

# Card operations ----------------------------------------------------------------

QUOTED_INPUT_CHARS_MAX = 40  # a refusal quotes the caller's text (a date), cut to this
REQUEST_ID_BYTES_MAX = 128  # a UUID is 36; anything much longer is a client bug
CARD_HISTORY_ENTRIES_MAX = 1_000  # one dispute screen, not an export

# Journal --------------------------------------------------------------------------

JOURNAL_MAP_SIZE_BYTES_DEFAULT = 64 * 2**30  # sparse on Linux; raise for years of data
GROUP_COMMIT_ENTRIES_MAX = 256  # bounds one write transaction's size and latency
# Entries applied but not yet durable: past this the disk has stalled, and new writes are
# refused (UNAVAILABLE, retry) rather than held in memory without end (up to ~150 MiB here).
JOURNAL_BACKLOG_ENTRIES_MAX = 4_096
CHECKPOINT_EVERY_TAPS = 5_000_000  # restart replays at most this many taps (about 2 s here)
CHECKPOINTS_KEPT = 2  # the newest and one spare, in case the newest is torn
CHECKPOINT_CHILD_SECONDS_MAX = 300.0  # a checkpoint child slower than this is killed
# A failed write with less room than this left on the journal's filesystem is
# reported as "disk full" (LMDB reports a short write as EIO, not ENOSPC).
DISK_FULL_BYTES = 1 * 2**20
WRITER_LOCK_WAIT_SECONDS = 5.0  # a killed server's checkpoint child may hold it this long

MS_PER_SECOND = 1_000
MS_PER_HOUR = 3_600_000
MS_PER_DAY = 86_400_000
GAP_RANGES_MAX = 100  # GetTerminalStatus lists this many gap ranges, then says "truncated"

# Each business day passed is a journal entry written before the next write: one
# SetClock call (testing only) may move the manual clock at most a year ahead.
MANUAL_CLOCK_STEP_MS_MAX = 366 * 86_400_000

# gRPC ----------------------------------------------------------------------------------

# Error details echo what the caller sent (ids, dates); gRPC refuses trailers over
# 16 KiB, which would turn a clear refusal into RESOURCE_EXHAUSTED.
STATUS_DETAILS_CHARS_MAX = 1_000

STREAM_BATCHES_IN_FLIGHT_MAX = 64  # per stream: applied but not yet acknowledged
GRACE_SECONDS = 10.0  # shutdown: calls in flight get this long to finish

# Deny list ---------------------------------------------------------------------------

DENY_LIST_CHANGES_KEPT = 100_000  # a validator further behind than this gets the full list
TRANSFER_CHECK_SECONDS = 1.0  # how often the server looks for replacement transfers due

# Settlement ------------------------------------------------------------------------------

# Late OK taps are reported by how many days before the business day they occurred;
# the last bin holds that many days or more (max_late_days defaults to 7).
LATE_DAY_BINS = 8
SETTLEMENT_TOP_PARTIES = 10  # report.html lists this many merchants and operators
EXCEPTIONS_SHOWN_MAX = 500  # report.html shows this many exception rows; the CSV has them all

# Shutdown and TLS ------------------------------------------------------------------------

GRACE_SECONDS_MAX = 600.0  # a longer [server] grace_seconds is a typo; systemd would kill it first
# After NOT_SERVING and before streams are ended: health watchers get this long to hear it.
HEALTH_NOTICE_SECONDS = 0.2
TLS_FILE_BYTES_MAX = 2**20  # a PEM chain or key is kilobytes: a bigger file is not one

# The /metrics port ---------------------------------------------------------------

# A scrape's request line is "GET /metrics HTTP/1.1" (a few name[] filters at most),
# so 8 KiB is ample and bounds what a stranger makes a connection read; more is a 414.
METRICS_REQUEST_LINE_BYTES_MAX = 8192
# A client silent this long is dropped: a half-sent request holds no thread for ever
# (Prometheus' default scrape timeout is 10 s, and a scrape takes milliseconds).
METRICS_CLIENT_SECONDS_MAX = 10.0
# Connections served at once (a thread each); more are closed unanswered, so a flood
# of idle connections costs threads up to this bound, not without end.
METRICS_CONNECTIONS_MAX = 16
METRICS_LOGGED_TEXT_CHARS_MAX = 200  # a request line echoed in a debug line is cut here

# Page checks (clearing.storage.lmdb_check) --------------------------------------------------

# A hot verify or backup checks pages while a server commits: a meta page read in the
# middle of its write looks damaged, so the check is tried once more after this.
LMDB_CHECK_RETRY_SECONDS = 0.05

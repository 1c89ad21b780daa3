"""The engine behind the network: start-up replay, durable answers, checkpoints.

All engine calls happen on the event loop thread, one at a time, so entries
are applied and queued to the journal in sequence order; an answer is
returned only after the journal's writer thread has committed its entry.
"""

from __future__ import annotations

import asyncio
from typing import NamedTuple

import structlog

from clearing.codes import CardOpStatus
from clearing.core.ledger import Ledger
from clearing.core.summary import summarise
from clearing.domain.card_operations import CardRequest
from clearing.domain.deny_list import Change
from clearing.domain.engine import CardAnswer, Engine
from clearing.domain.entries import Body, Envelope, SeedEntry, TapBatchEntry, token_digest
from clearing.errors import ClearingError, Refusal, RequestRejected, StorageError
from clearing.limits import (
    GAP_RANGES_MAX,
    JOURNAL_BACKLOG_ENTRIES_MAX,
    RESULT_STRUCT,
    TRANSFER_CHECK_SECONDS,
)
from clearing.runtime.clock import ManualClock, SystemClock
from clearing.runtime.config import Config
from clearing.runtime.config_entry import config_entry
from clearing.runtime.startup import load_engine
from clearing.storage.checkpoints import forked_builder
from clearing.storage.journal import Journal, journal_path

log = structlog.get_logger("clearing.runtime.service")


class Principal(NamedTuple):
    role: str  # TERMINAL HALL AGENT FINANCE ADMIN
    party: str  # the caller's party ("" for FINANCE / ADMIN)
    terminal_id: int  # TERMINAL only


class TerminalStatus(NamedTuple):
    terminal_id: int
    terminal_class: str
    party_id: str
    last_seq: int
    received_count: int
    gap_count: int
    gaps: list[tuple[int, int]]
    gaps_truncated: bool


class Service:
    def __init__(self, config: Config, *, ledger_class: type | None = None) -> None:
        self.config = config
        self.clock: SystemClock | ManualClock = (
            ManualClock(config.server.manual_clock_start_ms or SystemClock().now_ms())
            if config.server.manual_clock
            else SystemClock()
        )
        self.journal = Journal(journal_path(config.server.data_dir), config.server.map_size_bytes)
        self._new_engine = (lambda: Engine(ledger_class)) if ledger_class else Engine
        self.engine = self._new_engine()
        self._principals = {
            token_digest(p.token): Principal(p.role, p.party, 0) for p in config.principals
        }
        self.serving = False
        self.replayed = 0  # entries replayed at the last start (after the checkpoint)
        self._ticker: asyncio.Task | None = None
        self.fault: str | None = None  # set when the engine failed mid-write
        self._deny_durable_version = 0  # deny-list version whose entries are all durable
        self._deny_changed = asyncio.Event()  # set (and replaced) when that version moves
        self._deny_full: tuple[int, list[tuple[int, str]]] = (-1, [])  # (version, sorted list)

    # Start-up ---------------------------------------------------------------------------------

    def load(self, *, apply_config: bool = True) -> None:
        """Replay the journal, then journal the configuration if it changed
        (offline tools pass ``apply_config=False``: the journal's stands)."""
        try:
            self.engine, self.replayed = load_engine(self.journal, self._new_engine)
        except Exception:
            self.journal.close()
            raise
        log.info("journal replayed", entries=self.replayed, last_seq=self.engine.last_seq)
        self._close_days_now()  # days that ended while the server was down
        wanted = config_entry(self.config)
        if apply_config and self.engine.registry.differs_from(wanted):
            self._append_now(wanted)
        seed = self.config.seed
        if apply_config and seed.cards and self.engine.ledger.card_count() == 0:
            self._append_now(
                SeedEntry(seed.first_card_id, seed.cards, seed.opening_balance_fen, seed.hall)
            )
        if isinstance(self.clock, ManualClock):
            self.clock.set(max(self.clock.now_ms(), self.engine.last_accepted_ms))
        server = self.config.server
        self.engine.ledger.reserve(server.reserve_cards, server.reserve_taps)

    def _append_now(self, body: Body) -> None:
        env = self.engine.admin(body, self.clock.now_ms())
        self.journal.append_now(env.seq, env.accepted_at_ms, env.body)

    def _close_days_now(self) -> None:
        while (env := self.engine.close_day(self.clock.now_ms())) is not None:
            self.journal.append_now(env.seq, env.accepted_at_ms, env.body)

    async def start(self) -> None:
        self.journal.start_writer(asyncio.get_running_loop())
        self.serving = True
        self._deny_durable_version = self.engine.book.deny.version
        self.catch_up(self.clock.now_ms())  # days and holds that ended while it was down
        self._ticker = asyncio.create_task(self._tick_forever())

    async def _tick_forever(self) -> None:
        """Time alone ends business days and makes transfers fall due: wake when the
        next one is due (at least once a second) and journal it."""
        while self.serving:
            await asyncio.sleep(self._seconds_to_next_event())
            if self.serving and self.fault is None and self.journal.failure is None:
                try:
                    self.catch_up(self.clock.now_ms())
                except StorageError:
                    pass  # the fault is recorded and reported; writes are refused
                except Exception:  # the ticker must outlive anything; writes catch up too
                    log.exception("catching up failed; retrying at the next tick")

    def _seconds_to_next_event(self) -> float:
        now = self.clock.now_ms()
        events = [self.engine.book.next_due_ms(), self.engine.days.next_event_ms()]
        soonest = min((ms for ms in events if ms is not None), default=None)
        if soonest is None or self.clock.manual:
            return TRANSFER_CHECK_SECONDS
        return min(TRANSFER_CHECK_SECONDS, max(0.0, (soonest - now) / 1000))

    async def stop(self) -> None:
        """Commit what is queued, checkpoint, close LMDB."""
        self.serving = False
        if self._ticker is not None:
            self._ticker.cancel()
        try:
            # A faulted engine's memory is not the journal's state: never checkpoint it.
            if self.journal.failure is None and self.fault is None:
                await self.journal.wait_durable()
                if self.engine.taps_since_checkpoint:
                    self._checkpoint()
        finally:
            self.journal.close()

    # Principals ---------------------------------------------------------------

    def principal(self, token: str) -> Principal | None:
        found = self._principals.get(token_digest(token))
        if found is not None:
            return found
        terminal = self.engine.registry.terminal_for_token(token)
        if terminal is None:
            return None
        return Principal("TERMINAL", terminal.party_id, terminal.terminal_id)

    # Writes ---------------------------------------------------------------

    def _apply(self, method, *args):
        """Run one engine write. Anything but a clean refusal may have left the
        in-memory state half-changed: stop acknowledging until a restart replays
        the journal (which never saw the failed entry)."""
        try:
            return method(*args)
        except ClearingError:
            raise  # refused before anything changed
        except Exception as exc:
            self.fault = f"engine fault after entry {self.engine.last_seq}: {exc!r}; restart"
            log.error("engine fault: no more work is acknowledged", reason=self.fault)
            raise StorageError(self.fault) from exc

    def check_serving(self) -> int:
        """Every write starts here: refuse when not serving, then close ended days and
        run due transfers. Returns the clock reading the write must use, so that
        nothing can fall due between this catch-up and the write."""
        if self.fault is not None:
            raise StorageError(self.fault)
        if self.journal.failure is not None:
            raise StorageError(self.journal.failure)
        if not self.serving:
            raise RequestRejected(
                Refusal.UNAVAILABLE, "the server is not serving (starting or stopping)"
            )
        if self.journal.backlog_entries >= JOURNAL_BACKLOG_ENTRIES_MAX:
            raise RequestRejected(
                Refusal.UNAVAILABLE,
                f"the journal's disk is {self.journal.backlog_entries} entries behind: "
                "nothing was applied, retry shortly",
            )
        now_ms = self.clock.now_ms()
        if self.engine.book.pending or self.engine.day_close_due(now_ms):
            self.catch_up(now_ms)
        return now_ms

    def catch_up(self, now_ms: int | None = None) -> None:
        """Journal what time alone made due by ``now_ms``, in time order: a day's
        close before any entry stamped after its cutoff, and replacement transfers
        in the day they fell due (unless the server was down through its end)."""
        now_ms = self.clock.now_ms() if now_ms is None else now_ms
        while True:
            if self.engine.day_close_due(now_ms):
                env = self._apply(self.engine.close_day, now_ms)
            else:
                due = self.engine.book.due_transfers(now_ms)
                if not due:
                    return
                env = self._apply(self.engine.transfer, due[0][0], now_ms)
            self._append(env).add_done_callback(_ignore_result)

    def _checkpoint(self) -> None:
        """Queue a checkpoint of this instant, written by a forked child (see
        clearing.storage.checkpoints). One that cannot be taken costs replay time, nothing else."""
        try:
            build = forked_builder(self.engine, self.journal.checkpoints.path)
        except OSError as exc:  # e.g. no memory to fork: try again after the next interval
            self.engine.taps_since_checkpoint = 0
            log.warning("checkpoint not taken", reason=repr(exc))
            return
        self.journal.append_checkpoint(build)

    def _append(self, env: Envelope) -> asyncio.Future[Envelope]:
        """Queue an entry just applied, so the journal keeps the engine's order.

        Called synchronously right after the engine applied ``env``; the
        returned future completes once the entry is durable.
        """
        deny_version = self.engine.book.deny.version  # as of this entry
        committed = self.journal.append(env.seq, env.accepted_at_ms, env.body)
        if self.engine.taps_since_checkpoint >= self.config.server.checkpoint_every_taps:
            self._checkpoint()
        durable = asyncio.ensure_future(self._durable(env, committed, deny_version))
        return asyncio.shield(durable)  # a cancelled caller leaves the bookkeeping running

    async def _durable(
        self, env: Envelope, committed: asyncio.Future, deny_version: int
    ) -> Envelope:
        # Shielded: a caller whose deadline expires must not cancel the commit
        # future, which later reads and repeats wait on.
        await asyncio.shield(committed)
        if deny_version > self._deny_durable_version:
            self._deny_durable_version = deny_version
            self._deny_changed.set()
            self._deny_changed = asyncio.Event()
        return env

    def submit_taps_nowait(self, terminal_id: int, packed_taps: bytes) -> asyncio.Future[Envelope]:
        """Apply a checked batch now; the future gives its entry once durable.

        Streams use this to keep several batches in flight, in order. A batch
        whose every tap repeats a recorded one (a retry, or a replay) changes
        nothing: it is answered from the records and journals nothing.
        """
        now_ms = self.check_serving()
        repeated = self.engine.ledger.repeated_results(terminal_id, packed_taps)
        if repeated is not None:
            return asyncio.ensure_future(self._repeated(terminal_id, packed_taps, repeated))
        env = self._apply(self.engine.tap_batch, terminal_id, packed_taps, now_ms)
        return self._append(env)

    async def _repeated(self, terminal_id: int, packed_taps: bytes, results: bytes) -> Envelope:
        """A repeated batch's answer, once the entries it repeats are durable; it
        names the newest of them as its entry."""
        await self.durable()
        seq = max(result[-1] for result in RESULT_STRUCT.iter_unpack(results))
        body = TapBatchEntry(terminal_id, packed_taps, results)
        return Envelope(seq, self.journal.accepted_at_ms(seq), b"", body)

    async def submit_taps(self, terminal_id: int, packed_taps: bytes) -> Envelope:
        return await self.submit_taps_nowait(terminal_id, packed_taps)

    async def card_op(
        self, request_id: str, method: str, channel: str, card_id: int, args: tuple[int, ...]
    ) -> tuple[CardAnswer, bool]:
        """(answer, duplicate): a repeat of request_id answers from memory."""
        req = CardRequest(method, card_id, args, channel, self.check_serving())
        env, answer = self._apply(self.engine.card_op, request_id, req)
        if env is None:
            await self.journal.wait_durable()  # the original answer must be durable too
            return answer, answer.status != CardOpStatus.ID_CONFLICT  # a conflict is no repeat
        await self._append(env)
        return answer, False

    async def admin(self, body: Body) -> Envelope:
        now_ms = self.check_serving()
        return await self._append(self._apply(self.engine.admin, body, now_ms))

    # The core's screen and the batch summary, for servicers that do not import the core.
    first_invalid_tap = staticmethod(Ledger.first_invalid_tap)

    @staticmethod
    def batch_summary(envelope: Envelope) -> list[int]:  # clearing.core.summary's vector
        body = envelope.body
        return summarise(body.packed_taps, body.packed_results, envelope.seq, 0, 0)  # type: ignore[union-attr]

    def deny_list_version(self) -> int:
        return self._deny_durable_version

    async def deny_list(
        self, since_version: int
    ) -> tuple[int, list[Change] | None, list[tuple[int, str]] | None]:
        """(version, changes since ``since_version`` or None, full list when changes are None).

        All three are read at one instant, then the read waits until they are durable.
        """
        deny = self.engine.book.deny
        version, changes = deny.version, deny.delta_since(since_version)
        entries = None if changes is not None else self._deny_entries(version)
        await self.durable()
        return version, changes, entries

    def _deny_entries(self, version: int) -> list[tuple[int, str]]:
        if self._deny_full[0] != version:  # sorting 200,000 cards is worth caching
            self._deny_full = (version, sorted(self.engine.book.deny.listed.items()))
        return self._deny_full[1]

    async def deny_list_changes_after(self, version: int) -> list[Change] | None:
        """Wait until the durable version passes ``version``; the changes up to it."""
        while self._deny_durable_version <= version:
            if not self.serving:
                raise RequestRejected(Refusal.UNAVAILABLE, "the server is stopping")
            changed = self._deny_changed
            try:
                await asyncio.wait_for(changed.wait(), TRANSFER_CHECK_SECONDS)
            except TimeoutError:
                continue
        changes = self.engine.book.deny.delta_since(version)
        if changes is None:
            return None
        return [c for c in changes if c.version <= self._deny_durable_version]

    async def card_history(self, card_id: int, limit: int) -> list[tuple[int, str, object]]:
        """The card's newest journal entries, newest first: (seq, kind, detail)."""
        taps = [(t[0], "TAP", t) for t in self.engine.ledger.card_taps(card_id, limit)]
        seqs = self.engine.book.op_seqs.get(card_id, [])[-limit:]
        await self.durable()  # now every seq above is in the journal
        ops = [(seq, "OP", self.journal.get(seq)) for seq in seqs]
        return sorted(taps + ops, key=lambda item: item[0], reverse=True)[:limit]

    # Reads ---------------------------------------------------------------

    async def durable(self) -> None:
        """Reads look first, then wait here until what they saw is durable.

        (Looking after the wait would see entries applied meanwhile, not yet durable.)
        """
        if self.journal.failure is not None:
            raise StorageError(self.journal.failure)
        await self.journal.wait_durable()

    async def get_card(self, card_id: int) -> tuple[int, int, int, int, int] | None:
        card = self.engine.ledger.card(card_id)
        await self.durable()
        return card

    async def terminal_status(self, terminal_id: int) -> TerminalStatus | None:
        terminal = self.engine.registry.terminals.get(terminal_id)
        if terminal is None:
            return None
        last_seq, received = self.engine.ledger.terminal_status(terminal_id)
        gaps = self.engine.ledger.terminal_gaps(terminal_id, GAP_RANGES_MAX + 1)  # no scan
        await self.durable()
        return TerminalStatus(
            terminal_id,
            terminal.terminal_class,
            terminal.party_id,
            last_seq,
            received,
            last_seq - received,
            gaps[:GAP_RANGES_MAX],
            len(gaps) > GAP_RANGES_MAX,
        )


def _ignore_result(future: asyncio.Future) -> None:
    """A background commit's failure is sticky in the journal; nothing to do here."""
    if not future.cancelled():
        future.exception()

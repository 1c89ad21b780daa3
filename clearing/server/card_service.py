"""CardService: hall and agent operations (SPEC §6)."""

from __future__ import annotations

from typing import cast

from clearing.codes import CardOpStatus, ChargedTo, TapStatus
from clearing.domain.card_book import CardBook
from clearing.domain.card_operations import masked
from clearing.domain.engine import CardAnswer
from clearing.domain.entries import CardOpEntry, TransferEntry
from clearing.errors import Refusal, RequestRejected
from clearing.limits import CARD_HISTORY_ENTRIES_MAX
from clearing.runtime.service import Principal, Service
from clearing.server.auth import rpc
from clearing.v1 import cards_pb2, cards_pb2_grpc

CARD_HISTORY_ENTRIES_DEFAULT = 50


def card_message(
    card_id: int, card: tuple[int, int, int, int, int] | None, book: CardBook
) -> cards_pb2.Card:
    if card is None:
        return cards_pb2.Card(card_id=card_id)
    state, card_type, balance_fen, deposit_fen, blocked_at_ms = card
    message = cards_pb2.Card(
        card_id=card_id,
        card_type=cast("cards_pb2.CardType", card_type),  # the proto's numbers (codes.py)
        state=cast("cards_pb2.CardState", state),
        balance_fen=balance_fen,
        deposit_fen=deposit_fen,
        blocked_at_ms=blocked_at_ms,
    )
    replacement = book.replacements.get(card_id)
    if replacement is not None:
        message.replaced_by = replacement.new_card_id
        if card_id in book.pending:
            message.transfer_due_at_ms = replacement.due_at_ms
    return message


def card_reply(
    request_id: str, card_id: int, answer: CardAnswer, duplicate: bool, book: CardBook
) -> cards_pb2.CardReply:
    return cards_pb2.CardReply(
        status=cast("cards_pb2.CardReply.Status", answer.status),
        message=answer.message,
        card=card_message(card_id, answer.card, book),
        journal_seq=answer.journal_seq,
        accepted_at_ms=answer.accepted_at_ms,
        amount_fen=answer.amount_fen,
        request_id=request_id,
        duplicate=duplicate,
    )


class CardServicer(cards_pb2_grpc.CardServiceServicer):
    def __init__(self, service: Service, metrics) -> None:
        self.service = service
        self.metrics = metrics

    async def _op(self, method: str, request, principal: Principal, args: tuple[int, ...]):
        answer, duplicate = await self.service.card_op(
            request.request_id, method, principal.party, request.card_id, args
        )
        self.metrics.card_ops.labels(method, cards_pb2.CardReply.Status.Name(answer.status)).inc()
        book = self.service.engine.book
        return card_reply(request.request_id, request.card_id, answer, duplicate, book)

    @rpc("CardService/IssueCard")
    async def IssueCard(self, request, context, principal):
        return await self._op(
            "IssueCard", request, principal, (request.card_type, request.deposit_fen)
        )

    @rpc("CardService/TopUp")
    async def TopUp(self, request, context, principal):
        return await self._op("TopUp", request, principal, (request.amount_fen,))

    @rpc("CardService/ReportLoss")
    async def ReportLoss(self, request, context, principal):
        return await self._op("ReportLoss", request, principal, ())

    @rpc("CardService/CancelLoss")
    async def CancelLoss(self, request, context, principal):
        return await self._op("CancelLoss", request, principal, ())

    @rpc("CardService/CloseCard")
    async def CloseCard(self, request, context, principal):
        return await self._op("CloseCard", request, principal, ())

    @rpc("CardService/ReplaceCard")
    async def ReplaceCard(self, request, context, principal):
        return await self._op("ReplaceCard", request, principal, (request.new_card_id,))

    @rpc("CardService/GetCardHistory")
    async def GetCardHistory(self, request, context, principal):
        limit = request.limit or CARD_HISTORY_ENTRIES_DEFAULT
        if limit > CARD_HISTORY_ENTRIES_MAX:
            raise RequestRejected(
                Refusal.INVALID_ARGUMENT, f"limit must be at most {CARD_HISTORY_ENTRIES_MAX}"
            )
        if await self.service.get_card(request.card_id) is None:
            raise RequestRejected(Refusal.NOT_FOUND, f"no card {masked(request.card_id)}")
        items = await self.service.card_history(request.card_id, limit)
        return cards_pb2.CardHistory(
            card_id=request.card_id,
            entries=[self._history_entry(request.card_id, *item) for item in items],
        )

    def _history_entry(self, card_id: int, seq: int, kind: str, item) -> cards_pb2.CardHistoryEntry:
        entry = cards_pb2.CardHistoryEntry(
            journal_seq=seq, accepted_at_ms=self.service.journal.accepted_at_ms(seq)
        )
        if kind == "TAP":
            _, terminal_id, terminal_seq, _, occurred, status, charged_to, charged, balance = item
            entry.kind = "TAP"
            entry.detail = (
                f"terminal {terminal_id} seq {terminal_seq} at {occurred}: {TapStatus(status).name}"
                + (" (hot-list loss)" if charged_to == ChargedTo.ISSUER_LOSS else "")
            )
            entry.amount_fen, entry.balance_after_fen = charged, balance
            return entry
        body = item.body
        if isinstance(body, TransferEntry):
            incoming = body.new_card_id == card_id
            entry.kind = "TRANSFER"
            entry.detail = f"balance of {masked(body.old_card_id)} to {masked(body.new_card_id)}"
            entry.amount_fen = body.amount_fen if incoming else -body.amount_fen
            return entry
        assert isinstance(body, CardOpEntry)
        entry.kind = body.method
        entry.detail = CardOpStatus(body.status).name + (
            f" at {body.channel}" if body.channel else ""
        )
        entry.amount_fen = body.amount_fen
        answer = self.service.engine.answers.get(body.request_id)
        if answer is not None and answer.card is not None and body.card_id == card_id:
            entry.balance_after_fen = answer.card[2]
        return entry

    @rpc("CardService/GetCard")
    async def GetCard(self, request, context, principal):
        card = await self.service.get_card(request.card_id)
        if card is None:
            raise RequestRejected(Refusal.NOT_FOUND, f"no card {masked(request.card_id)}")
        return card_message(request.card_id, card, self.service.engine.book)

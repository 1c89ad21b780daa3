"""CardService: hall and agent operations (SPEC §6)."""

from __future__ import annotations

from clearing.engine import CardAnswer
from clearing.errors import RequestRejected
from clearing.server.auth import rpc
from clearing.service import Principal, Service
from clearing.v1 import cards_pb2, cards_pb2_grpc


def card_message(card_id: int, card: tuple[int, int, int, int, int] | None) -> cards_pb2.Card:
    if card is None:
        return cards_pb2.Card(card_id=card_id)
    state, card_type, balance_fen, deposit_fen, blocked_at_ms = card
    return cards_pb2.Card(
        card_id=card_id,
        card_type=card_type,
        state=state,
        balance_fen=balance_fen,
        deposit_fen=deposit_fen,
        blocked_at_ms=blocked_at_ms,
    )


def card_reply(
    request_id: str, card_id: int, answer: CardAnswer, duplicate: bool
) -> cards_pb2.CardReply:
    return cards_pb2.CardReply(
        status=answer.status,
        message=answer.message,
        card=card_message(card_id, answer.card),
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
        return card_reply(request.request_id, request.card_id, answer, duplicate)

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
        raise RequestRejected("UNIMPLEMENTED", "ReplaceCard arrives with the card lifecycle")

    @rpc("CardService/GetCardHistory")
    async def GetCardHistory(self, request, context, principal):
        raise RequestRejected("UNIMPLEMENTED", "GetCardHistory arrives with the card lifecycle")

    @rpc("CardService/GetCard")
    async def GetCard(self, request, context, principal):
        card = await self.service.get_card(request.card_id)
        if card is None:
            raise RequestRejected("NOT_FOUND", f"no card {request.card_id}")
        return card_message(request.card_id, card)

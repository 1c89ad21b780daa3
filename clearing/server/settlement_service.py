"""SettlementService: the nightly settlement for the finance team (SPEC §8)."""

from __future__ import annotations

from clearing.runtime.service import Service
from clearing.server.auth import rpc
from clearing.settlement.figures import ISSUER_ID, issuer_direction
from clearing.settlement.runner import Settled, Settlements
from clearing.v1 import admin_pb2, settlement_pb2, settlement_pb2_grpc

_ISSUER_FIELDS = tuple(settlement_pb2.IssuerBreakdown.DESCRIPTOR.fields_by_name)
Direction = settlement_pb2.PartySettlement.Direction


def settlement_message(settled: Settled) -> settlement_pb2.Settlement:
    manifest = settled.manifest
    counts, totals = manifest["counts"], manifest["totals"]
    reply = settlement_pb2.Settlement(
        business_date=settled.business_date,
        first_seq=settled.first_seq,
        last_seq=settled.last_seq,
        settled_journal_seq=settled.settled_seq,
        manifest_sha256=settled.manifest_sha256,
        output_dir=settled.directory,
        issuer=settlement_pb2.IssuerBreakdown(
            **{name: manifest["issuer"][name] for name in _ISSUER_FIELDS}
        ),
        tap_count=counts["taps"]["taps"],
        payment_count=counts["payments"],
        exception_count=counts["exceptions"],
        total_paid_fen=totals["paid_fen"],
        total_collected_fen=totals["collected_fen"],
    )
    add = reply.parties.add
    for row in settled.rows:
        add(
            party_id=row.party_id,
            role=admin_pb2.PartyRole.Value(row.role),
            count=row.count,
            list_fen=row.list_fen,
            discount_fen=row.discount_fen,
            gross_fen=row.gross_fen,
            fee_fen=row.fee_fen,
            net_fen=row.net_fen,
            # The issuer neither pays nor collects from itself: as summary.csv says it.
            direction=Direction.Value(
                issuer_direction(row.net_fen) if row.party_id == ISSUER_ID else row.direction
            ),
            bank_account=row.bank_account,
        )
    return reply


class SettlementServicer(settlement_pb2_grpc.SettlementServiceServicer):
    def __init__(self, service: Service, settlements: Settlements) -> None:
        self.service = service
        self.settlements = settlements

    @rpc("SettlementService/RunSettlement")
    async def RunSettlement(self, request, context, principal):
        return settlement_message(await self.settlements.run(request.business_date))

    @rpc("SettlementService/GetSettlement")
    async def GetSettlement(self, request, context, principal):
        return settlement_message(await self.settlements.get(request.business_date))

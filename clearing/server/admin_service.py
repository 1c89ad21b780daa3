"""AdminService: parties, terminals, merchant rules, concessions, terminal status."""

from __future__ import annotations

import msgspec

from clearing.codes import CARD_TYPE_NAMES
from clearing.domain.entries import (
    ConcessionEntry,
    MerchantRuleEntry,
    PartyEntry,
    PartyRecord,
    TerminalEntry,
    TerminalRecord,
    token_digest,
)
from clearing.errors import ConfigError, Refusal, RequestRejected
from clearing.limits import BP_MAX, MANUAL_CLOCK_STEP_MS_MAX, MS_PER_DAY
from clearing.runtime.config import (
    MERCHANT_DISCOUNT_BP_MIN,
    PartyConfig,
    TerminalConfig,
    validate_parties,
    validate_terminals,
)
from clearing.runtime.service import Service
from clearing.server.auth import rpc
from clearing.v1 import admin_pb2, admin_pb2_grpc


def _convert(kind: type, fields: dict, what: str):
    try:
        return msgspec.convert(fields, kind)
    except msgspec.ValidationError as exc:
        raise RequestRejected(Refusal.INVALID_ARGUMENT, f"{what}: {exc}") from exc


def _admin_reply(envelope) -> admin_pb2.AdminReply:
    return admin_pb2.AdminReply(journal_seq=envelope.seq, accepted_at_ms=envelope.accepted_at_ms)


def _enum_name(enum, value: int, field: str) -> str:
    """The name of a proto enum value; INVALID_ARGUMENT for a number it does not define
    (proto3 keeps unknown enum numbers as they came)."""
    try:
        return enum.Name(value)
    except ValueError:
        raise RequestRejected(
            Refusal.INVALID_ARGUMENT, f"{field} {value} is not one of {', '.join(enum.keys()[1:])}"
        ) from None


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, service: Service) -> None:
        self.service = service

    @property
    def _registry(self):
        return self.service.engine.registry

    @rpc("AdminService/UpsertParty")
    async def UpsertParty(self, request, context, principal):
        party = _convert(
            PartyConfig,
            {
                "id": request.party_id,
                "role": _enum_name(admin_pb2.PartyRole, request.role, "role"),
                "fee_bp": request.fee_bp,
                "fee_per_bill_fen": request.fee_per_bill_fen,
                "commission_bp": request.commission_bp,
                "discount_bp": request.discount_bp or BP_MAX,
                "bank_account": request.bank_account,
            },
            "party",
        )
        validate_parties([party], "UpsertParty")
        old = self._registry.parties.get(party.id)
        if old is not None and old.role != party.role:
            raise RequestRejected(Refusal.FAILED_PRECONDITION, f"party {party.id} is a {old.role}")
        record = PartyRecord(
            party.id,
            party.role,
            party.fee_bp,
            party.fee_per_bill_fen,
            party.commission_bp,
            party.discount_bp,
            party.bank_account,
        )
        return _admin_reply(await self.service.admin(PartyEntry(record)))

    @rpc("AdminService/ListParties")
    async def ListParties(self, request, context, principal):
        reply = admin_pb2.PartyList(
            parties=[
                admin_pb2.Party(
                    party_id=p.party_id,
                    role=admin_pb2.PartyRole.Value(p.role),
                    fee_bp=p.fee_bp,
                    fee_per_bill_fen=p.fee_per_bill_fen,
                    commission_bp=p.commission_bp,
                    discount_bp=p.discount_bp,
                    bank_account=p.bank_account,
                )
                for p in self._registry.parties.values()
            ]
        )
        await self.service.durable()  # after looking: what was seen is durable
        return reply

    @rpc("AdminService/UpsertTerminal")
    async def UpsertTerminal(self, request, context, principal):
        terminal = _convert(
            TerminalConfig,
            {
                "id": request.terminal_id,
                "class": _enum_name(
                    admin_pb2.TerminalClass, request.terminal_class, "terminal_class"
                ),
                "party": request.party_id,
                "key_hex": request.key_hex,
                "token": request.token,
            },
            "terminal",
        )
        roles = {pid: p.role for pid, p in self._registry.parties.items()}
        validate_terminals([terminal], roles, "UpsertTerminal")
        holder = self.service.principal(terminal.token)
        if holder is not None and holder.terminal_id != terminal.id:
            raise RequestRejected(Refusal.ALREADY_EXISTS, "that token belongs to another principal")
        record = TerminalRecord(
            terminal.id,
            terminal.terminal_class,
            terminal.party,
            bytes.fromhex(terminal.key_hex),
            token_digest(terminal.token),
        )
        return _admin_reply(await self.service.admin(TerminalEntry(record)))

    @rpc("AdminService/ListTerminals")
    async def ListTerminals(self, request, context, principal):
        reply = admin_pb2.TerminalList(
            terminals=[
                admin_pb2.Terminal(
                    terminal_id=t.terminal_id,
                    terminal_class=admin_pb2.TerminalClass.Value(t.terminal_class),
                    party_id=t.party_id,
                )
                for t in self._registry.terminals.values()
            ]
        )
        await self.service.durable()  # after looking: what was seen is durable
        return reply

    @rpc("AdminService/AddMerchantRule")
    async def AddMerchantRule(self, request, context, principal):
        party = self._registry.parties.get(request.party_id)
        if party is None or party.role != "MERCHANT":
            raise RequestRejected(Refusal.NOT_FOUND, f"no merchant {request.party_id!r}")
        if not MERCHANT_DISCOUNT_BP_MIN <= request.discount_bp <= BP_MAX:
            raise ConfigError(f"discount_bp must be in {MERCHANT_DISCOUNT_BP_MIN}..{BP_MAX}")
        if request.effective_from_ms < 0:
            raise ConfigError("effective_from_ms must be 0 or later")
        rule = MerchantRuleEntry(request.party_id, request.effective_from_ms, request.discount_bp)
        return _admin_reply(await self.service.admin(rule))

    @rpc("AdminService/ListMerchantRules")
    async def ListMerchantRules(self, request, context, principal):
        reply = admin_pb2.MerchantRuleList(
            rules=[
                admin_pb2.MerchantRule(party_id=pid, effective_from_ms=ms, discount_bp=bp)
                for pid, versions in sorted(self._registry.rules.items())
                for ms, bp in sorted(versions.items())
            ]
        )
        await self.service.durable()  # after looking: what was seen is durable
        return reply

    @rpc("AdminService/SetConcession")
    async def SetConcession(self, request, context, principal):
        if request.card_type not in CARD_TYPE_NAMES:
            raise ConfigError(f"card_type must be one of {', '.join(CARD_TYPE_NAMES)}")
        if not 0 <= request.concession_bp <= BP_MAX:
            raise ConfigError(f"concession_bp must be in 0..{BP_MAX}")
        entry = ConcessionEntry(request.card_type, request.concession_bp)
        return _admin_reply(await self.service.admin(entry))

    @rpc("AdminService/ListConcessions")
    async def ListConcessions(self, request, context, principal):
        settings = self._registry.settings
        reply = admin_pb2.ConcessionList(
            concessions=[
                admin_pb2.Concession(card_type=name, concession_bp=settings.concession_bp[name])
                for name in CARD_TYPE_NAMES
            ]
        )
        await self.service.durable()  # after looking: what was seen is durable
        return reply

    @rpc("AdminService/GetTerminalStatus")
    async def GetTerminalStatus(self, request, context, principal):
        status = await self.service.terminal_status(request.terminal_id)
        if status is None:
            raise RequestRejected(Refusal.NOT_FOUND, f"no terminal {request.terminal_id}")
        return admin_pb2.TerminalStatus(
            terminal_id=status.terminal_id,
            terminal_class=admin_pb2.TerminalClass.Value(status.terminal_class),
            party_id=status.party_id,
            last_seq=status.last_seq,
            received_count=status.received_count,
            gap_count=status.gap_count,
            gaps=[admin_pb2.SeqRange(first=a, last=b) for a, b in status.gaps],
            gaps_truncated=status.gaps_truncated,
        )

    @rpc("AdminService/SetClock")
    async def SetClock(self, request, context, principal):
        clock = self.service.clock
        if not clock.manual:
            raise RequestRejected(
                Refusal.FAILED_PRECONDITION,
                "SetClock needs [server] manual_clock = true (testing only)",
            )
        ahead_ms = request.now_ms - clock.now_ms()
        if request.now_ms <= 0 or ahead_ms > MANUAL_CLOCK_STEP_MS_MAX:
            raise RequestRejected(
                Refusal.INVALID_ARGUMENT,
                f"now_ms {request.now_ms} must be positive and at most "
                f"{MANUAL_CLOCK_STEP_MS_MAX // MS_PER_DAY} days ahead of the clock "
                f"({clock.now_ms()}): every day passed is journaled",
            )
        clock.set(request.now_ms)
        return admin_pb2.ClockReply(now_ms=clock.now_ms())

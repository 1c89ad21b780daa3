"""The built-in demo city: the reference city of SPEC §1 and §12.

3 bus operators, 600 merchants, 4 utilities, 42 agents, 5 halls and 210,000
cards. Tokens and keys are derived from public names: this configuration is
for trying the engine out, never for production.
"""

from __future__ import annotations

import hashlib

from clearing.runtime.config import (
    Config,
    PartyConfig,
    PrincipalConfig,
    SeedSettings,
    TerminalConfig,
    validate,
)

OPERATORS = ("op-bus-1", "op-bus-2", "op-bus-3")
UTILITIES = ("u-water", "u-power", "u-gas", "u-telecom")
MERCHANT_COUNT = 600
AGENT_COUNT = 42
HALL_COUNT = 5
CARD_COUNT = 210_000
VALIDATORS_PER_OPERATOR = 100

VALIDATOR_ID_BASE = 10_000  # 10001.. : validators, 100 per operator
POS_ID_BASE = 30_000  # 30001..30600: one POS per merchant (m-0001..)
BILLING_ID_BASE = 50_000  # 50001..50004: one billing terminal per utility

FINANCE_TOKEN = "demo-token-finance"
ADMIN_TOKEN = "demo-token-admin"


def terminal_token(terminal_id: int) -> str:
    return f"demo-token-terminal-{terminal_id}"


def terminal_key(terminal_id: int) -> bytes:
    return hashlib.sha256(f"demo-key-{terminal_id}".encode()).digest()


def principal_token(party_id: str) -> str:
    return f"demo-token-{party_id}"


def merchant_id(n: int) -> str:
    return f"m-{n:04d}"


def _bank(n: int) -> str:
    return f"62220200{n:08d}"


def _parties() -> list[PartyConfig]:
    parties = [
        PartyConfig(id=op, role="OPERATOR", fee_bp=50 + 10 * i, bank_account=_bank(1 + i))
        for i, op in enumerate(OPERATORS)
    ]
    parties += [
        PartyConfig(
            id=merchant_id(n),
            role="MERCHANT",
            fee_bp=60 + (n % 5) * 20,
            discount_bp=6_800 + (n * 37 % 28) * 100,  # 6.8 .. 9.5 折
            bank_account=_bank(1_000 + n),
        )
        for n in range(1, MERCHANT_COUNT + 1)
    ]
    parties += [
        PartyConfig(id=u, role="UTILITY", fee_per_bill_fen=30 + 10 * i, bank_account=_bank(100 + i))
        for i, u in enumerate(UTILITIES)
    ]
    parties += [
        PartyConfig(
            id=f"agent-{n:02d}",
            role="AGENT",
            commission_bp=30 + (n % 3) * 10,
            bank_account=_bank(200 + n),
        )
        for n in range(1, AGENT_COUNT + 1)
    ]
    parties += [PartyConfig(id=f"hall-{n}", role="HALL") for n in range(1, HALL_COUNT + 1)]
    return parties


def _terminal(terminal_id: int, terminal_class: str, party: str) -> TerminalConfig:
    return TerminalConfig(
        id=terminal_id,
        terminal_class=terminal_class,  # type: ignore[arg-type]
        party=party,
        key_hex=terminal_key(terminal_id).hex(),
        token=terminal_token(terminal_id),
    )


def validator_ids(operator_index: int) -> range:
    first = VALIDATOR_ID_BASE + operator_index * VALIDATORS_PER_OPERATOR + 1
    return range(first, first + VALIDATORS_PER_OPERATOR)


def _terminals() -> list[TerminalConfig]:
    terminals = [
        _terminal(tid, "VALIDATOR", op)
        for i, op in enumerate(OPERATORS)
        for tid in validator_ids(i)
    ]
    terminals += [
        _terminal(POS_ID_BASE + n, "POS", merchant_id(n)) for n in range(1, MERCHANT_COUNT + 1)
    ]
    terminals += [_terminal(BILLING_ID_BASE + 1 + i, "BILLING", u) for i, u in enumerate(UTILITIES)]
    return terminals


def _principals(parties: list[PartyConfig]) -> list[PrincipalConfig]:
    principals = [
        PrincipalConfig(token=principal_token(p.id), role=p.role, party=p.id)
        for p in parties
        if p.role in ("HALL", "AGENT")
    ]
    principals.append(PrincipalConfig(token=FINANCE_TOKEN, role="FINANCE"))
    principals.append(PrincipalConfig(token=ADMIN_TOKEN, role="ADMIN"))
    return principals


def demo_config(*, data_dir: str = "var", cards: int = CARD_COUNT) -> Config:
    config = Config()
    config.server.data_dir = data_dir
    config.parties = _parties()
    config.terminals = _terminals()
    config.principals = _principals(config.parties)
    config.seed = SeedSettings(cards=cards, opening_balance_fen=5_000, hall="hall-1")
    validate(config, "demo city")
    return config

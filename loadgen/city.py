"""What the load generator knows of the city: terminals, principals, cards.

Read from a configuration (the built-in demo city by default), so that the
generator signs batches with the terminals' keys and calls as the halls,
agents, finance and admin principals the server knows.
"""

from __future__ import annotations

from dataclasses import dataclass

from clearing.runtime.config import Config


@dataclass(frozen=True)
class Terminal:
    terminal_id: int
    terminal_class: str  # VALIDATOR POS BILLING
    party_id: str
    key: bytes
    token: str


@dataclass(frozen=True)
class City:
    validators: tuple[Terminal, ...]
    pos: tuple[Terminal, ...]
    billing: tuple[Terminal, ...]
    halls: tuple[tuple[str, str], ...]  # (party id, token)
    agents: tuple[tuple[str, str], ...]
    finance_token: str
    admin_token: str
    first_card_id: int  # seeded cards: first_card_id .. first_card_id + card_count - 1
    card_count: int
    opening_balance_fen: int

    @property
    def terminals(self) -> dict[int, Terminal]:
        return {t.terminal_id: t for t in (*self.validators, *self.pos, *self.billing)}


def city_of(config: Config) -> City:
    terminals = [
        Terminal(t.id, t.terminal_class, t.party, bytes.fromhex(t.key_hex), t.token)
        for t in sorted(config.terminals, key=lambda t: t.id)
    ]

    def of_class(name: str) -> tuple[Terminal, ...]:
        return tuple(t for t in terminals if t.terminal_class == name)

    def principals(role: str) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((p.party, p.token) for p in config.principals if p.role == role))

    def token(role: str) -> str:
        found = [p.token for p in config.principals if p.role == role]
        return found[0] if found else ""

    return City(
        validators=of_class("VALIDATOR"),
        pos=of_class("POS"),
        billing=of_class("BILLING"),
        halls=principals("HALL"),
        agents=principals("AGENT"),
        finance_token=token("FINANCE"),
        admin_token=token("ADMIN"),
        first_card_id=config.seed.first_card_id,
        card_count=config.seed.cards,
        opening_balance_fen=config.seed.opening_balance_fen,
    )

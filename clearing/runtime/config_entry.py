"""The configuration file as the journal records it (``ConfigEntry``): what of the
TOML changes outcomes, with tokens as digests. The boundary between the file
(``clearing.runtime.config``) and the derived state (``clearing.domain.registry``)."""

from __future__ import annotations

from clearing.domain.entries import (
    ConfigEntry,
    PartyRecord,
    SettingsRecord,
    TerminalRecord,
    token_digest,
)
from clearing.limits import TERMINAL_SEQ_AHEAD_MAX
from clearing.runtime.config import Config


def settings_from_config(config: Config) -> SettingsRecord:
    limits, rules = config.limits, config.rules
    return SettingsRecord(
        limits={name: getattr(limits, name) for name in limits.__struct_fields__},
        rules={
            name: getattr(rules, name)
            for name in rules.__struct_fields__
            if name != "concession_bp"
        },
        concession_bp=dict(rules.concession_bp),
        timezone=config.server.timezone,
        cutoff=config.server.cutoff,
        terminal_seq_ahead_max=TERMINAL_SEQ_AHEAD_MAX,
    )


def config_entry(config: Config) -> ConfigEntry:
    parties = tuple(
        PartyRecord(
            p.id,
            p.role,
            p.fee_bp,
            p.fee_per_bill_fen,
            p.commission_bp,
            p.discount_bp,
            p.bank_account,
        )
        for p in config.parties
    )
    terminals = tuple(
        TerminalRecord(
            t.id, t.terminal_class, t.party, bytes.fromhex(t.key_hex), token_digest(t.token)
        )
        for t in config.terminals
    )
    return ConfigEntry(settings_from_config(config), parties, terminals)

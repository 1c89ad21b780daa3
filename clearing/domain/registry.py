"""Parties, terminals, merchant rules and business settings, as journaled.

The registry is derived from the journal like every other state: the
configuration file is journaled (``ConfigEntry``) when it first differs from
what the journal says, and AdminService changes are journaled one by one.
It pushes what the core needs (limits, concessions, terminals, merchant rules)
into the ledger.
"""

from __future__ import annotations

import msgspec

from clearing.codes import CARD_TYPE_NAMES, TerminalClass
from clearing.domain.entries import (
    ConcessionEntry,
    ConfigEntry,
    MerchantRuleEntry,
    PartyRecord,
    SettingsRecord,
    TerminalRecord,
    token_digest,
)
from clearing.limits import MS_PER_DAY, MS_PER_SECOND


class Registry:
    def __init__(self) -> None:
        self.settings: SettingsRecord | None = None
        self.parties: dict[str, PartyRecord] = {}
        self.party_index: dict[str, int] = {}
        self.terminals: dict[int, TerminalRecord] = {}
        self.terminal_by_token: dict[bytes, int] = {}
        self.rules: dict[str, dict[int, int]] = {}  # party -> {effective_from_ms: bp}
        self.config_seq = 0  # journal seq of the configuration in force
        self.config_terminals: set[int] = set()  # terminals the configuration file names
        self.last_config: ConfigEntry | None = None  # the file as last journaled

    # Applying journal entries (live and replay alike) ------------------------------

    def apply_config(self, ledger, entry: ConfigEntry, seq: int) -> None:
        self.settings = entry.settings
        self._configure_ledger(ledger)
        for party in entry.parties:
            self.apply_party(ledger, party)
        for terminal in entry.terminals:
            self.apply_terminal(ledger, terminal)
        named = {t.terminal_id for t in entry.terminals}
        for terminal_id in self.config_terminals - named:  # taken out of the file: revoked
            self._remove_terminal(terminal_id)
        self.config_terminals = named
        self.last_config = entry
        self.config_seq = seq

    def _remove_terminal(self, terminal_id: int) -> None:
        """Its token and key stop working; its history stays in the journal and ledger."""
        terminal = self.terminals.pop(terminal_id)
        self.terminal_by_token.pop(terminal.token_sha256, None)

    def apply_party(self, ledger, party: PartyRecord) -> None:
        self.party_index.setdefault(party.party_id, len(self.party_index) + 1)
        self.parties[party.party_id] = party
        if party.role == "MERCHANT":
            self.apply_rule(ledger, MerchantRuleEntry(party.party_id, 0, party.discount_bp))

    def apply_terminal(self, ledger, terminal: TerminalRecord) -> None:
        old = self.terminals.get(terminal.terminal_id)
        if old is not None:
            self.terminal_by_token.pop(old.token_sha256, None)
        self.terminals[terminal.terminal_id] = terminal
        self.terminal_by_token[terminal.token_sha256] = terminal.terminal_id
        ledger.set_terminal(
            terminal.terminal_id,
            int(TerminalClass[terminal.terminal_class]),
            self.party_index[terminal.party_id],
        )

    def apply_rule(self, ledger, rule: MerchantRuleEntry) -> None:
        self.rules.setdefault(rule.party_id, {})[rule.effective_from_ms] = rule.discount_bp
        ledger.add_merchant_rule(
            self.party_index[rule.party_id], rule.effective_from_ms, rule.discount_bp
        )

    def apply_concession(self, ledger, entry: ConcessionEntry) -> None:
        assert self.settings is not None
        concessions = dict(self.settings.concession_bp)
        concessions[entry.card_type] = entry.concession_bp
        self.settings = msgspec.structs.replace(self.settings, concession_bp=concessions)
        self._configure_ledger(ledger)

    def _configure_ledger(self, ledger) -> None:
        assert self.settings is not None
        limits, rules = self.settings.limits, self.settings.rules
        ledger.configure(
            max_tap_fen=limits["max_tap_fen"],
            max_late_ms=limits["max_late_days"] * MS_PER_DAY,
            max_clock_skew_ms=limits["max_clock_skew_s"] * MS_PER_SECOND,
            transfer_window_ms=rules["transfer_window_s"] * MS_PER_SECOND,
            transfer_discount_fen=rules["transfer_discount_fen"],
            liability_window_ms=rules["liability_window_s"] * MS_PER_SECOND,
            concession_bp=[self.settings.concession_bp[name] for name in CARD_TYPE_NAMES],
            terminal_seq_ahead_max=self.settings.terminal_seq_ahead_max,
        )

    # Questions ---------------------------------------------------------------

    def limit(self, name: str) -> int:
        assert self.settings is not None
        return self.settings.limits[name]

    def rule(self, name: str) -> int:
        assert self.settings is not None
        return self.settings.rules[name]

    def terminal_for_token(self, token: str) -> TerminalRecord | None:
        terminal_id = self.terminal_by_token.get(token_digest(token))
        return None if terminal_id is None else self.terminals[terminal_id]

    def differs_from(self, entry: ConfigEntry) -> bool:
        """True when the configuration file changed since it was last journaled.

        Compared with the file as last applied, not with the live registry, so
        AdminService changes stand until the operator edits the file itself.
        """
        return entry != self.last_config

"""The one TOML configuration file (SPEC §11): its shape, defaults and checks.

Every default of the SPEC is a named setting here under the SPEC's own name.
A configuration that does not make sense is refused at load with a message that
names the setting, never half-used.
"""

from __future__ import annotations

import json
import re
import tomllib
import zoneinfo
from typing import Literal

import msgspec

from clearing.codes import CARD_TYPE_NAMES
from clearing.errors import ConfigError
from clearing.limits import (
    AMOUNT_LIMIT_FEN_MAX,
    BATCH_TAPS_MAX,
    BP_MAX,
    CHECKPOINT_EVERY_TAPS,
    GRACE_SECONDS,
    GRACE_SECONDS_MAX,
    JOURNAL_MAP_SIZE_BYTES_DEFAULT,
    LEDGER_RECORDS_MAX,
    UINT32_MAX,
    UINT64_MAX,
)
from clearing.runtime.tls import check_server_files

PartyRoleName = Literal["OPERATOR", "MERCHANT", "UTILITY", "AGENT", "HALL"]
TerminalClassName = Literal["VALIDATOR", "POS", "BILLING"]
PrincipalRoleName = Literal["HALL", "AGENT", "FINANCE", "ADMIN"]

# Which party role owns which terminal class (SPEC §3).
TERMINAL_OWNER_ROLE = {"VALIDATOR": "OPERATOR", "POS": "MERCHANT", "BILLING": "UTILITY"}
MERCHANT_DISCOUNT_BP_MIN = 6_800  # SPEC §4: discounts of 6.8–10 折


def _default_concessions() -> dict[str, int]:
    return {"ADULT": 10_000, "STUDENT": 5_000, "ELDERLY": 0, "DISABLED": 0}


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A TOML table: unknown keys are typos and are refused."""


class ServerSettings(_Section):
    listen: str = "127.0.0.1:50051"
    metrics_listen: str = "127.0.0.1:9464"
    data_dir: str = "var"
    timezone: str = "Asia/Shanghai"
    cutoff: str = "04:00"
    reflection: bool = False
    manual_clock: bool = False  # testing only: enables AdminService.SetClock
    manual_clock_start_ms: int = 0  # testing only: where the manual clock starts (0: now)
    map_size_bytes: int = JOURNAL_MAP_SIZE_BYTES_DEFAULT
    # Sizing: room the ledger core allocates at start, so growth never stalls a
    # batch (about 100 bytes a tap, 70 a card); 0 grows on demand.
    reserve_cards: int = 0
    reserve_taps: int = 0
    # Restart replays at most this many taps after the newest checkpoint; each
    # checkpoint forks and writes the whole ledger (hundreds of MiB at city size).
    checkpoint_every_taps: int = CHECKPOINT_EVERY_TAPS
    # Shutdown (SIGTERM): calls in flight get this long to finish; streams end at once.
    grace_seconds: float = GRACE_SECONDS
    # TLS (clearing.runtime.tls): a certificate and its key, both or neither (plaintext);
    # a client CA on top requires client certificates of that CA (mutual TLS).
    # Relative paths are from the working directory, as data_dir is.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    # Under mutual TLS, a terminal's token is accepted only over its own certificate
    # (CN or SAN terminal-<id>): a leaked token alone, over a desk's certificate, is useless.
    tls_terminal_certificate_required: bool = True


class Limits(_Section):
    max_tap_fen: int = 100_000
    max_topup_fen: int = 100_000
    max_balance_fen: int = 100_000
    max_late_days: int = 7
    max_clock_skew_s: int = 300
    max_batch_taps: int = 5_000
    min_boarding_balance_fen: int = 0


class Rules(_Section):
    transfer_window_s: int = 5_400
    transfer_discount_fen: int = 100
    liability_window_s: int = 21_600
    transfer_hold_s: int = 7 * 86_400
    concession_bp: dict[str, int] = msgspec.field(default_factory=_default_concessions)


class PartyConfig(_Section):
    id: str
    role: PartyRoleName
    fee_bp: int = 0  # OPERATOR, MERCHANT
    fee_per_bill_fen: int = 0  # UTILITY
    commission_bp: int = 0  # AGENT
    discount_bp: int = 10_000  # MERCHANT: the rule in force from the epoch
    bank_account: str = ""


class TerminalConfig(_Section):
    id: int
    terminal_class: TerminalClassName = msgspec.field(name="class")
    party: str
    key_hex: str
    token: str


class PrincipalConfig(_Section):
    token: str
    role: PrincipalRoleName
    party: str = ""  # HALL and AGENT: the channel their top-ups are booked to


class SeedSettings(_Section):
    """Cards issued at the first start (the demo city's 210,000 citizens)."""

    cards: int = 0
    first_card_id: int = 3_100_000_000_000_000
    opening_balance_fen: int = 0
    hall: str = ""  # the hall booked for the opening balances


class Config(_Section):
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    limits: Limits = msgspec.field(default_factory=Limits)
    rules: Rules = msgspec.field(default_factory=Rules)
    parties: list[PartyConfig] = msgspec.field(default_factory=list)
    terminals: list[TerminalConfig] = msgspec.field(default_factory=list)
    principals: list[PrincipalConfig] = msgspec.field(default_factory=list)
    seed: SeedSettings = msgspec.field(default_factory=SeedSettings)


def load_config(path: str) -> Config:
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration {path} is not valid TOML: {exc}") from exc
    return parse_config(raw, source=path)


def parse_config(raw: dict, source: str = "<config>") -> Config:
    try:
        config = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    validate(config, source)
    return config


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # validated finite: Python's repr is a TOML float
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {value!r}")


def dump_config(config: Config) -> str:
    """The configuration as TOML in the SPEC §11 shape ([[parties]] tables and all)."""
    raw = msgspec.to_builtins(config)
    lines: list[str] = []
    for section, value in raw.items():
        tables = value if isinstance(value, list) else [value]
        header = f"[[{section}]]" if isinstance(value, list) else f"[{section}]"
        for table in tables:
            lines.append(header)
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
            lines.append("")
    return "\n".join(lines)


def _need(ok: bool, source: str, what: str) -> None:
    if not ok:
        raise ConfigError(f"{source}: {what}")


def validate(config: Config, source: str = "<config>") -> None:
    _validate_server(config.server, source)
    _validate_limits(config.limits, source)
    _validate_rules(config.rules, source)
    parties = validate_parties(config.parties, source)
    validate_terminals(config.terminals, parties, source)
    _validate_principals(config, parties, source)
    seed = config.seed
    _need(0 <= seed.cards <= 10_000_000, source, "[seed] cards must be in 0..10000000")
    _need(
        0 <= seed.first_card_id <= UINT64_MAX - seed.cards,
        source,
        "[seed] first_card_id + cards must fit in u64",
    )
    _need(
        0 <= seed.opening_balance_fen <= config.limits.max_balance_fen,
        source,
        "[seed] opening_balance_fen must be in 0..max_balance_fen",
    )
    if seed.cards and seed.opening_balance_fen:
        _need(parties.get(seed.hall) == "HALL", source, "[seed] hall must name a HALL party")


def _validate_server(server: ServerSettings, source: str) -> None:
    try:
        zoneinfo.ZoneInfo(server.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"{source}: [server] timezone {server.timezone!r} is unknown") from exc
    _need(
        re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", server.cutoff) is not None,
        source,
        f"[server] cutoff {server.cutoff!r} must be HH:MM",
    )
    _need(server.map_size_bytes >= 2**20, source, "[server] map_size_bytes must be >= 1 MiB")
    _need(server.checkpoint_every_taps >= 1, source, "[server] checkpoint_every_taps must be >= 1")
    for name in ("reserve_cards", "reserve_taps"):
        _need(
            0 <= getattr(server, name) <= LEDGER_RECORDS_MAX,
            source,
            f"[server] {name} must be in 0..{LEDGER_RECORDS_MAX}",
        )
    _need(
        0 <= server.grace_seconds <= GRACE_SECONDS_MAX,  # also false for NaN
        source,
        f"[server] grace_seconds must be in 0..{GRACE_SECONDS_MAX:g}",
    )
    try:
        check_server_files(server.tls_cert_file, server.tls_key_file, server.tls_client_ca_file)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def _validate_limits(limits: Limits, source: str) -> None:
    for name in ("max_tap_fen", "max_topup_fen", "max_balance_fen"):
        value = getattr(limits, name)
        _need(
            1 <= value <= AMOUNT_LIMIT_FEN_MAX,
            source,
            f"[limits] {name} must be in 1..{AMOUNT_LIMIT_FEN_MAX}",
        )
    _need(1 <= limits.max_late_days <= 366, source, "[limits] max_late_days must be in 1..366")
    _need(
        0 <= limits.max_clock_skew_s <= 86_400,
        source,
        "[limits] max_clock_skew_s must be in 0..86400",
    )
    _need(
        1 <= limits.max_batch_taps <= BATCH_TAPS_MAX,
        source,
        f"[limits] max_batch_taps must be in 1..{BATCH_TAPS_MAX}",
    )
    _need(
        abs(limits.min_boarding_balance_fen) <= AMOUNT_LIMIT_FEN_MAX,
        source,
        "[limits] min_boarding_balance_fen is out of range",
    )


def _validate_rules(rules: Rules, source: str) -> None:
    for name in ("transfer_window_s", "liability_window_s", "transfer_hold_s"):
        value = getattr(rules, name)
        _need(0 <= value <= 366 * 86_400, source, f"[rules] {name} must be in 0..{366 * 86_400}")
    _need(
        0 <= rules.transfer_discount_fen <= AMOUNT_LIMIT_FEN_MAX,
        source,
        "[rules] transfer_discount_fen is out of range",
    )
    _need(
        set(rules.concession_bp) == set(CARD_TYPE_NAMES),
        source,
        f"[rules] concession_bp needs exactly {', '.join(CARD_TYPE_NAMES)}",
    )
    for card_type, bp in rules.concession_bp.items():
        _need(0 <= bp <= BP_MAX, source, f"[rules] concession_bp.{card_type} must be in 0..10000")


def validate_parties(parties: list[PartyConfig], source: str) -> dict[str, str]:
    roles: dict[str, str] = {}
    for p in parties:
        where = f"[[parties]] {p.id!r}"
        _need(
            re.fullmatch(r"[a-z0-9][a-z0-9-]{0,31}", p.id) is not None,
            source,
            f"{where}: id must be 1-32 of a-z 0-9 -",
        )
        _need(p.id != "issuer", source, f"{where}: 'issuer' is reserved for the card company")
        _need(p.id not in roles, source, f"{where}: duplicate party id")
        for name in ("fee_bp", "commission_bp"):
            _need(0 <= getattr(p, name) <= BP_MAX, source, f"{where}: {name} must be in 0..10000")
        _need(
            MERCHANT_DISCOUNT_BP_MIN <= p.discount_bp <= BP_MAX,
            source,
            f"{where}: discount_bp must be in {MERCHANT_DISCOUNT_BP_MIN}..10000",
        )
        _need(
            0 <= p.fee_per_bill_fen <= AMOUNT_LIMIT_FEN_MAX,
            source,
            f"{where}: fee_per_bill_fen is out of range",
        )
        roles[p.id] = p.role
    return roles


def validate_terminals(
    terminals: list[TerminalConfig], parties: dict[str, str], source: str
) -> None:
    seen: set[int] = set()
    for t in terminals:
        where = f"[[terminals]] {t.id}"
        _need(1 <= t.id <= UINT32_MAX, source, f"{where}: id must be a u32 above 0")
        _need(t.id not in seen, source, f"{where}: duplicate terminal id")
        seen.add(t.id)
        owner = TERMINAL_OWNER_ROLE[t.terminal_class]
        _need(
            parties.get(t.party) == owner,
            source,
            f"{where}: party {t.party!r} must be an {owner} party for a {t.terminal_class}",
        )
        _need(
            re.fullmatch(r"[0-9a-fA-F]{64}", t.key_hex) is not None,
            source,
            f"{where}: key_hex must be 32 bytes as 64 hex digits",
        )
        _need(len(t.token) >= 16, source, f"{where}: token must be at least 16 characters")


def _validate_principals(config: Config, parties: dict[str, str], source: str) -> None:
    tokens = [t.token for t in config.terminals]
    for p in config.principals:
        where = f"[[principals]] {p.role} {p.party!r}"
        _need(len(p.token) >= 16, source, f"{where}: token must be at least 16 characters")
        if p.role in ("HALL", "AGENT"):
            _need(parties.get(p.party) == p.role, source, f"{where}: party must be a {p.role}")
        tokens.append(p.token)
    _need(len(tokens) == len(set(tokens)), source, "two principals or terminals share a token")

"""The small city that tests and soaks run against: two validators, a shop, a
water company, a hall, an agent; tokens and MAC keys derived from ids."""

from __future__ import annotations

import hashlib
from typing import Any

NOW_MS = 1_900_000_000_000  # 2030-03-17: ahead of the real clock, where tests set the manual one
VALIDATOR, VALIDATOR_2, POS, BILLING = 101, 102, 201, 301
TOKENS = {
    "hall": "test-token-hall-1-xxxxx",
    "agent": "test-token-agent-01-xxxx",
    "finance": "test-token-finance-xxxx",
    "admin": "test-token-admin-xxxxxx",
}


def terminal_token(terminal_id: int) -> str:
    return f"test-token-terminal-{terminal_id}"


def terminal_key(terminal_id: int) -> bytes:
    return hashlib.sha256(f"test-key-{terminal_id}".encode()).digest()


def city_dict(data_dir: str, **server: Any) -> dict:
    """The city as a configuration dict; ``server`` overrides [server] settings."""
    terminals = [
        (VALIDATOR, "VALIDATOR", "op-bus-1"),
        (VALIDATOR_2, "VALIDATOR", "op-bus-1"),
        (POS, "POS", "m-0001"),
        (BILLING, "BILLING", "u-water"),
    ]
    return {
        "server": {
            "data_dir": data_dir,
            "manual_clock": True,
            "manual_clock_start_ms": NOW_MS,
            "map_size_bytes": 256 * 2**20,
            **server,
        },
        "parties": [
            {"id": "op-bus-1", "role": "OPERATOR", "fee_bp": 100},
            {"id": "m-0001", "role": "MERCHANT", "fee_bp": 150, "discount_bp": 8800},
            {"id": "u-water", "role": "UTILITY", "fee_per_bill_fen": 50},
            {"id": "hall-1", "role": "HALL"},
            {"id": "agent-01", "role": "AGENT", "commission_bp": 40},
        ],
        "terminals": [
            {
                "id": tid,
                "class": cls,
                "party": party,
                "key_hex": terminal_key(tid).hex(),
                "token": terminal_token(tid),
            }
            for tid, cls, party in terminals
        ],
        "principals": [
            {"token": TOKENS["hall"], "role": "HALL", "party": "hall-1"},
            {"token": TOKENS["agent"], "role": "AGENT", "party": "agent-01"},
            {"token": TOKENS["finance"], "role": "FINANCE"},
            {"token": TOKENS["admin"], "role": "ADMIN"},
        ],
    }


# For the fuzzer: every principal's token (terminals as "terminal:<id>"), the
# terminals whose batches it may sign, and strings the server knows.
FUZZ_TOKENS = {
    **TOKENS,
    f"terminal:{VALIDATOR}": terminal_token(VALIDATOR),
    f"terminal:{POS}": terminal_token(POS),
}
FUZZ_TERMINALS = {terminal_token(t): (t, terminal_key(t)) for t in (VALIDATOR, POS)}
CITY_WORDS = ("m-0001", "op-bus-1", "u-water", "hall-1", "agent-01", "2030-03-16", "2030-03-17")

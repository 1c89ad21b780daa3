"""Shared fixtures: a small real city, a real server on loopback, a real LMDB."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import pytest

from clearing.client import Stubs, bearer, channel, signed_batch, unpack_results
from clearing.config import Config, parse_config
from clearing.server.app import Server
from clearing.v1 import cards_pb2

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


def city_dict(data_dir: str) -> dict:
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


def flip_byte(path: str, needle: bytes, offset: int, mask: int) -> None:
    """Damage a file in place: flip bits of the byte ``offset`` past every ``needle``
    (LMDB may also hold stale copies of a page: damage the live one too)."""
    with open(path, "r+b") as f:
        data = f.read()
        where = data.find(needle)
        assert where >= 0, "the bytes to damage are not in the file"
        while where >= 0:
            f.seek(where + offset)
            f.write(bytes([data[where + offset] ^ mask]))
            where = data.find(needle, where + 1)


@pytest.fixture
def city(tmp_path) -> Config:
    return parse_config(city_dict(str(tmp_path / "data")))


class Harness:
    """A running server and client stubs; restartable on the same data directory."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.server: Server | None = None
        self.chan = None
        self.stubs: Stubs | None = None

    async def start(self) -> Harness:
        self.server = Server(self.config)
        port = await self.server.start("127.0.0.1:0")
        clock = self.server.service.clock
        clock.set(max(NOW_MS, clock.now_ms()))
        self.chan = channel(f"127.0.0.1:{port}")
        self.stubs = Stubs(self.chan)
        return self

    async def stop(self) -> None:
        if self.chan is not None:
            await self.chan.close()
        if self.server is not None:
            await self.server.stop(0.5)
        self.server = self.chan = self.stubs = None

    async def restart(self) -> Harness:
        await self.stop()
        return await self.start()

    @property
    def last_seq(self) -> int:
        return self.server.service.journal.last_seq

    async def taps(self, terminal_id: int, taps, *, packed: bool = True) -> list[tuple[int, ...]]:
        reply = await self.stubs.taps.SubmitTaps(
            signed_batch(terminal_id, terminal_key(terminal_id), taps, packed=packed),
            metadata=bearer(terminal_token(terminal_id)),
        )
        return unpack_results(reply)

    async def issue(self, card_id: int, card_type: int = 1, balance_fen: int = 0) -> None:
        reply = await self.stubs.cards.IssueCard(
            cards_pb2.IssueCardRequest(
                request_id=f"issue-{card_id}",
                card_id=card_id,
                card_type=card_type,
                deposit_fen=2000,
            ),
            metadata=bearer(TOKENS["hall"]),
        )
        assert reply.status == cards_pb2.CardReply.OK, reply.message
        if balance_fen:
            reply = await self.stubs.cards.TopUp(
                cards_pb2.TopUpRequest(
                    request_id=f"open-{card_id}", card_id=card_id, amount_fen=balance_fen
                ),
                metadata=bearer(TOKENS["hall"]),
            )
            assert reply.status == cards_pb2.CardReply.OK, reply.message

    async def balance(self, card_id: int) -> int:
        card = await self.stubs.cards.GetCard(
            cards_pb2.GetCardRequest(card_id=card_id), metadata=bearer(TOKENS["hall"])
        )
        return card.balance_fen


@pytest.fixture
async def harness(city) -> AsyncIterator[Harness]:
    h = await Harness(city).start()
    try:
        yield h
    finally:
        await h.stop()

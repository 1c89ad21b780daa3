"""Shared fixtures: a small real city, a real server on loopback, a real LMDB."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from clearing.runtime.config import Config, parse_config
from clearing.server.app import Server
from clearing.tools.client import Stubs, bearer, channel, signed_batch, unpack_results
from clearing.v1 import cards_pb2
from loadgen.soak.city import (  # noqa: F401  (the tests import the city from here)
    BILLING,
    NOW_MS,
    POS,
    TOKENS,
    VALIDATOR,
    VALIDATOR_2,
    city_dict,
    terminal_key,
    terminal_token,
)


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

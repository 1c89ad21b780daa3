"""Hostile input (issue 6, CI-sized): garbage gets a defined status and changes nothing.

A few hundred seeded, mutated tap batches (extreme amounts, times ±24 h and
beyond, sequence 0, card ids at the u64 edge, torn packed bytes, wrong MACs,
the wrong terminal, one byte over a whole tap) and raw bytes where a message
belongs, against a real server on loopback. Afterwards every answer was a
defined status, only accepted batches are in the journal, the journal
verifies, and the float moved exactly as the answers say. A copy of a journal
damaged at 100 random places is refused at start, or serves what the
undamaged journal did.
"""

from __future__ import annotations

import os
import random
import re
import shutil

import grpc
import msgspec
import pytest

from clearing.codes import ChargedTo, TapStatus
from clearing.errors import JournalError
from clearing.limits import UINT64_MAX
from clearing.runtime.config import Config
from clearing.storage.verify import verify_journal
from clearing.tools.client import bearer, unpack_results
from loadgen.soak.damage import flip_bits
from loadgen.soak.hostile import BATCH_CODES, answer_problems, hostile_batch
from tests.conftest import NOW_MS, POS, VALIDATOR, VALIDATOR_2, Harness

CARDS = [8_000_001, 8_000_002, 8_000_003]
CASES = 300


async def test_hostile_batches_get_defined_answers_and_change_nothing_else(harness):
    from tests.conftest import terminal_token

    h = harness
    for card in CARDS:
        await h.issue(card, balance_fen=50_000)
    service = h.server.service
    float_before = service.engine.ledger.total_balance_fen()
    seq_before = h.last_seq
    rng = random.Random(2030)
    seqs = {VALIDATOR: 0, VALIDATOR_2: 0, POS: 0}
    accepted = charged_to_cards = journaled = 0
    for _ in range(CASES):
        batch, sender = hostile_batch(rng, seqs, [*CARDS, 0, 1, UINT64_MAX])
        try:
            reply = await h.stubs.taps.SubmitTaps(batch, metadata=bearer(terminal_token(sender)))
        except grpc.aio.AioRpcError as exc:
            assert exc.code() in BATCH_CODES, (exc.code(), exc.details())
            continue
        accepted += 1
        results = unpack_results(reply)
        assert answer_problems(results) == []
        journaled += any(not r[2] for r in results)  # a batch of repeats journals nothing
        charged_to_cards += sum(
            r[3] for r in results if r[0] == TapStatus.OK and r[1] == ChargedTo.CARD and not r[2]
        )
    assert 0 < accepted < CASES
    assert h.last_seq - seq_before == journaled  # refused batches left no entry
    assert service.engine.ledger.total_balance_fen() == float_before - charged_to_cards
    await h.stop()
    assert "journal OK" in verify_journal(h.config.server.data_dir)


@pytest.mark.parametrize(
    "path", ["/clearing.v1.TapService/SubmitTaps", "/clearing.v1.CardService/TopUp"]
)
async def test_raw_bytes_where_a_message_belongs(harness, path):
    from tests.conftest import TOKENS, terminal_token

    h = harness
    seq = h.last_seq
    call = h.chan.unary_unary(path, request_serializer=None, response_deserializer=None)
    token = terminal_token(VALIDATOR) if "Tap" in path else TOKENS["hall"]
    rng = random.Random(7)
    for size in (1, 2, 7, 36, 37, 300):
        garbage = bytes(rng.randrange(256) for _ in range(size))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(garbage, metadata=bearer(token), timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        assert "malformed request message" in caught.value.details()
    assert h.last_seq == seq


async def test_a_journal_damaged_at_100_places_is_refused_or_serves_the_same(
    city: Config, tmp_path
):
    h = await Harness(city).start()
    for card in CARDS:
        await h.issue(card, balance_fen=10_000)
    taps = [(CARDS[i % 3], i + 1, 100 + i, NOW_MS, 11) for i in range(60)]
    for start in range(0, 60, 6):
        await h.taps(VALIDATOR, taps[start : start + 6])
    balances = [await h.balance(card) for card in CARDS]
    await h.stop()
    journal = os.path.join(city.server.data_dir, "journal")
    for seed in range(3):
        copy_dir = tmp_path / f"copy-{seed}"
        shutil.copytree(city.server.data_dir, copy_dir)
        shutil.rmtree(copy_dir / "journal" / "checkpoints")  # the journal alone is on trial
        data = copy_dir / "journal" / "data.mdb"
        used = os.path.getsize(os.path.join(journal, "data.mdb"))
        flip_bits(str(data), used, random.Random(seed), 100)
        # A copy of the server section too: the next seed copies the original again.
        server = msgspec.structs.replace(city.server, data_dir=str(copy_dir))
        copy = msgspec.structs.replace(city, server=server)
        try:
            h2 = await Harness(copy).start()
        except JournalError as exc:  # refused, saying where
            assert re.search(r"journal (entry|page) \d+|cannot open the journal", str(exc))
            continue
        try:  # it started: then it must serve exactly what the undamaged journal did
            assert [await h2.balance(card) for card in CARDS] == balances
        finally:
            await h2.stop()


async def test_a_message_one_byte_over_the_transport_limit_is_refused(harness):
    """Past GRPC_MESSAGE_BYTES_MAX (the bound of the largest batch max_batch_taps allows)
    gRPC itself refuses the message before any handler: RESOURCE_EXHAUSTED, nothing read.
    A batch under it but over max_batch_taps is INVALID_ARGUMENT (test_e2e_taps)."""
    from clearing.limits import GRPC_MESSAGE_BYTES_MAX
    from clearing.v1 import taps_pb2
    from tests.conftest import terminal_token

    h = harness
    seq = h.last_seq
    batch = taps_pb2.TapBatch(terminal_id=VALIDATOR, mac=bytes(32))
    batch.packed_taps = bytes(GRPC_MESSAGE_BYTES_MAX - 64)
    batch.packed_taps = bytes(
        len(batch.packed_taps) + GRPC_MESSAGE_BYTES_MAX + 1 - batch.ByteSize()
    )
    assert batch.ByteSize() == GRPC_MESSAGE_BYTES_MAX + 1
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await h.stubs.taps.SubmitTaps(batch, metadata=bearer(terminal_token(VALIDATOR)))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    batch.packed_taps = batch.packed_taps[:-2]  # just under: read, then refused as torn
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await h.stubs.taps.SubmitTaps(batch, metadata=bearer(terminal_token(VALIDATOR)))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert h.last_seq == seq

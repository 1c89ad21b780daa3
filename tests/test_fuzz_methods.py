"""Fuzzing every gRPC method (CI-sized): defined statuses only, nothing invalid journaled.

``loadgen.soak.fuzz`` sends random, mutated and raw requests for every method
of the five services with real, missing and wrong tokens to a real server on
loopback; ``loadgen.soak.fuzz_atheris`` does the same guided by libFuzzer. The
full-size runs are ``python -m loadgen.soak`` (hostile input).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from random import Random

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clearing.limits import RESULT_STRUCT
from clearing.storage.verify import verify_journal
from clearing.v1 import cards_pb2, taps_pb2
from loadgen.soak.city import CITY_WORDS, FUZZ_TERMINALS, FUZZ_TOKENS
from loadgen.soak.fuzz import (
    DEFAULT_SKIP,
    all_methods,
    enum_problems,
    fuzz_methods,
    is_undefined,
    mutate,
    request_bytes,
    tap_reply_problems,
)
from tests.conftest import NOW_MS, TOKENS, VALIDATOR, terminal_key, terminal_token

REPO = Path(__file__).resolve().parents[1]
CASES = 300
SEED = 2030
METHODS = all_methods()
ROLE_TOKENS, TERMINALS = FUZZ_TOKENS, FUZZ_TERMINALS
SEEN_CODES = {"OK", "INVALID_ARGUMENT", "PERMISSION_DENIED", "UNAUTHENTICATED", "NOT_FOUND"}
RSS_GROWTH_BYTES_MAX = 96 * 2**20  # client and server share this process


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _target(harness) -> str:
    return f"127.0.0.1:{harness.server.port}"


async def test_fuzzed_calls_get_defined_answers_and_journal_only_accepted_work(harness):
    h = harness
    seq_before, rss_before = h.last_seq, _rss_bytes()
    tally = await fuzz_methods(
        _target(h), ROLE_TOKENS, cases=CASES, seed=SEED, words=CITY_WORDS, terminals=TERMINALS
    )
    assert tally.cases == CASES
    assert tally.undefined == []
    assert set(tally.codes) >= SEEN_CODES, tally.codes
    ok = tally.ok_by_method
    assert set(ok) == {m.key for m in METHODS} - DEFAULT_SKIP  # every method was called
    assert ok["TapService/SubmitTaps"] + ok["TapService/StreamTaps"] > 0  # signed taps got in
    assert h.last_seq - seq_before <= sum(ok.values())  # refusals journaled nothing
    assert _rss_bytes() - rss_before < RSS_GROWTH_BYTES_MAX
    await h.issue(7_777_001, balance_fen=1_000)  # still serving, as before
    unused = h.server.service.engine.ledger.terminal_status(VALIDATOR)[0] + 1
    [(status, *_)] = await h.taps(VALIDATOR, [(7_777_001, unused, 100, NOW_MS, 11)])
    assert status == taps_pb2.TapResult.OK
    await h.stop()
    assert verify_journal(h.config.server.data_dir).startswith("journal OK")


def test_the_same_seed_builds_the_same_requests():
    """A finding can be replayed from its seed."""
    for m in METHODS:
        first = [request_bytes(m, Random(s), CITY_WORDS) for s in range(5)]
        assert first == [request_bytes(m, Random(s), CITY_WORDS) for s in range(5)], m.key


async def test_the_tally_catches_an_escaped_exception(harness, monkeypatch):
    async def broken(terminal_id: int):
        raise RuntimeError("servicer bug")

    monkeypatch.setattr(harness.server.service, "terminal_status", broken)
    only = {"AdminService/GetTerminalStatus"}
    tally = await fuzz_methods(
        _target(harness),
        {"admin": TOKENS["admin"]},
        cases=40,
        seed=SEED,
        skip={m.key for m in METHODS} - only,
    )
    assert tally.codes["UNKNOWN"] > 0
    assert len(tally.undefined) == tally.codes["UNKNOWN"]
    assert all(u.startswith("AdminService/GetTerminalStatus: UNKNOWN:") for u in tally.undefined)
    assert "RuntimeError" in tally.undefined[0] and "servicer bug" in tally.undefined[0]


def test_which_statuses_are_defined():
    unary = next(m for m in METHODS if m.key == "CardService/GetCard")
    watch = next(m for m in METHODS if m.key == "DenyListService/WatchDenyList")
    code = grpc.StatusCode
    for defined in (code.OK, code.INVALID_ARGUMENT, code.RESOURCE_EXHAUSTED, code.NOT_FOUND):
        assert not is_undefined(unary, defined)
    for bug in (code.INTERNAL, code.UNKNOWN, code.UNAVAILABLE, code.UNIMPLEMENTED, code.DATA_LOSS):
        assert is_undefined(unary, bug) and is_undefined(watch, bug)
    assert is_undefined(unary, code.DEADLINE_EXCEEDED)  # a unary call must answer in time
    assert not is_undefined(watch, code.DEADLINE_EXCEEDED)  # the fuzzer cut the watch
    assert not is_undefined(watch, code.CANCELLED)


def test_inconsistent_ok_replies_are_caught():
    batch = taps_pb2.TapBatch(terminal_id=VALIDATOR, packed_taps=bytes(36)).SerializeToString()

    def reply(status: int, charged_to: int, charged: int) -> taps_pb2.TapBatchResult:
        packed = RESULT_STRUCT.pack(status, charged_to, 0, charged, 0, 0, 9)
        return taps_pb2.TapBatchResult(terminal_id=VALIDATOR, journal_seq=9, packed_results=packed)

    assert tap_reply_problems(batch, reply(1, 1, 100)) == []
    assert tap_reply_problems(batch, reply(99, 0, 0))  # a status outside TapStatus
    assert tap_reply_problems(batch, reply(6, 1, 100))  # a rejected tap that charged
    assert tap_reply_problems(batch, reply(1, 1, -5))  # a negative charge
    two = taps_pb2.TapBatch(terminal_id=VALIDATOR, packed_taps=bytes(72)).SerializeToString()
    assert tap_reply_problems(two, reply(1, 1, 100))  # one result for two taps
    assert enum_problems(cards_pb2.CardReply(status=99)) == ["clearing.v1.CardReply.status=99"]
    assert enum_problems(cards_pb2.CardReply(status=1, card=cards_pb2.Card(state=3))) == []


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**64 - 1), index=st.integers(0, len(METHODS) - 1))
def test_generated_requests_are_bytes_the_method_may_or_may_not_parse(seed, index):
    """The generator never fails, whatever the seed; messages round-trip."""
    m = METHODS[index]
    data = request_bytes(m, Random(seed), CITY_WORDS, (VALIDATOR, terminal_key(VALIDATOR)))
    assert isinstance(data, bytes)
    assert isinstance(mutate(data, Random(seed)), bytes)
    try:
        parsed = m.request.FromString(data)
    except Exception:
        return  # raw or mutated bytes: the server must refuse them, not us
    assert m.request.FromString(parsed.SerializeToString()) == parsed


async def test_atheris_harness_finds_nothing_undefined(harness, tmp_path):
    pytest.importorskip("atheris")
    tokens = [*TOKENS.values(), terminal_token(VALIDATOR)]
    proc = await asyncio.create_subprocess_exec(  # async: the server runs on this loop
        sys.executable,
        "-m",
        "loadgen.soak.fuzz_atheris",
        "--target",
        _target(harness),
        *(arg for token in tokens for arg in ("--token", token)),
        "-runs=300",
        "-seed=1",
        "-max_len=1024",
        f"-artifact_prefix={tmp_path}/",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = output.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    assert "Done 300 runs" in text
    await harness.stop()
    assert verify_journal(harness.config.server.data_dir).startswith("journal OK")


async def test_a_far_future_clock_leaves_the_server_answering(harness):
    from clearing.tools.client import bearer
    from clearing.v1 import admin_pb2

    admin = bearer(TOKENS["admin"])
    try:
        await harness.stubs.admin.SetClock(
            admin_pb2.SetClockRequest(now_ms=2**63 - 1), metadata=admin, timeout=5
        )
    except grpc.aio.AioRpcError as exc:
        assert not is_undefined(METHODS[0], exc.code()), exc.details()
    await harness.issue(7_777_002)  # answered, in time, by a server still serving

"""Access: every role against every method, wrong and missing tokens, a terminal
submitting for another, a bad MAC, a replayed old batch. Each refused (or, for
the replay, answered from the records) with nothing journaled.

Shared by ``tests/test_e2e_access.py`` and the soak.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

import grpc
from google.protobuf import message_factory

from clearing.server.auth import METHOD_ROLES
from clearing.tools.client import Stubs, bearer, channel, signed_batch, unpack_results
from clearing.v1 import admin_pb2, cards_pb2, denylist_pb2, settlement_pb2, taps_pb2
from loadgen.soak.city import NOW_MS, TOKENS, VALIDATOR, VALIDATOR_2, terminal_key, terminal_token
from loadgen.soak.common import CARDS, journal_last_seq, soak_city
from loadgen.soak.result import ScenarioResult
from loadgen.soak.server import ServerProcess

ROLE_TOKENS = {
    "TERMINAL": terminal_token(VALIDATOR),
    "HALL": TOKENS["hall"],
    "AGENT": TOKENS["agent"],
    "FINANCE": TOKENS["finance"],
    "ADMIN": TOKENS["admin"],
}
REFUSALS = {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED}
WRONG_TOKENS = (None, "", "Bearer-less", TOKENS["hall"] + "x", TOKENS["hall"][:-1])


def _methods():
    for module in (taps_pb2, cards_pb2, admin_pb2, denylist_pb2, settlement_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                yield service, method


METHODS = list(_methods())


async def call_method(chan: grpc.aio.Channel, service, method, token: str | None):
    """Call with an empty-ish request; the status code (OK when it went through)."""
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    request = request_class()
    if "terminal_id" in request_class.DESCRIPTOR.fields_by_name:
        request.terminal_id = VALIDATOR  # so only the role decides, not the terminal check
    path = f"/{service.full_name}/{method.name}"
    kwargs = {
        "request_serializer": request_class.SerializeToString,
        "response_deserializer": response_class.FromString,
    }
    metadata = bearer(token) if token is not None else ()
    try:
        if method.client_streaming:
            call = chan.stream_stream(path, **kwargs)(iter([request]), metadata=metadata)
            async for _ in call:
                break
        elif method.server_streaming:
            call = chan.unary_stream(path, **kwargs)(request, metadata=metadata, timeout=2)
            await call.read()
            call.cancel()
        else:
            await chan.unary_unary(path, **kwargs)(request, metadata=metadata, timeout=5)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def role_matrix(chan: grpc.aio.Channel, role: str) -> list[str]:
    """What went wrong when ``role`` called every method (empty list: all as it should)."""
    wrong = []
    for service, method in METHODS:
        allowed = role in METHOD_ROLES[f"{service.name}/{method.name}"]
        code = await call_method(chan, service, method, ROLE_TOKENS[role])
        if (allowed and code in REFUSALS) or (
            not allowed and code != grpc.StatusCode.PERMISSION_DENIED
        ):
            wrong.append(f"{role} {method.name}: {code.name} (allowed: {allowed})")
    return wrong


async def wrong_tokens(chan: grpc.aio.Channel) -> list[str]:
    wrong = []
    for service, method in METHODS:
        for token in WRONG_TOKENS:
            code = await call_method(chan, service, method, token)
            if code != grpc.StatusCode.UNAUTHENTICATED:
                wrong.append(f"{method.name} with token {token!r}: {code.name}")
    return wrong


JournalSeq = Callable[[], Awaitable[int]]


async def forged_batches(
    chan: grpc.aio.Channel, card_id: int, journal_seq: JournalSeq
) -> list[str]:
    """Another terminal's batch, a bad MAC, a replayed batch: none journals anything.

    ``journal_seq()`` reads the server's journal position; ``card_id`` is issued.
    """
    wrong = []
    stubs = Stubs(chan)
    position = await stubs.admin.GetTerminalStatus(
        admin_pb2.GetTerminalStatusRequest(terminal_id=VALIDATOR), metadata=bearer(TOKENS["admin"])
    )
    taps = [(card_id, position.last_seq + 1, 200, NOW_MS, 9)]  # its next number
    mine = bearer(terminal_token(VALIDATOR))
    first = signed_batch(VALIDATOR, terminal_key(VALIDATOR), taps)
    original = unpack_results(await stubs.taps.SubmitTaps(first, metadata=mine))
    before = await journal_seq()
    cases = {
        "another terminal's batch": (
            signed_batch(VALIDATOR_2, terminal_key(VALIDATOR_2), taps),
            grpc.StatusCode.PERMISSION_DENIED,
        ),
        "a bad MAC": (
            _bad_mac(signed_batch(VALIDATOR, terminal_key(VALIDATOR), taps)),
            grpc.StatusCode.UNAUTHENTICATED,
        ),
        "a MAC under another terminal's key": (
            signed_batch(VALIDATOR, terminal_key(VALIDATOR_2), taps),
            grpc.StatusCode.UNAUTHENTICATED,
        ),
    }
    for name, (batch, expected) in cases.items():
        try:
            await stubs.taps.SubmitTaps(batch, metadata=mine)
            wrong.append(f"{name}: accepted")
        except grpc.aio.AioRpcError as exc:
            if exc.code() != expected:
                wrong.append(f"{name}: {exc.code().name}, not {expected.name}")
    replay = signed_batch(VALIDATOR, terminal_key(VALIDATOR), taps)
    again = unpack_results(await stubs.taps.SubmitTaps(replay, metadata=mine))
    if again != [(*r[:2], 1, *r[3:]) for r in original]:
        wrong.append(f"a replayed batch answered {again}, not the original {original}")
    if (after := await journal_seq()) != before:
        wrong.append(f"refused and replayed batches journaled {after - before} entries")
    return wrong


def _bad_mac(batch: taps_pb2.TapBatch) -> taps_pb2.TapBatch:
    batch.mac = bytes([batch.mac[0] ^ 1]) + batch.mac[1:]
    return batch


async def access_scenario(root: str, seed: int) -> ScenarioResult:
    """The whole matrix against a server process; the journal must not move."""
    base = os.path.join(root, "access")
    server = ServerProcess(base, soak_city(os.path.join(base, "data")))
    await server.start()
    result = ScenarioResult("access: roles, tokens, MACs, replays")
    async with channel(server.target) as chan:
        before = await journal_last_seq(server)
        for role in sorted(ROLE_TOKENS):
            result.violations += await role_matrix(chan, role)
        result.violations += await wrong_tokens(chan)
        after = await journal_last_seq(server)
        result.check(after == before, f"refused calls journaled {after - before} entries")
        result.violations += await forged_batches(chan, CARDS[0], lambda: journal_last_seq(server))
    result.check(server.terminate() == 0, "the stop did not exit 0")
    calls = len(METHODS) * (len(ROLE_TOKENS) + len(WRONG_TOKENS)) + 5
    result.runs = calls
    result.note = (
        f"{len(METHODS)} methods × {len(ROLE_TOKENS)} roles, {len(WRONG_TOKENS)} bad tokens"
    )
    return result

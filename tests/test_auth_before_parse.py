"""Authenticate first, then parse (issue 12, defect 4; SPEC §9).

Bytes that are no request message, sent to every method of the five services
on a real loopback server: without a valid token the answer is UNAUTHENTICATED
whatever the bytes, with a valid token of the wrong role PERMISSION_DENIED, and
only an authorised caller hears INVALID_ARGUMENT (malformed). Unary and
streaming methods alike; nothing is journaled.

The calls go through the sync grpc client, in a thread: the asyncio client can
misreport a stream the server ended as INTERNAL (grpc/grpc#36066).
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from clearing.server.auth import METHOD_ROLES
from clearing.tools.client import bearer, channel
from loadgen.soak.access import METHODS, ROLE_TOKENS, WRONG_TOKENS
from loadgen.soak.city import VALIDATOR, VALIDATOR_2, terminal_token
from tests.test_tls import Pki, _config, _serve

CODE = grpc.StatusCode
# None of these parses as any message: a varint that never ends, a field whose
# length runs past the end, a group that never closes, a truncated fixed64.
GARBAGE = (b"\xff" * 12, b"\x0a\x05ab", b"\x0b", b"\x09\x01\x02")
CALL_SECONDS = 5.0


def _call(chan: grpc.Channel, service, method, token: str | None, data: bytes) -> grpc.StatusCode:
    """One call with raw ``data`` as its request; the status code it ended with."""
    path = f"/{service.full_name}/{method.name}"
    metadata = bearer(token) if token is not None else ()
    try:  # no serializers: the bytes go as they are
        if method.client_streaming:
            replies = chan.stream_stream(path)(
                iter([data]), metadata=metadata, timeout=CALL_SECONDS
            )
            for _ in replies:
                break
        elif method.server_streaming:
            replies = chan.unary_stream(path)(data, metadata=metadata, timeout=CALL_SECONDS)
            for _ in replies:
                break
        else:
            chan.unary_unary(path)(data, metadata=metadata, timeout=CALL_SECONDS)
    except grpc.RpcError as exc:
        return exc.code()
    return CODE.OK


def _other_role(allowed: frozenset[str]) -> str:
    return next(role for role in sorted(ROLE_TOKENS) if role not in allowed)


def _expectations() -> list[tuple[str, object, object, str | None, grpc.StatusCode]]:
    cases = []
    for service, method in METHODS:
        allowed = METHOD_ROLES[f"{service.name}/{method.name}"]
        for token in WRONG_TOKENS:
            cases.append((f"token {token!r}", service, method, token, CODE.UNAUTHENTICATED))
        role = _other_role(allowed)
        cases.append((f"role {role}", service, method, ROLE_TOKENS[role], CODE.PERMISSION_DENIED))
        role = sorted(allowed)[0]
        cases.append((f"role {role}", service, method, ROLE_TOKENS[role], CODE.INVALID_ARGUMENT))
    return cases


def _wrong_answers(target: str, garbage: bytes) -> list[str]:
    wrong = []
    with grpc.insecure_channel(target) as chan:
        for who, service, method, token, expected in _expectations():
            code = _call(chan, service, method, token, garbage)
            if code != expected:
                wrong.append(f"{method.name} by {who}: {code.name}, not {expected.name}")
    return wrong


@pytest.mark.parametrize("garbage", GARBAGE, ids=lambda g: g.hex())
async def test_garbage_is_unauthenticated_then_denied_then_malformed(harness, garbage):
    target = f"127.0.0.1:{harness.server.port}"
    seq = harness.last_seq
    assert await asyncio.to_thread(_wrong_answers, target, garbage) == []
    assert harness.last_seq == seq


def test_every_streaming_method_is_covered():
    streaming = {m.name for _, m in METHODS if m.client_streaming or m.server_streaming}
    assert streaming == {"StreamTaps", "WatchDenyList"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


async def test_under_mutual_tls_the_certificate_is_checked_before_the_bytes(tmp_path, pki):
    """Terminal 102's token over terminal 101's certificate is PERMISSION_DENIED,
    garbage or not; terminal 101's own token over it reaches the parse."""
    cert_101 = pki.client("terminal-101", common_name="terminal-101")
    path = "/clearing.v1.TapService/SubmitTaps"
    codes = {}
    async for target in _serve(_config(tmp_path, pki, mutual=True)):
        async with channel(target, tls=cert_101) as chan:
            call = chan.unary_unary(path, request_serializer=None, response_deserializer=None)
            for terminal_id in (VALIDATOR, VALIDATOR_2):
                token = bearer(terminal_token(terminal_id))
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call(GARBAGE[0], metadata=token, timeout=CALL_SECONDS)
                codes[terminal_id] = caught.value.code()
    assert codes == {VALIDATOR: CODE.INVALID_ARGUMENT, VALIDATOR_2: CODE.PERMISSION_DENIED}

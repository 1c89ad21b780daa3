"""The whole role × method matrix over gRPC, and wrong or missing tokens."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import message_factory

from clearing.client import bearer
from clearing.server.auth import METHOD_ROLES
from clearing.v1 import admin_pb2, cards_pb2, denylist_pb2, settlement_pb2, taps_pb2
from tests.conftest import TOKENS, VALIDATOR, terminal_token

ROLE_TOKENS = {
    "TERMINAL": terminal_token(VALIDATOR),
    "HALL": TOKENS["hall"],
    "AGENT": TOKENS["agent"],
    "FINANCE": TOKENS["finance"],
    "ADMIN": TOKENS["admin"],
}
REFUSALS = {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED}


def _methods():
    for module in (taps_pb2, cards_pb2, admin_pb2, denylist_pb2, settlement_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                yield service, method


METHODS = list(_methods())


def test_every_method_is_in_the_role_table():
    names = {f"{service.name}/{method.name}" for service, method in METHODS}
    assert names == set(METHOD_ROLES)


async def _call(chan, service, method, token: str | None) -> grpc.StatusCode:
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


@pytest.mark.parametrize("role", sorted(ROLE_TOKENS))
async def test_role_matrix(harness, role):
    seq = harness.last_seq
    for service, method in METHODS:
        allowed = role in METHOD_ROLES[f"{service.name}/{method.name}"]
        code = await _call(harness.chan, service, method, ROLE_TOKENS[role])
        if allowed:
            assert code not in REFUSALS, (role, method.name, code)
        else:
            assert code == grpc.StatusCode.PERMISSION_DENIED, (role, method.name, code)
    assert harness.last_seq == seq  # empty requests are refused before the journal


async def test_missing_and_wrong_tokens_are_unauthenticated_everywhere(harness):
    seq = harness.last_seq
    for service, method in METHODS:
        for token in (None, "", "Bearer-less", TOKENS["hall"] + "x"):
            code = await _call(harness.chan, service, method, token)
            assert code == grpc.StatusCode.UNAUTHENTICATED, (method.name, token, code)
    assert harness.last_seq == seq

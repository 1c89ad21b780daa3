"""Malformed request bytes are INVALID_ARGUMENT (SPEC §9), not UNKNOWN, but only
for a caller allowed to make the call: authentication comes first.

grpc decodes a request before any servicer code runs, and a decoding error
would surface as UNKNOWN with a logged traceback. This interceptor wraps
every method's deserializer: bytes that do not parse become a ``Malformed``
marker, which the wrapped method refuses before it does anything else. The
refusal is the one the caller would get for a well-formed request first: no or
an unknown token is UNAUTHENTICATED, the wrong role (or client certificate)
PERMISSION_DENIED, whatever the bytes; only then INVALID_ARGUMENT. So garbage
tells a stranger nothing a well-formed call would not. Nothing is journaled.

Checks that need the parsed message (a tap batch's MAC, its terminal) stay in
the servicers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from clearing.errors import ClearingError, Refusal, RequestRejected
from clearing.runtime.service import Service
from clearing.server.auth import authorize, table_method
from clearing.server.grpc_status import to_status

# Raises RequestRejected (UNAUTHENTICATED / PERMISSION_DENIED) unless the call's
# caller may make it; a no-op for methods that take no token.
Authorize = Callable[[grpc.aio.ServicerContext], None]


class Malformed:
    def __init__(self, reason: str) -> None:
        self.reason = reason

    def rejection(self) -> RequestRejected:
        return RequestRejected(
            Refusal.INVALID_ARGUMENT, f"malformed request message: {self.reason}"
        )


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def run(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # any decoding failure: the caller's bytes are bad
            return Malformed(f"{type(exc).__name__}: {exc}")

    return run


async def _refuse(context: grpc.aio.ServicerContext, request: Malformed, check: Authorize) -> None:
    try:
        check(context)
        raise request.rejection()
    except ClearingError as exc:
        await context.abort(*to_status(exc))


def _unary_unary(behavior, check: Authorize):
    async def run(request, context):
        if isinstance(request, Malformed):
            await _refuse(context, request, check)
        return await behavior(request, context)

    return run


def _unary_stream(behavior, check: Authorize):
    async def run(request, context):
        if isinstance(request, Malformed):
            await _refuse(context, request, check)
        async for reply in behavior(request, context):
            yield reply

    return run


async def _checked(
    requests: AsyncIterator[Any], context: grpc.aio.ServicerContext, check: Authorize
) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, Malformed):
            check(context)  # StreamTaps authorizes before it reads; this holds regardless
            raise request.rejection()  # the servicers map engine errors to statuses
        yield request


def _stream_stream(behavior, check: Authorize):
    async def run(requests, context):
        async for reply in behavior(_checked(requests, context, check), context):
            yield reply

    return run


def _no_token_needed(context: grpc.aio.ServicerContext) -> None:
    return None


class MalformedRequests(grpc.aio.ServerInterceptor):
    def __init__(self, service: Service) -> None:
        self.service = service

    def _authorizer(self, path: str) -> Authorize:
        method = table_method(path)
        if method is None:  # health, reflection: open to all
            return _no_token_needed
        service = self.service

        def check(context: grpc.aio.ServicerContext) -> None:
            authorize(service, context, method)

        return check

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        check = self._authorizer(handler_call_details.method)
        deserialize = _tolerant(handler.request_deserializer)
        serialize = handler.response_serializer
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _unary_unary(handler.unary_unary, check), deserialize, serialize
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _unary_stream(handler.unary_stream, check), deserialize, serialize
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                _stream_stream(handler.stream_stream, check), deserialize, serialize
            )
        return handler  # client streaming: no method of ours

"""Malformed request bytes are INVALID_ARGUMENT (SPEC §9), not UNKNOWN.

grpc decodes a request before any servicer code runs, and a decoding error
would surface as UNKNOWN with a logged traceback. This interceptor wraps
every method's deserializer: bytes that do not parse become a ``Malformed``
marker, which the wrapped method refuses with INVALID_ARGUMENT before it
does anything else. Nothing is journaled.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from clearing.errors import RequestRejected


class Malformed:
    def __init__(self, reason: str) -> None:
        self.reason = reason

    def rejection(self) -> RequestRejected:
        return RequestRejected("INVALID_ARGUMENT", f"malformed request message: {self.reason}")


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def run(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # any decoding failure: the caller's bytes are bad
            return Malformed(f"{type(exc).__name__}: {exc}")

    return run


async def _refuse(context: grpc.aio.ServicerContext, request: Malformed) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.rejection().message)


def _unary_unary(behavior):
    async def run(request, context):
        if isinstance(request, Malformed):
            await _refuse(context, request)
        return await behavior(request, context)

    return run


def _unary_stream(behavior):
    async def run(request, context):
        if isinstance(request, Malformed):
            await _refuse(context, request)
        async for reply in behavior(request, context):
            yield reply

    return run


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, Malformed):
            raise request.rejection()  # the servicers map engine errors to statuses
        yield request


def _stream_stream(behavior):
    async def run(requests, context):
        async for reply in behavior(_checked(requests), context):
            yield reply

    return run


class MalformedRequests(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        deserialize = _tolerant(handler.request_deserializer)
        serialize = handler.response_serializer
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _unary_unary(handler.unary_unary), deserialize, serialize
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _unary_stream(handler.unary_stream), deserialize, serialize
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                _stream_stream(handler.stream_stream), deserialize, serialize
            )
        return handler  # client streaming: no method of ours

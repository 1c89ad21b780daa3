"""Every call observed: gRPC server metrics by method and code, and a request id
bound to the call's log lines (the caller's ``x-request-id``, or a new one).

A unary call's time goes to ``clearing_grpc_server_handling_seconds``; a stream's
whole life to ``clearing_grpc_server_stream_lifetime_seconds`` (hours for a
validator's StreamTaps: mixed with unary calls' milliseconds it would make the
handling percentiles meaningless). StreamTaps observes each batch's handling time
itself (``clearing.server.tap_service``).

Refusals are logged at info, failures of ours at warning; successful calls
only at debug (thousands a second would drown the log).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import grpc
import structlog

from clearing.limits import REQUEST_ID_BYTES_MAX
from clearing.runtime.metrics import Metrics

log = structlog.get_logger("clearing.calls")

# Codes a correct server sends because of the caller, not because of itself.
_CALLER_CODES = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)


def request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str) and value:
            return value[:REQUEST_ID_BYTES_MAX]
    return uuid.uuid4().hex[:16]


class _Call:
    """One call's bookkeeping: started, then finished exactly once."""

    def __init__(
        self, metrics: Metrics, service: str, method: str, context, *, streaming: bool
    ) -> None:
        self.metrics, self.service, self.method = metrics, service, method
        self.seconds = metrics.grpc_stream_seconds if streaming else metrics.grpc_seconds
        self.context = context
        self.started = time.perf_counter()
        structlog.contextvars.bind_contextvars(
            request_id=request_id(context), method=f"{service}/{method}"
        )
        metrics.grpc_started.labels(service, method).inc()

    def finish(self, error: BaseException | None) -> None:
        code = self.context.code()
        if code is None:  # not set by an abort: how the handler ended decides
            if isinstance(error, asyncio.CancelledError):
                code = grpc.StatusCode.CANCELLED
            else:
                code = grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN
        seconds = time.perf_counter() - self.started
        self.metrics.grpc_handled.labels(self.service, self.method, code.name).inc()
        self.seconds.labels(self.service, self.method).observe(seconds)
        if code not in _CALLER_CODES:
            log.warning("call failed", code=code.name, details=self.context.details())
        elif code != grpc.StatusCode.OK:
            log.info("call refused", code=code.name, details=self.context.details())
        else:
            log.debug("call", seconds=round(seconds, 6))


def _unary(behavior, start: Callable):
    async def run(request, context):
        call, error = start(context), None
        try:
            return await behavior(request, context)
        except BaseException as exc:
            error = exc
            raise
        finally:
            call.finish(error)

    return run


def _streaming(behavior, start: Callable):
    async def run(request_or_iterator, context):
        call, error = start(context), None
        try:
            async for reply in behavior(request_or_iterator, context):
                yield reply
        except BaseException as exc:
            error = exc
            raise
        finally:
            call.finish(error)

    return run


class ObservedCalls(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        _, service, method = handler_call_details.method.split("/", 2)
        service = service.rsplit(".", 1)[-1]

        def start(context) -> _Call:
            return _Call(self.metrics, service, method, context, streaming=False)

        def start_stream(context) -> _Call:
            return _Call(self.metrics, service, method, context, streaming=True)

        wire = (handler.request_deserializer, handler.response_serializer)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(_unary(handler.unary_unary, start), *wire)
        if handler.unary_stream:
            behavior = _streaming(handler.unary_stream, start_stream)
            return grpc.unary_stream_rpc_method_handler(behavior, *wire)
        if handler.stream_stream:
            behavior = _streaming(handler.stream_stream, start_stream)
            return grpc.stream_stream_rpc_method_handler(behavior, *wire)
        return handler  # client streaming: no method of ours

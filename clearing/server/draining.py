"""Draining: every streaming call ended promptly once the server is stopping
(``clearing.server.app`` explains the shutdown as a whole)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from typing import Any

import grpc

from clearing.errors import Refusal, RequestRejected
from clearing.server.grpc_status import to_status

STOPPING_MESSAGE = (
    "the server is shutting down: this stream ends here, every request it read was answered "
    "and none after; call again once the server is back"
)


class _Stream:
    """One stream's read: the task awaiting its next item, None between items."""

    __slots__ = ("cut", "task")

    def __init__(self) -> None:
        self.task: asyncio.Task | None = None
        self.cut = False


class Draining(grpc.aio.ServerInterceptor):
    """Ends every streaming call promptly once the server is stopping.

    Left alone, a stream (a validator's StreamTaps, a WatchDenyList, a health
    watch) would hold the whole grace period and be cancelled at its end with
    answers lost. Instead a stream stops reading requests at once (StreamTaps
    then answers the batches it read, nothing is left half done) and ends with
    UNAVAILABLE. A stream waiting for its next item is interrupted (cancelled,
    and the cancellation turned into that refusal); one busy with an item ends
    when it asks for the next. Nothing is added to a stream's items but a flag
    test: StreamTaps carries every tap.

    Handlers that send with ``context.write()`` (health's Watch) are turned
    into async generators on the way, which the interceptors outside this one
    (``MalformedRequests``, ``ObservedCalls``) can wrap.
    """

    def __init__(self) -> None:
        self.stopping = False
        self.open_streams = 0
        self._streams: set[_Stream] = set()

    def stop(self) -> None:
        """End every stream: those waiting for an item now, the others at their next."""
        self.stopping = True
        for stream in self._streams:
            if stream.task is not None:
                stream.cut = True
                stream.task.cancel()

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        wire = (handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            run = self._streaming(handler.unary_stream, requests_stream=False)
            return grpc.unary_stream_rpc_method_handler(run, *wire)
        if handler.stream_stream:
            run = self._streaming(handler.stream_stream, requests_stream=True)
            return grpc.stream_stream_rpc_method_handler(run, *wire)
        return handler  # unary calls finish within the grace period; no client streaming here

    def _streaming(self, behavior, *, requests_stream: bool):
        async def run(request_or_requests, context):
            self.open_streams += 1
            try:
                if requests_stream:  # the requests stop: StreamTaps answers what it read
                    replies = behavior(self._until_stopping(request_or_requests), context)
                else:  # the replies stop
                    replies = self._until_stopping(_replies(behavior, request_or_requests, context))
                async for reply in replies:
                    yield reply
            except RequestRejected as exc:  # StreamTaps maps it itself; other handlers not
                await context.abort(*to_status(exc))
            finally:
                self.open_streams -= 1

        return run

    async def _until_stopping(self, items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """``items`` until they end, or RequestRejected(UNAVAILABLE) once stopping."""
        items = aiter(items)
        stream = _Stream()
        self._streams.add(stream)
        try:
            while not self.stopping:
                stream.task = asyncio.current_task()
                try:
                    item = await anext(items)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    # Ours (stop()) becomes the refusal; anyone else's stands.
                    assert stream.task is not None  # set before the stream's first item
                    if not stream.cut or stream.task.uncancel() > 0:
                        raise
                    break
                finally:
                    stream.task = None
                yield item
            raise RequestRejected(Refusal.UNAVAILABLE, STOPPING_MESSAGE)
        finally:
            self._streams.discard(stream)


def _replies(behavior, request, context) -> AsyncIterator[Any]:
    """A unary-stream handler's replies as an async iterator, whichever style it has."""
    if inspect.isasyncgenfunction(behavior):
        return behavior(request, context)
    return _written(behavior, request, context)


class _Writes:
    """A servicer context whose ``write()`` hands replies to a queue."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context
        self.queue: asyncio.Queue = asyncio.Queue(1)  # write() waits for the send, as grpc's

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def write(self, message: Any) -> None:
        await self.queue.put(message)


async def _written(behavior, request, context) -> AsyncIterator[Any]:
    """Run a handler that sends with ``context.write()``; yield what it writes."""
    writes = _Writes(context)
    handler = asyncio.ensure_future(behavior(request, writes))
    taking: asyncio.Future | None = None
    try:
        while True:
            taking = asyncio.ensure_future(writes.queue.get())
            await asyncio.wait((taking, handler), return_when=asyncio.FIRST_COMPLETED)
            if taking.done():
                yield taking.result()
                continue
            while not writes.queue.empty():
                yield writes.queue.get_nowait()
            handler.result()  # its error (an abort) is the call's
            return
    finally:
        for task in (taking, handler):
            if task is not None and not task.done():
                task.cancel()

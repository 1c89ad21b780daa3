"""DenyListService: deltas for validators that are offline much of the day (SPEC §7)."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator

import grpc

from clearing.denylist import REMOVED, Change
from clearing.errors import ClearingError
from clearing.server.auth import authorize, rpc
from clearing.server.status import to_status
from clearing.service import Service
from clearing.v1 import denylist_pb2, denylist_pb2_grpc

Reason = denylist_pb2.DenyListChange.Reason
_ENTRY = struct.Struct(">QB")


def change_message(change: Change) -> denylist_pb2.DenyListChange:
    listed = change.reason != REMOVED
    return denylist_pb2.DenyListChange(
        version=change.version,
        card_id=change.card_id,
        listed=listed,
        reason=Reason.Value(change.reason) if listed else Reason.REASON_UNSPECIFIED,
    )


class DenyListServicer(denylist_pb2_grpc.DenyListServiceServicer):
    def __init__(self, service: Service) -> None:
        self.service = service
        self._full: tuple[int, bytes, int] = (-1, b"", 0)  # (version, packed, count) cache

    def _full_list(self, version: int) -> denylist_pb2.DenyList:
        if self._full[0] != version:
            entries = self.service.deny_list_entries()
            packed = b"".join(_ENTRY.pack(card, Reason.Value(reason)) for card, reason in entries)
            self._full = (version, packed, len(entries))
        _, packed, count = self._full
        return denylist_pb2.DenyList(
            version=version, full=True, packed_full_list=packed, full_count=count
        )

    async def _answer(self, since_version: int) -> denylist_pb2.DenyList:
        version, changes = await self.service.deny_list(since_version)
        if changes is None:
            return self._full_list(version)
        return denylist_pb2.DenyList(version=version, changes=[change_message(c) for c in changes])

    @rpc("DenyListService/GetDenyList")
    async def GetDenyList(self, request, context, principal):
        return await self._answer(request.since_version)

    async def WatchDenyList(
        self, request: denylist_pb2.GetDenyListRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[denylist_pb2.DenyList]:
        try:
            authorize(self.service, context, "DenyListService/WatchDenyList")
            first = await self._answer(request.since_version)
            yield first
            version = first.version
            while True:
                changes = await self.service.deny_list_changes_after(version)
                if changes is None:  # fell too far behind: resynchronise with the full list
                    reply = self._full_list(self.service.engine.book.deny.version)
                else:
                    reply = denylist_pb2.DenyList(
                        version=changes[-1].version, changes=[change_message(c) for c in changes]
                    )
                version = reply.version
                yield reply
        except ClearingError as exc:
            await context.abort(*to_status(exc))

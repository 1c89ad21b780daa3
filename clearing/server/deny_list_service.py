"""DenyListService: deltas for validators that are offline much of the day (SPEC §7)."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator

import grpc

from clearing.domain.deny_list import REMOVED, Change
from clearing.errors import ClearingError
from clearing.runtime.service import Service
from clearing.server.auth import authorize, rpc
from clearing.server.grpc_status import to_status
from clearing.v1 import denylist_pb2, denylist_pb2_grpc

Reason = denylist_pb2.DenyListChange.Reason
_CARD_ID = struct.Struct(">Q")
# Looked up once here: per-entry enum lookups dominated a 200,000-card full list.
_REASON_CODE = dict(Reason.items()) | {REMOVED: 0}
_REASON_BYTE = {name: bytes([code]) for name, code in _REASON_CODE.items()}


def add_changes(reply: denylist_pb2.DenyList, changes: list[Change]) -> denylist_pb2.DenyList:
    add = reply.changes.add
    for version, card_id, reason in changes:
        add(version=version, card_id=card_id, listed=reason != REMOVED, reason=_REASON_CODE[reason])
    return reply


def packed_full_list(entries: list[tuple[int, str]]) -> bytes:
    """9 bytes a card: card_id u64 BE, reason u8; ascending by card_id."""
    pack = _CARD_ID.pack
    return b"".join([pack(card_id) + _REASON_BYTE[reason] for card_id, reason in entries])


class DenyListServicer(denylist_pb2_grpc.DenyListServiceServicer):
    def __init__(self, service: Service) -> None:
        self.service = service
        self._full: tuple[int, bytes, int] = (-1, b"", 0)  # (version, packed, count) cache

    def _full_list(self, version: int, entries: list[tuple[int, str]]) -> denylist_pb2.DenyList:
        if self._full[0] != version:
            self._full = (version, packed_full_list(entries), len(entries))
        _, packed, count = self._full
        return denylist_pb2.DenyList(
            version=version, full=True, packed_full_list=packed, full_count=count
        )

    async def _answer(self, since_version: int) -> denylist_pb2.DenyList:
        version, changes, entries = await self.service.deny_list(since_version)
        if changes is None:
            assert entries is not None  # the service gives the full list when no delta will do
            return self._full_list(version, entries)
        return add_changes(denylist_pb2.DenyList(version=version), changes)

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
                    reply = await self._answer(0)
                else:
                    reply = add_changes(denylist_pb2.DenyList(version=changes[-1].version), changes)
                version = reply.version
                yield reply
        except ClearingError as exc:
            await context.abort(*to_status(exc))

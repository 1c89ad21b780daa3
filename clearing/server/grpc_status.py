"""The one place engine errors become gRPC statuses."""

from __future__ import annotations

import grpc

from clearing.errors import (
    ClearingError,
    ConfigError,
    JournalError,
    RequestRejected,
    SettlementError,
    StorageError,
)
from clearing.limits import STATUS_DETAILS_CHARS_MAX


def to_status(exc: ClearingError) -> tuple[grpc.StatusCode, str]:
    code, details = _status(exc)
    if len(details) > STATUS_DETAILS_CHARS_MAX:  # it echoes the caller's input
        details = details[:STATUS_DETAILS_CHARS_MAX] + "… (cut)"
    return code, details


def _status(exc: ClearingError) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, RequestRejected):
        return grpc.StatusCode[exc.code.name], exc.message
    if isinstance(exc, ConfigError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, StorageError):
        return grpc.StatusCode.UNAVAILABLE, f"not acknowledging work: {exc}"
    if isinstance(exc, SettlementError):
        return grpc.StatusCode.INTERNAL, f"settlement failed, nothing final was written: {exc}"
    if isinstance(exc, JournalError):
        return grpc.StatusCode.INTERNAL, str(exc)
    return grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"

"""The small error hierarchy of the engine; every message says what to do."""

from __future__ import annotations

import enum


class ClearingError(Exception):
    """Base of every error the engine raises on purpose."""


class ConfigError(ClearingError):
    """The configuration file or environment is unusable."""


class JournalError(ClearingError):
    """The journal cannot be trusted or read: the server must not start."""


class JournalCorrupt(JournalError):
    """A hash-chain, sequence or replay mismatch at a known position."""

    def __init__(self, seq: int, what: str) -> None:
        super().__init__(
            f"journal entry {seq}: {what}. The journal is damaged; restore the data "
            "directory from a backup (`clearing journal verify` shows every problem)."
        )
        self.seq = seq


class StoreDamaged(JournalError):
    """An LMDB page is damaged, found by plain reads before LMDB follows it."""

    def __init__(self, store: str, page: int, what: str) -> None:
        super().__init__(
            f"{store} page {page} {what}: the file is damaged. Keep the data directory as "
            "it is; restoring the latest backup loses what was acknowledged after it "
            "(RUNBOOK, ClearingDown)."
        )
        self.store = store
        self.page = page


class StorageError(ClearingError):
    """Disk or map full, or another storage failure: stop acknowledging work."""


class Refusal(enum.Enum):
    """Why a request is refused: each is the ``grpc.StatusCode`` of the same name
    (``clearing.server.grpc_status`` maps it), kept here so the layers below the
    server need not import grpc."""

    INVALID_ARGUMENT = enum.auto()  # the request itself is wrong; resending it is too
    OUT_OF_RANGE = enum.auto()  # a number outside what the engine can take
    NOT_FOUND = enum.auto()
    ALREADY_EXISTS = enum.auto()
    FAILED_PRECONDITION = enum.auto()  # right request, wrong state: change the state first
    UNAUTHENTICATED = enum.auto()
    PERMISSION_DENIED = enum.auto()
    UNAVAILABLE = enum.auto()  # starting or stopping: retry elsewhere or later


class RequestRejected(ClearingError):
    """An operating error answered with a status code (``Refusal``); nothing changed."""

    def __init__(self, code: Refusal, message: str) -> None:
        assert isinstance(code, Refusal), code
        super().__init__(message)
        self.code = code
        self.message = message


class SettlementError(ClearingError):
    """A settlement run found the books do not balance, or cannot read its day.

    Nothing that looks final is written: fix the cause and run it again.
    """

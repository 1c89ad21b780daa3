"""The whole role × method matrix over gRPC, wrong and missing tokens, and forged
or replayed batches (the checks live in loadgen.soak.access, shared with the soak)."""

from __future__ import annotations

import pytest

from clearing.server.auth import METHOD_ROLES
from loadgen.soak.access import (
    METHODS,
    ROLE_TOKENS,
    forged_batches,
    role_matrix,
    wrong_tokens,
)


def test_every_method_is_in_the_role_table():
    names = {f"{service.name}/{method.name}" for service, method in METHODS}
    assert names == set(METHOD_ROLES)


@pytest.mark.parametrize("role", sorted(ROLE_TOKENS))
async def test_role_matrix(harness, role):
    seq = harness.last_seq
    assert await role_matrix(harness.chan, role) == []
    assert harness.last_seq == seq  # empty requests are refused before the journal


async def test_missing_and_wrong_tokens_are_unauthenticated_everywhere(harness):
    seq = harness.last_seq
    assert await wrong_tokens(harness.chan) == []
    assert harness.last_seq == seq


async def test_forged_and_replayed_batches_journal_nothing(harness):
    await harness.issue(8_100_001, balance_fen=1_000)

    async def journal_seq() -> int:
        return harness.last_seq

    assert await forged_batches(harness.chan, 8_100_001, journal_seq) == []
    assert await harness.balance(8_100_001) == 800  # the one original tap, once

"""The one map from engine errors to gRPC statuses (clearing.server.grpc_status)."""

from __future__ import annotations

import grpc
import pytest

from clearing.errors import Refusal, RequestRejected
from clearing.server.grpc_status import to_status


@pytest.mark.parametrize("refusal", list(Refusal))
def test_every_refusal_is_the_grpc_status_of_its_name(refusal):
    assert to_status(RequestRejected(refusal, "why")) == (grpc.StatusCode[refusal.name], "why")


def test_a_status_given_as_text_is_a_programming_error():
    with pytest.raises(AssertionError):
        RequestRejected("NOT_FOUND", "no such card")  # type: ignore[arg-type]

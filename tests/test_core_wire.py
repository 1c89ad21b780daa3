"""The compiled modules' sizes and codes, declared once in ext/clearing/core/wire.pxi,
equal clearing.limits and clearing.codes, and a build that differs is refused."""

from __future__ import annotations

import copy

import pytest

from clearing.core.wire import check_wire, expected_wire
from clearing.errors import ConfigError

compiled = [pytest.importorskip(f"clearing.core.{name}") for name in ("_ledger", "_summary")]


@pytest.mark.parametrize("module", compiled, ids=lambda m: m.__name__)
def test_a_compiled_module_was_built_with_the_python_sides_numbers(module):
    assert expected_wire() == module.WIRE
    check_wire(module.__name__, module.WIRE)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda w: w.update(RESULT_BYTES=41),
        lambda w: w["TapStatus"].update(OK=7),
        lambda w: w["ChargedTo"].pop("ISSUER_LOSS"),
        lambda w: w.update(EXTRA=1),
    ],
    ids=["size", "status", "missing code", "unknown entry"],
)
def test_a_build_out_of_step_is_refused_by_name(tamper):
    wire = copy.deepcopy(compiled[0].WIRE)
    tamper(wire)
    with pytest.raises(ConfigError, match=r"clearing\.core\._ledger was built from other"):
        check_wire("clearing.core._ledger", wire)

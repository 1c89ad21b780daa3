"""A tap refused for a terminal_seq far ahead, in the nightly settlement (issue 12).

It is a rejected tap like any other (REJECTED_TAP by its status, nothing charged);
it is not a received number, so the day's SEQUENCE_GAP row counts only the real gap.
"""

from __future__ import annotations

import importlib
import json

import pytest

from clearing.codes import ChargedTo, TapStatus
from clearing.core import layouts as layout
from clearing.limits import INT64_MAX, RESULT_STRUCT, TAP_STRUCT
from tests.conftest import NOW_MS, VALIDATOR
from tests.test_settlement_example import DAY_END_MS, read, run, set_clock

CARD = 1001


@pytest.mark.parametrize("module", ["clearing.core.summary_py", "clearing.core._summary"])
def test_the_summariser_counts_the_refusal_and_never_sums_its_amount(module):
    summarise = importlib.import_module(module).summarise
    far = TapStatus.SEQUENCE_TOO_FAR_AHEAD
    taps = TAP_STRUCT.pack(7, 2**64 - 1, INT64_MAX, 0, 3) + TAP_STRUCT.pack(7, 2**63, 5, 0, 3)
    fresh = RESULT_STRUCT.pack(far, ChargedTo.CHARGED_TO_NONE, 0, 0, 0, 100, 9)
    again = RESULT_STRUCT.pack(far, ChargedTo.CHARGED_TO_NONE, 1, 0, 0, 100, 4)
    v = summarise(taps, fresh + again, 9, 0, 0)
    assert v[layout.REJECTED + far] == 1 and v[layout.DUP_COUNT] == 1
    assert v[layout.REJECTED_LIST + far] == 0  # the amount was never checked
    assert v[layout.BAD] == 0
    charged = RESULT_STRUCT.pack(far, ChargedTo.CARD, 0, 5, 0, 100, 9)  # cannot be true
    assert summarise(taps[36:], charged, 9, 0, 0)[layout.BAD] == 1
    assert layout.STATUS_LABELS[far] == "SEQUENCE_TOO_FAR_AHEAD"


EXCEPTIONS = """\
action,kind,reason,party_id,terminal_id,count,amount_fen,amount_yuan,detail
"REVIEW","REJECTED_TAP","SEQUENCE_TOO_FAR_AHEAD","op-bus-1","101",2,0,0.00,"not applied; list amount attempted"
"REVIEW","SEQUENCE_GAP","MISSING_TERMINAL_SEQ","op-bus-1","101",1,0,0.00,"highest terminal_seq 3; +1 missing on the day"
"""  # noqa: E501


async def test_a_sequence_far_ahead_is_a_rejected_tap_and_no_gap(harness):
    h = harness
    await h.issue(CARD, balance_fen=1_000)
    rides = await h.taps(
        VALIDATOR,
        [
            (CARD, 1, 200, NOW_MS - 60_000, 11),
            (CARD, 2**64 - 1, 200, NOW_MS, 11),
            (CARD, 3, 200, NOW_MS, 12),
            (CARD, 2**63, 2**63 - 1, NOW_MS, 11),  # an amount never summed: unchecked
        ],
    )
    far = TapStatus.SEQUENCE_TOO_FAR_AHEAD
    assert [r[0] for r in rides] == [TapStatus.OK, far, TapStatus.OK, far]
    await set_clock(h, DAY_END_MS + 1_000)
    result = await run(h)
    assert read(result.output_dir, "exceptions.csv") == EXCEPTIONS
    manifest = json.loads(read(result.output_dir, "manifest.json"))
    taps = manifest["counts"]["taps"]
    assert taps["rejected_by_status"]["SEQUENCE_TOO_FAR_AHEAD"] == 2
    assert taps["rejected"] == 2 and taps["ok"] == 2

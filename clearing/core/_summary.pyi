"""Type stub of the compiled batch summary (ext/clearing/core/_summary.pyx).

Behaviour is defined by the reference twin ``clearing.core.summary_py.summarise``; the
two must return the same vector, or raise the same exception type.
"""

from typing import Any

SUMMARY_LEN: int
WIRE: dict[str, Any]  # the sizes and codes it was built with (clearing.core.wire)

def summarise(
    packed_taps: bytes,
    packed_results: bytes,
    journal_seq: int,
    window_start_ms: int,
    utc_offset_ms: int,
) -> list[int]: ...

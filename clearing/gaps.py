"""Terminal sequence gaps (SPEC §5): numbers below the highest received that never arrived."""

from __future__ import annotations


def gap_ranges(seqs: list[int], most: int) -> list[tuple[int, int]]:
    """Ranges of numbers in 1..max(seqs) missing from the ascending ``seqs``."""
    gaps: list[tuple[int, int]] = []
    expected = 1
    for seq in seqs:
        if seq > expected:
            gaps.append((expected, seq - 1))
            if len(gaps) >= most:
                break
        expected = seq + 1
    return gaps

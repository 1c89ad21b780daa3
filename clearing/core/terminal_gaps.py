"""Terminal sequence gaps (SPEC §5): numbers below the highest received that never arrived."""

from __future__ import annotations

import bisect
from collections.abc import Iterable


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


class GapSet:
    """One terminal's missing numbers as ascending [first, last] ranges, kept up to
    date as numbers arrive, so that a status read never scans the taps (the compiled
    core keeps the same ranges in C memory)."""

    __slots__ = ("ranges",)

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self.ranges: list[list[int]] = [list(r) for r in ranges]

    @classmethod
    def of(cls, seqs: list[int]) -> GapSet:
        """The gaps of the ascending distinct ``seqs`` (a restore rebuilds them so)."""
        return cls(gap_ranges(seqs, len(seqs) + 1))

    def receive(self, seq: int, highest: int) -> None:
        """``seq`` arrived, never before; ``highest`` is the highest received before it."""
        if seq > highest:
            if seq > highest + 1:
                self.ranges.append([highest + 1, seq - 1])
            return
        i = bisect.bisect_right(self.ranges, seq, key=lambda r: r[0]) - 1
        assert i >= 0 and self.ranges[i][1] >= seq, "a number never received lies in a gap"
        first, last = self.ranges[i]
        if first == last:
            del self.ranges[i]
        elif seq == first:
            self.ranges[i][0] = seq + 1
        elif seq == last:
            self.ranges[i][1] = seq - 1
        else:
            self.ranges[i : i + 1] = [[first, seq - 1], [seq + 1, last]]

    def first(self, most: int) -> list[tuple[int, int]]:
        return [(first, last) for first, last in self.ranges[:most]]

"""`make demo` is seeded and on a fixed calendar: the same settlement, byte for byte.

The whole demo runs twice, as `clearing demo` does (a `clearing serve` child process
on loopback, the story, the lost card, the city day through the load generator in day
mode with the server's clock following the day, RunSettlement), at a small scale and
quickly, each time on a fresh data directory; every file the settlement wrote must
be identical.
"""

from __future__ import annotations

import os
import re

from clearing.tools.demo import run_demo

SCALE = 0.5  # half the reference city's day: about 14,000 bus taps, 3,000 calls
SECONDS = 4.0


def _files(directory: str) -> dict[str, bytes]:
    out = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            out[name] = f.read()
    return out


def test_the_same_seed_settles_the_same_day_byte_for_byte(tmp_path, capsys) -> None:
    first = run_demo(str(tmp_path / "one"), scale=SCALE, seconds=SECONDS, verify=False)
    story = " ".join(capsys.readouterr().out.split())  # as read, not as wrapped
    # Times as the city's clock shows them, never a raw epoch; the new card's balance is
    # the moved balance plus the top-up the story shows.
    assert "lost at 2026-11-09 10:00:00 Asia/Shanghai" in story
    assert "hold, at 2026-11-16 10:00:00 Asia/Shanghai" in story
    assert not re.search(r"\b1[0-9]{12}\b", story), "a raw epoch in the demo's output"
    assert "tops the new card up by 1000 fen: OK, balance 5600 = 4600 + 1000" in story
    second = run_demo(str(tmp_path / "two"), scale=SCALE, seconds=SECONDS, verify=False)
    assert os.path.basename(first) == os.path.basename(second) == "2026-11-19"
    one, two = _files(first), _files(second)
    assert {"summary.csv", "payments.csv", "exceptions.csv", "manifest.json"} <= set(one)
    assert one.keys() == two.keys()
    for name in one:
        assert one[name] == two[name], f"{name} differs between two runs of the same seed"

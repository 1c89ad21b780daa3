"""A copy of the journal with bytes flipped at 100 random places must be refused
at start, saying where, or serve exactly what the undamaged journal did: wrong
balances are never served."""

from __future__ import annotations

import os
import random
import re
import shutil

from loadgen.soak.common import CARDS, served_balances, soak_city, traffic_for
from loadgen.soak.result import ScenarioResult
from loadgen.soak.server import ServerProcess
from loadgen.soak.traffic import Traffic

FLIPS = 100
TRAFFIC_SECONDS = 1.0  # a journal of a few thousand entries to damage


def flip_bits(path: str, used_bytes: int, rng: random.Random, flips: int) -> None:
    """Flip one random bit at each of ``flips`` random offsets below ``used_bytes``."""
    with open(path, "r+b") as f:
        for _ in range(flips):
            where = rng.randrange(used_bytes)
            f.seek(where)
            byte = f.read(1)[0]
            f.seek(where)
            f.write(bytes([byte ^ (1 << rng.randrange(8))]))


async def damaged_journal(root: str, copies: int, seed: int) -> ScenarioResult:
    result = ScenarioResult("journal damaged at 100 places", runs=copies)
    base = os.path.join(root, "damage")
    server = ServerProcess(base, soak_city(os.path.join(base, "data")))
    await server.start()
    await traffic_for(Traffic(CARDS, seed), server, TRAFFIC_SECONDS)
    truth = await served_balances(server.target, CARDS)
    result.check(server.terminate() == 0, "the stop did not exit 0")
    journal = os.path.join(server.data_dir, "journal", "data.mdb")
    used = os.path.getsize(journal)
    refused = 0
    for copy in range(copies):
        copy_dir = os.path.join(base, f"copy-{copy}")
        shutil.copytree(server.data_dir, os.path.join(copy_dir, "data"))
        shutil.rmtree(os.path.join(copy_dir, "data", "journal", "checkpoints"))  # on trial alone
        flip_bits(os.path.join(copy_dir, "data", "journal", "data.mdb"), used,
                  random.Random(seed * 1_000 + copy), FLIPS)  # fmt: skip
        damaged = ServerProcess(copy_dir, soak_city(os.path.join(copy_dir, "data")))
        try:
            await damaged.start()
        except AssertionError as exc:  # it refused to start: it must say where
            refused += 1
            named = re.search(r"journal (entry|page) \d+|cannot open the journal", str(exc))
            result.check(named is not None, f"copy {copy}: refused without saying where")
            continue
        served = await served_balances(damaged.target, CARDS)
        damaged.kill()
        result.check(served == truth, f"copy {copy}: started and served wrong balances")
        shutil.rmtree(copy_dir, ignore_errors=True)
    result.note = f"{refused} refused at start, {copies - refused} served the same balances"
    return result

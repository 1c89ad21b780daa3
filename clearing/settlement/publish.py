"""Settlement files on disk: written whole or not at all, and read back checked.

A day's directory appears only once every file is written and the journal has
recorded the date as settled (they are staged beside it and
renamed into place), so a failed or interrupted run leaves nothing that looks
final.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
from typing import Any

from clearing.errors import SettlementError
from clearing.settlement.compute import Computed
from clearing.settlement.figures import ISSUER_ID, SummaryRow, direction
from clearing.settlement.files import sha256


def settlement_root(data_dir: str) -> str:
    return os.path.join(data_dir, "settlement")


def publish(root: str, computed: Computed, recorded_sha256: str) -> str:
    """Put the files of a settled date in ``root/<date>/``; returns that directory.

    They must come out exactly as recorded; missing or damaged files are
    rewritten from the journal.
    """
    day = computed.business_date
    if recorded_sha256 != computed.manifest_sha256:
        raise SettlementError(
            f"{day} was settled with manifest {recorded_sha256}, but the journal now gives "
            f"{computed.manifest_sha256}; nothing was changed. Run `clearing journal verify` "
            "and check that this is the version of the engine that settled it"
        )
    final = os.path.join(root, day)
    if not _holds(final, computed.files):
        stage(root, computed)
        promote(root, day)
    return final


def stage(root: str, computed: Computed) -> None:
    """Write every file beside the final directory (``<date>.partial``)."""
    partial = os.path.join(root, computed.business_date + ".partial")
    try:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        # No fsync: the files are derived. The journal holds the truth and their hash;
        # files a crash left short fail that check on the next read and are rewritten.
        for name, data in sorted(computed.files.items()):
            with open(os.path.join(partial, name), "wb") as f:
                f.write(data)
    except OSError as exc:
        raise SettlementError(f"cannot write the settlement files under {root}: {exc}") from exc


def promote(root: str, day: str) -> str:
    """Rename the staged files into place: they appear whole or not at all."""
    final = os.path.join(root, day)
    partial, replaced = final + ".partial", final + ".replaced"
    try:
        if os.path.exists(final):
            shutil.rmtree(replaced, ignore_errors=True)
            os.rename(final, replaced)
        os.rename(partial, final)
        shutil.rmtree(replaced, ignore_errors=True)
    except OSError as exc:
        raise SettlementError(f"cannot put the settlement files in {final}: {exc}") from exc
    return final


def _holds(directory: str, wanted: dict[str, bytes]) -> bool:
    try:
        if sorted(os.listdir(directory)) != sorted(wanted):
            return False
        for name, data in wanted.items():
            with open(os.path.join(directory, name), "rb") as f:
                if f.read() != data:
                    return False
    except OSError:
        return False
    return True


def load_published(
    root: str, day: str, recorded_sha256: str
) -> tuple[dict[str, Any], list[SummaryRow]] | None:
    """(manifest, summary rows) of a settled date, or None when any file is
    missing or differs from what the journal recorded.

    The files checked are those the recorded manifest lists, so a day settled by
    an earlier format (without a file this version adds) is still served as it was.
    """
    directory = os.path.join(root, day)
    manifest_bytes = _read(os.path.join(directory, "manifest.json"))
    if manifest_bytes is None or sha256(manifest_bytes) != recorded_sha256:
        return None
    manifest = json.loads(manifest_bytes)
    contents: dict[str, bytes] = {}
    for name, digest in manifest["files"].items():
        data = _read(os.path.join(directory, name))
        if data is None or sha256(data) != digest:
            return None
        contents[name] = data
    if "summary.csv" not in contents:
        return None
    return manifest, parse_summary(contents["summary.csv"])


def _read(path: str) -> bytes | None:
    with contextlib.suppress(OSError), open(path, "rb") as f:
        return f.read()
    return None


def parse_summary(data: bytes) -> list[SummaryRow]:
    """summary.csv's party rows (the TOTAL rows left out), as compute made them: the
    issuer's row back to PAY/COLLECT/NONE of its net (the file says RECEIVE/FUND)."""
    reader = csv.reader(io.StringIO(data.decode()))
    next(reader)  # header
    rows = []
    for party_id, role, *numbers, way, bank in reader:
        if party_id == "TOTAL":
            continue
        row = SummaryRow._make([party_id, role, *map(int, numbers), way, bank])
        rows.append(
            row._replace(direction=direction(row.net_fen)) if party_id == ISSUER_ID else row
        )
    return rows

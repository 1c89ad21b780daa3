"""The Makefile's `.venv` check, run by real `make` on a copy of the Makefile in a temp dir
(only the check-venv target, which installs nothing)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
THIS = f"{sys.version_info.major}.{sys.version_info.minor}"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


def _check(tmp_path: Path, venv_python: str | None) -> subprocess.CompletedProcess[str]:
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    if venv_python is not None:
        (tmp_path / ".venv" / "bin").mkdir(parents=True)
        fake = tmp_path / ".venv" / "bin" / "python"
        fake.write_text(venv_python)
        fake.chmod(0o755)
    return subprocess.run(
        ["make", "-s", "check-venv", f"PYTHON={sys.executable}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_venv_of_another_python_is_named_with_the_fix(tmp_path):
    done = _check(tmp_path, "#!/bin/sh\necho 3.9\n")
    assert done.returncode != 0
    assert f".venv is Python 3.9 but make now uses {THIS}" in done.stderr
    assert "rm -rf .venv" in done.stderr


def test_a_venv_whose_python_is_gone_is_stale(tmp_path):
    done = _check(tmp_path, "#!/bin/sh\nexit 127\n")
    assert done.returncode != 0
    assert ".venv is stale (its Python no longer runs): run 'rm -rf .venv'" in done.stderr


def test_a_venv_of_the_same_python_passes(tmp_path):
    done = _check(tmp_path, f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    assert (done.returncode, done.stderr) == (0, "")


def test_no_venv_yet_passes(tmp_path):
    done = _check(tmp_path, None)
    assert (done.returncode, done.stderr) == (0, "")

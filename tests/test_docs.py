"""The contract ships in the repository: docs/SPEC.md, every relative link in the docs
resolves inside a clone, the SPEC names every tap status the wire has, and the license."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PATTERNS = ("*.md", "docs/*.md", "ops/*.md", "benchmarks/*.md")
DOCS = sorted(p for pattern in PATTERNS for p in ROOT.glob(pattern))
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repository(doc):
    missing = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL, or an anchor in the same page
        path = (doc.parent / target.split("#")[0]).resolve()
        if not path.exists() or not path.is_relative_to(ROOT):
            missing.append(target)
    assert missing == []
    assert "shared/SPEC" not in doc.read_text()


def test_spec_section_5_names_every_tap_status():
    proto = (ROOT / "proto" / "clearing" / "v1" / "taps.proto").read_text()
    enum = re.search(r"enum Status \{(.*?)\}", proto, re.S)
    assert enum is not None
    statuses = set(re.findall(r"^\s*([A-Z_]+) = \d+;", enum.group(1), re.M))
    statuses.discard("STATUS_UNSPECIFIED")
    spec = (ROOT / "docs" / "SPEC.md").read_text()
    section = spec[spec.index("## 5. ") : spec.index("## 6. ")]
    assert "SEQUENCE_TOO_FAR_AHEAD" in statuses
    assert {s for s in statuses if f"`{s}`" not in section} == set()


def test_license_is_apache_2_and_pyproject_says_so():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE", "NOTICE"]

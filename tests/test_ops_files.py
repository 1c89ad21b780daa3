"""The operator files in ops/: they parse, they agree with each other, and every
metric they use is one the server exports (so no panel or alert is silently empty).

promtool and systemd-analyze checks run only where the tools are installed
(`apt-get install prometheus`); the rest needs nothing beyond the package.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from clearing.runtime.config import ServerSettings
from clearing.runtime.metrics import Metrics
from clearing.runtime.service import Service

OPS = Path(__file__).resolve().parent.parent / "ops"
DASHBOARD = OPS / "grafana-dashboard.json"
ALERTS = OPS / "alerts.yml"
PROMETHEUS = OPS / "prometheus.yml"
UNIT = OPS / "clearing.service"
RUNBOOK = OPS / "RUNBOOK.md"
# alerts.yml's runbook_url base: the runbook of an install (ops/clearing.service's /opt/clearing).
RUNBOOK_URL = "file:///opt/clearing/ops/RUNBOOK.md"

# Series Prometheus itself makes, not the server.
PROMETHEUS_OWN = {"up"}
_METRIC = re.compile(r"\b((?:clearing|process)_[a-z0-9_]+|up(?=\{))")
_LABEL_MATCHER = re.compile(r"([a-z_][a-z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
_GROUPING = re.compile(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)")
_EXTRA_LABELS = {"job", "instance", "le"}  # added by Prometheus, or a histogram's buckets


# Reading the files -------------------------------------------------------------


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict) -> list[dict]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # collapsed rows keep theirs inside
    return found


def _dashboard_exprs() -> list[str]:
    return [t["expr"] for p in _panels(_dashboard()) for t in p.get("targets", [])] + [
        v["query"]["query"] if isinstance(v.get("query"), dict) else v["definition"]
        for v in _dashboard()["templating"]["list"]
        if v["type"] == "query"
    ]


def _yaml_blocks(path: Path, key: str) -> list[str]:
    """Values of ``key:`` in a YAML file, block scalars (| and >-) included.
    PyYAML is not a dependency: this reads the one style these files use."""
    values, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = re.match(rf"^(\s*)(?:- )?{key}:\s*(.*)$", lines[i])
        i += 1
        if not m:
            continue
        indent, rest = len(m.group(1)), m.group(2)
        if rest and rest[0] not in "|>":
            values.append(rest.strip().strip("\"'"))
            continue
        block = []
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > indent):
            block.append(lines[i].strip())
            i += 1
        values.append(" ".join(block).strip())
    return values


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _alert_exprs() -> list[str]:
    return _yaml_blocks(ALERTS, "expr")


def _alert_names() -> list[str]:
    return _yaml_blocks(ALERTS, "alert")


def _metric_names(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in _METRIC.findall(expr)}


def _label_names(exprs: list[str]) -> set[str]:
    labels: set[str] = set()
    for expr in exprs:
        labels.update(_LABEL_MATCHER.findall(expr))
        for group in _GROUPING.findall(expr):
            labels.update(name.strip() for name in group.split(",") if name.strip())
    return labels


# What the server exports -------------------------------------------------------


def _sample_names(registry: CollectorRegistry) -> tuple[set[str], set[str]]:
    """Every sample name the registry can produce (labelled families with no child
    yet included, by their type's suffixes), and every label name it declares."""
    names: set[str] = set()
    labels: set[str] = set()
    for family in registry.collect():
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("", "_sum", "_count", "_created"),
            "info": ("_info",),
        }.get(family.type, ("",))
        names.update(family.name + s for s in suffixes)
        for sample in family.samples:
            names.add(sample.name)
            labels.update(sample.labels)
    return names, labels


def _declared_labels(metrics: Metrics) -> set[str]:
    """Label names of the labelled families (no child yet: no samples to read them from)."""
    labels: set[str] = set()
    for value in vars(metrics).values():
        labels.update(getattr(value, "_labelnames", ()))
    return labels


@pytest.fixture
def exported(city) -> tuple[set[str], set[str]]:
    """(sample names, label names) of a real server's registry on the test city."""
    service = Service(city)
    service.load()
    try:
        metrics = Metrics()
        metrics.watch_engine(service)
        names, labels = _sample_names(metrics.registry)
        return names, labels | _declared_labels(metrics)
    finally:
        service.journal.close()


# The dashboard ------------------------------------------------------------------


def test_dashboard_is_importable_json_with_unique_ids_and_a_templated_data_source():
    dashboard = _dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] and dashboard["title"]
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    # The import input is the variable's default; panels follow the variable, so its
    # "Data source" dropdown still works after an import.
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["name"] == "datasource" and variable["current"]["value"] == "${DS_PROMETHEUS}"
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["expr"].strip(), panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_dashboard_panels_fit_the_grid_and_do_not_overlap():
    cells: dict[tuple[int, int], str] = {}
    for panel in _panels(_dashboard()):
        g = panel["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0, panel["title"]
        assert g["x"] + g["w"] <= 24, f"{panel['title']} is wider than the grid"
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


# Alerts and the scrape configuration ---------------------------------------------


def test_alerts_have_a_severity_an_explanation_and_a_runbook_section():
    text = ALERTS.read_text()
    names = _alert_names()
    assert len(names) >= 11 and len(names) == len(set(names))
    assert len(_alert_exprs()) == len(names)
    for key in ("summary", "description", "runbook_url"):
        assert len(_yaml_blocks(ALERTS, key)) == len(names), key
    assert len(re.findall(r"^\s+severity: (?:critical|warning)$", text, re.M)) == len(names)
    headings = {
        m.group(1).lower() for m in re.finditer(r"^### (\S+)\s*$", RUNBOOK.read_text(), re.M)
    }
    for name in names:
        assert name.lower() in headings, f"RUNBOOK.md has no section '### {name}'"
    for url in _yaml_blocks(ALERTS, "runbook_url"):
        base, _, anchor = url.partition("#")
        assert base == RUNBOOK_URL and anchor in headings, url  # absolute: no relative path


def test_the_runbook_url_base_is_where_the_unit_installs_the_runbook():
    """Alertmanager links must be absolute; the base is the installed runbook, the one
    the unit's Documentation= names (one install prefix, /opt/clearing, for both)."""
    unit = _unit_settings()
    assert unit["Documentation"] == [RUNBOOK_URL.replace("file:///", "file:/")]
    assert unit["ExecStart"][0].startswith(RUNBOOK_URL.removeprefix("file://").split("/ops/")[0])
    tests = _yaml_blocks(OPS / "alerts_test.yml", "runbook_url")
    assert tests and all(url.startswith(RUNBOOK_URL + "#") for url in tests), tests
    assert "deny_list" not in " ".join(_alert_exprs()), "a still deny list is not an alert"


def test_prometheus_scrapes_the_engine_every_15_s_and_loads_the_alerts():
    text = PROMETHEUS.read_text()
    assert re.search(r"^\s+- job_name: clearing\b", text, re.M)
    assert re.search(r"^\s+scrape_interval: 15s$", text, re.M)
    assert re.search(r"targets: \[\"127\.0\.0\.1:9464\"\]", text)
    assert re.search(r"^rule_files:\n\s+- alerts\.yml$", text, re.M)
    assert ServerSettings().metrics_listen == "127.0.0.1:9464"


# Every name used is exported --------------------------------------------------------


def test_every_metric_the_dashboard_and_alerts_use_is_exported(exported):
    names, _ = exported
    used = _metric_names(_dashboard_exprs() + _alert_exprs())
    assert "clearing_taps_total" in used and "process_cpu_seconds_total" in used  # the regex works
    missing = used - names - PROMETHEUS_OWN
    assert not missing, f"used in ops/ but not exported: {sorted(missing)}"


def test_every_label_the_dashboard_and_alerts_use_is_exported(exported):
    _, labels = exported
    used = _label_names(_dashboard_exprs() + _alert_exprs())
    assert {"status", "grpc_code", "terminal_class"} <= used  # the regexes work
    missing = used - labels - _EXTRA_LABELS
    assert not missing, f"labels used in ops/ but not exported: {sorted(missing)}"


# The systemd unit ---------------------------------------------------------------------


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_the_unit_is_notify_restarts_on_failure_and_outlasts_the_grace_period():
    unit = _unit_settings()
    assert unit["Type"] == ["notify"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["ExecStart"] == [
        "/opt/clearing/.venv/bin/clearing serve --config /etc/clearing/city.toml"
    ]
    assert unit["KillSignal"] == ["SIGTERM"]
    assert unit["KillMode"] == ["mixed"]  # a checkpoint child is not SIGTERMed with the server
    assert unit["LimitFSIZE"] == ["infinity"]
    assert int(unit["TimeoutStopSec"][0]) > 2 * ServerSettings().grace_seconds
    assert int(unit["TimeoutStartSec"][0]) >= 120
    assert unit["User"][0] not in ("root", "0")
    assert unit["NoNewPrivileges"] == ["yes"] and unit["ProtectSystem"] == ["strict"]
    assert "/var/lib/clearing" in unit["ReadWritePaths"]
    for value in unit.get("Environment", []):
        assert not re.search(r"token|key|secret|password", value, re.I), value


def test_systemd_analyze_verifies_the_unit(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    # The binary and the user do not exist here: point ExecStart at one that does.
    unit = tmp_path / "clearing.service"
    unit.write_text(UNIT.read_text().replace("/opt/clearing/.venv/bin/clearing", "/bin/true"))
    run = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Unknown" not in run.stderr, run.stderr


# promtool -------------------------------------------------------------------------------


def _promtool(*args: str, cwd: Path = OPS) -> subprocess.CompletedProcess:
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_promtool_checks_the_rules_and_the_configuration():
    for args in (("check", "rules", "alerts.yml"), ("check", "config", "prometheus.yml")):
        run = _promtool(*args)
        assert run.returncode == 0, run.stdout + run.stderr


def test_promtool_rule_unit_tests_pass():
    run = _promtool("test", "rules", "alerts_test.yml")
    assert run.returncode == 0, run.stdout + run.stderr


def test_promtool_parses_every_dashboard_query(tmp_path):
    """Each query as a recording rule: promtool then parses it as PromQL."""
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(_dashboard_exprs()):
        if expr.startswith("label_values("):
            continue  # Grafana's, not PromQL
        promql = expr.replace("$instance", ".+")
        lines += [f"      - record: dashboard:query_{i}", f"        expr: {json.dumps(promql)}"]
    (tmp_path / "dashboard_rules.yml").write_text("\n".join(lines) + "\n")
    run = _promtool("check", "rules", "dashboard_rules.yml", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr

"""report.html: self-contained, deterministic, escaped, and well-formed."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from clearing.settlement.exception_rows import ExceptionRow
from clearing.settlement.figures import SummaryRow
from clearing.settlement.report import EXCEPTIONS_SHOWN_MAX, money, render_report

VOID = {"meta", "link", "br", "hr", "img", "input", "area", "base", "col", "source", "wbr"}
HOURS_BY_CLASS = {
    "VALIDATOR": {7: 900, 8: 1200, 9: 400, 17: 800, 18: 1000},
    "POS": {8: 300, 12: 150, 13: 120},
    "BILLING": {10: 5},
}
NONZERO = {(c, h) for c, hours in HOURS_BY_CLASS.items() for h in hours}
EVIL = "<b>evil</b>&co"


def _row(party_id: str, role: str, count: int, gross: int, fee: int, net: int) -> SummaryRow:
    direction = "PAY" if net > 0 else "COLLECT" if net < 0 else "NONE"
    return SummaryRow(party_id, role, count, gross, 0, gross, fee, net, direction, "6222-0001")


def sample() -> tuple[dict, list[SummaryRow], list[ExceptionRow]]:
    # 12 merchants so the top-10 cut shows; gross 12,000.00 down to 1,000.00.
    merchants = [
        _row(f"m{k:02d}", "MERCHANT", 10 * k, 100_000 * (13 - k), 1_000 * (13 - k), 0)
        for k in range(1, 13)
    ]
    rows = [
        *merchants,
        _row("bus-co", "OPERATOR", 4000, 123456, 1234, 122222),
        _row(EVIL, "OPERATOR", 3, 300, 3, 297),
        _row("agent-1", "AGENT", 2, 50_000, 250, -49_750),
        _row("hall-1", "HALL", 5, 80_000, 0, -80_000),
        _row("issuer", "ISSUER", 0, 0, 0, -123456),
    ]
    rows.sort(key=lambda r: r.party_id)
    manifest = {
        "business_date": "2026-11-21",
        "window": {
            "timezone": "Asia/Shanghai",
            "cutoff": "04:00",
            "start_ms": 1_795_204_800_000,
            "end_ms": 1_795_291_200_000,
        },
        "journal": {
            "first_seq": 101,
            "last_seq": 5_100,
            "entries": 5_000,
            "entries_by_kind": {"tap": 4_990, "card": 10},
        },
        "configuration_version": 7,
        "counts": {
            "taps": {
                "taps": 4_900,
                "ok": 4_875,
                "rejected": 25,
                "rejected_by_status": {"ID_CONFLICT": 5, "INSUFFICIENT_FUNDS": 20},
                "duplicates": 3,
                "late": 2,
                "hot_list_loss": 1,
            },
            "card_operations": {"TopUp": 7, "Issue": 3},
            "top_ups": 7,
            "transfers": 0,
            "payments": 16,
            "exceptions": 2,
            "parties": 17,
        },
        "totals": {
            "list_fen": 1_523_756,
            "discount_fen": 0,
            "gross_fen": 1_323_756,
            "fee_fen": 79_237,
            "paid_fen": 1_322_219,
            "collected_fen": 129_750,
            "topups_fen": 130_000,
            "card_charged_fen": 0,
            "late_charged_fen": 0,
            "transfers_fen": 0,
        },
        "issuer": {
            "net_fen": -123456,
            "hall_topups_fen": 80_000,
            "agent_topups_fen": 50_000,
            "fee_income_fen": 79_237,
            "commission_expense_fen": 250,
            "hot_list_loss_fen": 200,
            "hot_list_loss_count": 1,
            "deposits_taken_fen": 2_000,
            "deposits_refunded_fen": 0,
            "balance_refunds_fen": 0,
            "closing_refunds_paid_fen": 0,
            "float_opening_fen": 10_000_000,
            "float_closing_fen": 9_876_544,
            "float_change_fen": -123_456,
        },
        "invariants": {"sum_of_nets_is_zero": True, "every_tap_counted_once": True},
        "taps_by_hour": {
            c: [hours.get(h, 0) for h in range(24)] for c, hours in HOURS_BY_CLASS.items()
        },
    }
    exceptions = [
        ExceptionRow("REJECTED_TAP", "ID_CONFLICT", EVIL, 42, 5, 1_000, "not applied"),
        ExceptionRow("SEQUENCE_GAP", "MISSING", "bus-co", "", 2, 0, "never arrived"),
    ]
    return manifest, rows, exceptions


class TagChecker(HTMLParser):
    """Every non-void start tag is closed, in order; counts the tags seen."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.seen: dict[str, int] = {}
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.seen[tag] = self.seen.get(tag, 0) + 1
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):  # <rect .../> in SVG
        self.seen[tag] = self.seen.get(tag, 0) + 1

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def check_well_formed(page: str) -> dict[str, int]:
    checker = TagChecker()
    checker.feed(page)
    checker.close()
    assert checker.errors == []
    assert checker.stack == []
    for tag in ("html", "head", "body", "svg", "table"):
        assert checker.seen.get(tag, 0) >= 1, tag
    return checker.seen


def test_money_is_integer_cny():
    assert money(123456) == "1,234.56"
    assert money(-123456) == "-1,234.56"
    assert money(5) == "0.05"
    assert money(-5) == "-0.05"
    assert money(0) == "0.00"
    assert money(10_000_000_000_001) == "100,000,000,000.01"


def test_report_shows_the_day():
    page = render_report(*sample())
    assert page.startswith("<!DOCTYPE html>")
    for text in ("2026-11-21", "Asia/Shanghai", "04:00", "seq 101–5100", "日结报表"):
        assert text in page
    assert "1,234.56" in page  # bus-co's gross
    assert "-1,234.56" in page  # the float change and the issuer's net
    assert "98,765.44" in page  # the closing float
    assert "2 of 2 invariants hold" in page
    assert "sum_of_nets_is_zero" in page
    check_well_formed(page)


def test_taps_by_hour_chart():
    page = render_report(*sample())
    svg = page[page.index("<svg") : page.index("</svg>")]
    assert len(re.findall(r'<g class="hour"', svg)) == 24
    bars = re.findall(r"<rect [^>]*><title>(\d\d):00–\d\d:00 (\w+): ([\d,]+) taps</title>", svg)
    assert {(c, int(h)) for h, c, _ in bars} == NONZERO
    assert len(bars) == len(NONZERO)
    for name in HOURS_BY_CLASS:  # the legend
        assert f">{name}</text>" in svg
    assert ">2,000</text>" in svg  # y max: 1,500 at 08:00 rounded up to a round number
    assert all(f">{h}</text>" in svg for h in range(24))  # hour labels


def test_top_merchants_and_operators():
    page = render_report(*sample())
    merchants = page[page.index("<h3>Merchants") : page.index("<h3>Operators")]
    for k in range(1, 11):
        assert f">m{k:02d}<" in merchants
    assert ">m11<" not in merchants and ">m12<" not in merchants
    assert merchants.index(">m01<") < merchants.index(">m02<")  # by gross, descending
    assert "summary.csv: every party" in page  # the full list is in the CSV


def test_text_is_escaped():
    page = render_report(*sample())
    assert "&lt;b&gt;evil&lt;/b&gt;&amp;co" in page
    assert "<b>" not in page


def test_self_contained():
    page = render_report(*sample())
    lowered = page.lower()
    for banned in ("http://", "https://", "<script", "<link", "<img", "@import"):
        assert banned not in lowered
    # The one url() is the embedded heading font, a data: URL: nothing is fetched.
    assert re.findall(r"url\(([a-z]+:[^;,]{0,20})", lowered) == ["data:font/ttf"]


def test_deterministic_whatever_the_dict_order():
    manifest, rows, exceptions = sample()
    first = render_report(manifest, rows, exceptions)
    assert render_report(manifest, rows, exceptions) == first
    shuffled = dict(reversed(manifest.items()))
    shuffled["invariants"] = dict(reversed(manifest["invariants"].items()))
    shuffled["taps_by_hour"] = dict(reversed(manifest["taps_by_hour"].items()))
    assert render_report(shuffled, rows, exceptions).encode() == first.encode()


def test_failed_invariant_is_flagged():
    manifest, rows, exceptions = sample()
    manifest["invariants"]["sum_of_nets_is_zero"] = False
    page = render_report(manifest, rows, exceptions)
    assert "sum_of_nets_is_zero — FAILED" in page
    assert "1 of 2 invariants hold" in page


def test_many_exceptions_are_cut_with_a_pointer_to_the_csv():
    manifest, rows, _ = sample()
    many = [
        ExceptionRow("LATE_TAP", "OLD", "bus-co", k, 1, 100, f"row-{k}")
        for k in range(EXCEPTIONS_SHOWN_MAX + 3)
    ]
    page = render_report(manifest, rows, many)
    assert f">row-{EXCEPTIONS_SHOWN_MAX - 1}<" in page
    assert f">row-{EXCEPTIONS_SHOWN_MAX}<" not in page
    assert "3 more are in exceptions.csv" in page
    check_well_formed(page)


def test_empty_day():
    for manifest in ({}, {**sample()[0], "taps_by_hour": {}, "invariants": {}}):
        page = render_report(manifest, [], [])
        seen = check_well_formed(page)
        assert "<svg" in page
        assert page.count('<g class="hour"') == 24
        assert seen.get("rect", 0) == 0  # no bars, no legend
        assert "No exceptions." in page
        assert "No OK taps this day." in page
        assert render_report(manifest, [], []) == page

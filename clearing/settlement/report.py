"""report.html: the day's settlement as one page a finance team can read (SPEC §8).

The page is self-contained (inline CSS and SVG, no scripts, nothing fetched) so
it can be mailed, archived and opened offline years later. Its bytes depend on
the inputs only (no clock, sorted iteration, integer money) because the
manifest journals its SHA-256 and a re-run must reproduce it exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

from clearing.limits import EXCEPTIONS_SHOWN_MAX, SETTLEMENT_TOP_PARTIES
from clearing.settlement.exceptions import ExceptionRow
from clearing.settlement.figures import SummaryRow

HOURS = 24
# Fixed colours for the known classes so the chart looks the same every day;
# any other class takes the next fallback colour in sorted order.
CLASS_COLOURS = {"VALIDATOR": "#2563eb", "POS": "#ea580c", "BILLING": "#16a34a"}
FALLBACK_COLOURS = ("#9333ea", "#db2777", "#0d9488", "#64748b")

_TAP_ROLES = {"OPERATOR": "operators", "MERCHANT": "merchants", "UTILITY": "utilities"}
_ISSUER_LINES = (
    ("Hall top-ups", "hall_topups_fen"),
    ("Agent top-ups", "agent_topups_fen"),
    ("Fee income", "fee_income_fen"),
    ("Commission expense", "commission_expense_fen"),
    (None, "hot_list_loss_fen"),
    ("Deposits taken", "deposits_taken_fen"),
    ("Deposits refunded", "deposits_refunded_fen"),
    ("Balance refunds", "balance_refunds_fen"),
    ("Closing refunds paid", "closing_refunds_paid_fen"),
)

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI","Noto Sans","Noto Sans CJK SC",sans-serif;
margin:0 auto;max-width:1120px;padding:24px;color:#1f2937;background:#fff;font-size:14px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 8px;
border-bottom:2px solid #e5e7eb;padding-bottom:4px}
.zh{color:#6b7280;font-weight:normal;font-size:.8em;margin-left:8px}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:8px 0}
dl.meta dt{color:#6b7280}dl.meta dd{margin:0}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:12px}
.card{border:1px solid #e5e7eb;border-radius:8px;padding:12px;background:#f9fafb}
.card .label{color:#6b7280;font-size:12px}.card .value{font-size:20px;font-weight:600;
font-variant-numeric:tabular-nums}.card .sub{color:#6b7280;font-size:12px}
.unit{font-size:12px;color:#6b7280;margin-left:4px}
table{border-collapse:collapse;margin:8px 0;font-variant-numeric:tabular-nums}
th,td{border-bottom:1px solid #e5e7eb;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f3f4f6;font-weight:600}td.num,th.num{text-align:right;white-space:nowrap}
td.neg{color:#b91c1c}tr.total td{font-weight:600;border-top:2px solid #9ca3af}
.cols{display:flex;flex-wrap:wrap;gap:24px}.cols>div{flex:1 1 400px}
ul.checks{list-style:none;padding:0}ul.checks li{padding:2px 0}
.ok{color:#15803d}.bad{color:#b91c1c;font-weight:600}.note{color:#6b7280}
.float{font-size:18px;font-variant-numeric:tabular-nums}
details summary{cursor:pointer;font-weight:600;margin:8px 0}
svg text{font-family:inherit;fill:#374151}
@media print{details{display:block}body{padding:0}}
"""


def money(fen: int) -> str:
    """Integer fen as CNY with two decimals, e.g. -123456 -> "-1,234.56" (no floats)."""
    sign = "-" if fen < 0 else ""
    yuan, cents = divmod(abs(fen), 100)
    return f"{sign}{yuan:,}.{cents:02d}"


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _n(count: int) -> str:
    return f"{count:,}"


def _utc(ms: Any) -> str:
    # UTC from epoch arithmetic alone: no dependency on the host's tz database.
    if not isinstance(ms, int):
        return "?"
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _heading(english: str, chinese: str) -> str:
    return f'<h2>{_e(english)}<span class="zh">{_e(chinese)}</span></h2>'


def _table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    numeric: set[int],
    total: Sequence[object] | None = None,
) -> str:
    """Rows of plain values (escaped here); numeric columns right-aligned, negatives red."""

    def row(cells: Sequence[object], tag: str, attrs: str = "") -> str:
        out = []
        for i, cell in enumerate(cells):
            text = str(cell)
            cls = ("num neg" if text.startswith("-") else "num") if i in numeric else ""
            out.append(
                f'<{tag} class="{cls}">{_e(text)}</{tag}>' if cls else f"<{tag}>{_e(text)}</{tag}>"
            )
        return f"<tr{attrs}>{''.join(out)}</tr>"

    body = [row(r, "td") for r in rows]
    if total is not None:
        body.append(row(total, "td", ' class="total"'))
    head = row(headers, "th")
    return f"<table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"


def _header(m: Mapping[str, Any]) -> str:
    window, journal = m.get("window", {}), m.get("journal", {})
    meta = [
        ("Business date", m.get("business_date", "")),
        ("Time zone / cutoff", f"{window.get('timezone', '')} · cutoff {window.get('cutoff', '')}"),
        ("Window (UTC)", f"{_utc(window.get('start_ms'))} → {_utc(window.get('end_ms'))}"),
        (
            "Journal",
            f"seq {journal.get('first_seq', '?')}–{journal.get('last_seq', '?')}"
            f" · {_n(journal.get('entries', 0))} entries",
        ),
        ("Configuration version", m.get("configuration_version", "")),
    ]
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in meta)
    return (
        f'<header><h1>Settlement report<span class="zh">日结报表</span> — '
        f'{_e(m.get("business_date", ""))}</h1><dl class="meta">{items}</dl></header>'
    )


def _card(label: str, value: str, sub: str = "", unit: str = "") -> str:
    unit_html = f'<span class="unit">{_e(unit)}</span>' if unit else ""
    sub_html = f'<div class="sub">{_e(sub)}</div>' if sub else ""
    return (
        f'<div class="card"><div class="label">{_e(label)}</div>'
        f'<div class="value">{_e(value)}{unit_html}</div>{sub_html}</div>'
    )


def _key_figures(m: Mapping[str, Any], rows: list[SummaryRow]) -> str:
    counts, totals = m.get("counts", {}), m.get("totals", {})
    taps = counts.get("taps", {})
    gross = {role: sum(r.gross_fen for r in rows if r.role == role) for role in _TAP_ROLES}
    cards = [
        _card("Taps OK 成功", _n(taps.get("ok", 0)), f"of {_n(taps.get('taps', 0))} taps"),
        _card(
            "Taps rejected 拒绝",
            _n(taps.get("rejected", 0)),
            f"{_n(taps.get('duplicates', 0))} duplicates · {_n(taps.get('late', 0))} late",
        ),
        *(
            _card(f"Gross to {label}", money(gross[role]), unit="CNY")
            for role, label in _TAP_ROLES.items()
        ),
        _card("Fees 手续费", money(totals.get("fee_fen", 0)), unit="CNY"),
        _card(
            "Top-ups 充值",
            money(totals.get("topups_fen", 0)),
            f"{_n(counts.get('top_ups', 0))} top-ups",
            "CNY",
        ),
        _card("Total paid 付出", money(totals.get("paid_fen", 0)), unit="CNY"),
        _card("Total collected 收取", money(totals.get("collected_fen", 0)), unit="CNY"),
    ]
    return _heading("Key figures", "关键数据") + f'<div class="cards">{"".join(cards)}</div>'


def _float_section(m: Mapping[str, Any]) -> str:
    i = m.get("issuer", {})
    movement = (
        f'<p class="float">Card float: {money(i.get("float_opening_fen", 0))} → '
        f"{money(i.get('float_closing_fen', 0))} CNY "
        f"(change {money(i.get('float_change_fen', 0))})</p>"
    )
    losses = i.get("hot_list_loss_count", 0)
    loss = f"Hot-list loss ({_n(losses)} tap{'' if losses == 1 else 's'})"
    lines = [(label or loss, money(i.get(key, 0))) for label, key in _ISSUER_LINES]
    table = _table(("Issuer", "CNY"), lines, {1}, total=("Issuer net", money(i.get("net_fen", 0))))
    return _heading("Float movement", "沉淀资金变动") + movement + table


def _top_parties(rows: list[SummaryRow]) -> str:
    def top(role: str, title: str) -> str:
        ranked = sorted(  # parties with no sales that day are not "top" of anything
            (r for r in rows if r.role == role and r.gross_fen),
            key=lambda r: (-r.gross_fen, r.party_id),
        )
        shown = [
            (n, r.party_id, _n(r.count), money(r.gross_fen), money(r.fee_fen), money(r.net_fen))
            for n, r in enumerate(ranked[:SETTLEMENT_TOP_PARTIES], 1)
        ]
        headers = ("#", "Party", "Taps", "Gross", "Fee", "Net")
        none = '<p class="note">No sales on this day.</p>'
        body = _table(headers, shown, {0, 2, 3, 4, 5}) if shown else none
        return f"<div><h3>{_e(title)}</h3>{body}</div>"

    cols = top("MERCHANT", "Merchants 商户") + top("OPERATOR", "Operators 运营商")
    return (
        _heading(f"Top {SETTLEMENT_TOP_PARTIES} parties by gross", "交易额前列")
        + f'<div class="cols">{cols}</div>'
    )


def _nice_ceiling(n: int) -> int:
    """The smallest 1, 2 or 5 × 10^k at or above n, so the y axis has round labels."""
    step = 1
    while True:
        for m in (1, 2, 5):
            if m * step >= n:
                return m * step
        step *= 10


def _colours(classes: list[str]) -> dict[str, str]:
    unknown = [c for c in classes if c not in CLASS_COLOURS]
    extra = {c: FALLBACK_COLOURS[k % len(FALLBACK_COLOURS)] for k, c in enumerate(unknown)}
    return {c: CLASS_COLOURS.get(c) or extra[c] for c in classes}


def _svg_chart(by_class: Mapping[str, Sequence[int]]) -> str:
    """Stacked bars, one per local hour, drawn in integer pixels; <title>s are the tooltips."""
    classes = sorted(by_class)
    hours = {c: ([*by_class[c], *[0] * HOURS])[:HOURS] for c in classes}
    colour = _colours(classes)
    left, top_y, plot_h, slot, bar = 64, 40, 240, 40, 30
    width, height = left + slot * HOURS + 16, top_y + plot_h + 44
    ceiling = _nice_ceiling(
        max((sum(hours[c][h] for c in classes) for h in range(HOURS)), default=0)
    )
    bottom = top_y + plot_h
    # No xmlns: inline SVG in HTML5 needs none, and the page must hold no URL at all.
    out = [
        f'<svg width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="OK taps by local hour">'
    ]
    for k, c in enumerate(classes):  # legend, above the plot
        x = left + 130 * k
        out.append(
            f'<rect x="{x}" y="8" width="14" height="14" fill="{colour[c]}"/>'
            f'<text x="{x + 20}" y="20" font-size="13">{_e(c)}</text>'
        )
    for value, y in ((ceiling, top_y), (ceiling // 2, top_y + plot_h // 2), (0, bottom)):
        out.append(
            f'<line x1="{left}" y1="{y}" x2="{width - 16}" y2="{y}" stroke="#e5e7eb"/>'
            f'<text x="{left - 6}" y="{y + 4}" font-size="11" text-anchor="end">'
            f"{_n(value)}</text>"
        )
    for h in range(HOURS):
        x, cumulative, parts, y_top = left + slot * h + (slot - bar) // 2, 0, [], bottom
        for c in classes:
            count = hours[c][h]
            if not count:
                continue
            cumulative += count
            # Rounded on the running total so segments add up to the bar's height; at least
            # 1 px each so an hour with a handful of taps still shows (and has a tooltip).
            y_high = min(bottom - cumulative * plot_h // ceiling, y_top - 1)
            height, y_top = y_top - y_high, y_high
            parts.append(
                f'<rect x="{x}" y="{y_high}" width="{bar}" height="{height}" '
                f'fill="{colour[c]}"><title>{h:02d}:00–{h + 1:02d}:00 {_e(c)}: '
                f"{_n(count)} taps</title></rect>"
            )
        out.append(f'<g class="hour" data-hour="{h}">{"".join(parts)}</g>')
        out.append(
            f'<text x="{x + bar // 2}" y="{bottom + 16}" font-size="11" '
            f'text-anchor="middle">{h}</text>'
        )
    out.append(
        f'<text x="{left + slot * HOURS // 2}" y="{bottom + 36}" font-size="12" '
        'text-anchor="middle">local hour of occurrence</text></svg>'
    )
    return "".join(out)


def _taps_by_hour(m: Mapping[str, Any]) -> str:
    by_class = m.get("taps_by_hour") or {}
    note = "" if by_class else '<p class="note">No OK taps this day.</p>'
    return _heading("OK taps by hour", "分时刷卡量") + note + _svg_chart(by_class)


def _sorted_counts(counts: Mapping[str, int]) -> list[tuple[str, str]]:
    return [(key, _n(value)) for key, value in sorted(counts.items())]


def _counts(m: Mapping[str, Any]) -> str:
    counts, journal = m.get("counts", {}), m.get("journal", {})
    tables = [
        ("Rejected taps by status", counts.get("taps", {}).get("rejected_by_status", {})),
        ("Card operations", counts.get("card_operations", {})),
        ("Journal entries by kind", journal.get("entries_by_kind", {})),
    ]
    cols = "".join(
        f"<div><h3>{_e(title)}</h3>{_table(('', 'Count'), _sorted_counts(d), {1})}</div>"
        for title, d in tables
    )
    return _heading("Counts", "计数") + f'<div class="cols">{cols}</div>'


def _invariants(m: Mapping[str, Any]) -> str:
    checks = m.get("invariants", {})
    items = "".join(
        f'<li class="ok">✓ {_e(name)}</li>'
        if held
        else f'<li class="bad">✗ {_e(name)} — FAILED</li>'
        for name, held in sorted(checks.items())
    )
    held = sum(1 for ok in checks.values() if ok)
    summary = f"<p>{held} of {len(checks)} invariants hold.</p>"
    return _heading("Invariants", "校验") + summary + f'<ul class="checks">{items}</ul>'


def _exceptions(exceptions: list[ExceptionRow]) -> str:
    if not exceptions:
        return _heading("Exceptions", "异常") + '<p class="note">No exceptions.</p>'
    shown = [
        (x.kind, x.reason, x.party_id, x.terminal_id, _n(x.count), money(x.amount_fen), x.detail)
        for x in exceptions[:EXCEPTIONS_SHOWN_MAX]
    ]
    more = len(exceptions) - len(shown)
    note = ""
    if more:  # the page stays light; the CSV next to it is complete
        note = (
            f'<p class="note">Showing the first {_n(len(shown))} of {_n(len(exceptions))} rows; '
            f"{_n(more)} more are in exceptions.csv.</p>"
        )
    headers = ("Kind", "Reason", "Party", "Terminal", "Count", "Amount", "Detail")
    return _heading("Exceptions", "异常") + note + _table(headers, shown, {3, 4, 5})


def _files_note(manifest: dict) -> str:
    """Every party's row is in summary.csv: a page of 650 rows would only slow it down."""
    counts = manifest.get("counts", {})
    return (
        _heading("Files", "文件")
        + f'<p class="note">summary.csv: every party ({_n(counts.get("parties", 0))}) and the '
        + f"issuer; payments.csv: {_n(counts.get('payments', 0))} payment instructions; "
        + "exceptions.csv; manifest.json: the SHA-256 of each file, recorded in the journal.</p>"
    )


def render_report(manifest: dict, rows: list[SummaryRow], exceptions: list[ExceptionRow]) -> str:
    date = _e(manifest.get("business_date", ""))
    sections = [
        _header(manifest),
        _key_figures(manifest, rows),
        _float_section(manifest),
        _top_parties(rows),
        _taps_by_hour(manifest),
        _counts(manifest),
        _invariants(manifest),
        _exceptions(exceptions),
        _files_note(manifest),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>Settlement report {date}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )

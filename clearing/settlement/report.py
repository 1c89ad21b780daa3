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
from clearing.settlement.chart import svg_chart
from clearing.settlement.cjk_font import TTF_BASE64
from clearing.settlement.exception_rows import REVIEW, ExceptionRow, action
from clearing.settlement.figures import (
    ISSUER_NET_FORMULA,
    PAYMENTS_NET_FORMULA,
    SummaryRow,
    issuer_net_terms,
    payments_net_terms,
)

_TAP_ROLES = {"OPERATOR": "operators", "MERCHANT": "merchants", "UTILITY": "utilities"}
# Issuer figures shown beside the formula but not in it: cash that never was the
# issuer's income (deposits) or that the formula already counts another way.
_ISSUER_MEMO = (
    ("Deposits taken", "deposits_taken_fen"),
    ("Deposits refunded", "deposits_refunded_fen"),
    ("Closing refunds paid (balances + deposits)", "closing_refunds_paid_fen"),
)
# The Chinese half of a heading is optional: English comes first and alone carries
# the meaning. Its glyphs travel in the page (cjk_font.py, 10 KB), used where the
# host has none of the CJK fonts each platform ships (macOS, Windows, Linux).
CJK_FONTS = (
    '"PingFang SC","Hiragino Sans GB","Microsoft YaHei","Noto Sans CJK SC",'
    '"Source Han Sans SC","WenQuanYi Micro Hei","Clearing CJK subset",sans-serif'
)
# A data: URL fetches nothing; unicode-range keeps the subset off any other text.
FONT_FACE = (
    '@font-face{font-family:"Clearing CJK subset";'
    f'src:url(data:font/ttf;base64,{"".join(TTF_BASE64)}) format("truetype");'
    "unicode-range:U+3000-303F,U+3400-4DBF,U+4E00-9FFF,U+FF00-FFEF}"
)

CSS = """
FONT_FACE
body{font-family:system-ui,-apple-system,"Segoe UI","Noto Sans",Arial,sans-serif;
margin:0 auto;max-width:1120px;padding:24px;color:#1f2937;background:#fff;font-size:14px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 8px;
border-bottom:2px solid #e5e7eb;padding-bottom:4px}
.zh{color:#6b7280;font-weight:normal;font-size:.8em;margin-left:8px;font-family:CJK_FONTS}
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
svg text{font-family:inherit;fill:#374151}tr.sum td{font-weight:600}
.formula{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px}
tr.review td:first-child{color:#b91c1c;font-weight:600}
@media print{details{display:block}body{padding:0}}
""".replace("CJK_FONTS", CJK_FONTS).replace("FONT_FACE", FONT_FACE)


def money(fen: int) -> str:
    """Integer fen as CNY with two decimals, e.g. -123456 -> "-1,234.56" (no floats)."""
    sign = "-" if fen < 0 else ""
    yuan, cents = divmod(abs(fen), 100)
    return f"{sign}{yuan:,}.{cents:02d}"


def _signed(fen: int) -> str:
    """A contribution with its sign always shown: "+130.91", "-130.00"."""
    return ("+" if fen > 0 else "") + money(fen)


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _n(count: int) -> str:
    return f"{count:,}"


def _utc(ms: Any) -> str:
    # UTC from epoch arithmetic alone: no dependency on the host's tz database.
    if not isinstance(ms, int):
        return "?"
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _zh(chinese: str) -> str:
    return f'<span class="zh" lang="zh-Hans">{_e(chinese)}</span>'


def _heading(english: str, chinese: str) -> str:
    return f"<h2>{_e(english)}{_zh(chinese)}</h2>"


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
        f"<header><h1>Settlement report{_zh('日结报表')} — "
        f'{_e(m.get("business_date", ""))}</h1><dl class="meta">{items}</dl></header>'
    )


def _card(label: str, value: str, sub: str = "", unit: str = "", zh: str = "") -> str:
    label_html = _e(label) + (_zh(zh) if zh else "")
    unit_html = f'<span class="unit">{_e(unit)}</span>' if unit else ""
    sub_html = f'<div class="sub">{_e(sub)}</div>' if sub else ""
    return (
        f'<div class="card"><div class="label">{label_html}</div>'
        f'<div class="value">{_e(value)}{unit_html}</div>{sub_html}</div>'
    )


def _key_figures(m: Mapping[str, Any], rows: list[SummaryRow]) -> str:
    counts, totals = m.get("counts", {}), m.get("totals", {})
    taps = counts.get("taps", {})
    gross = {role: sum(r.gross_fen for r in rows if r.role == role) for role in _TAP_ROLES}
    cards = [
        _card("Taps OK", _n(taps.get("ok", 0)), f"of {_n(taps.get('taps', 0))} taps", zh="成功"),
        _card(
            "Taps rejected",
            _n(taps.get("rejected", 0)),
            f"{_n(taps.get('duplicates', 0))} duplicates · {_n(taps.get('late', 0))} late",
            zh="拒绝",
        ),
        *(
            _card(f"Gross to {label}", money(gross[role]), unit="CNY")
            for role, label in _TAP_ROLES.items()
        ),
        _card("Fees", money(totals.get("fee_fen", 0)), unit="CNY", zh="手续费"),
        _card(
            "Top-ups",
            money(totals.get("topups_fen", 0)),
            f"{_n(counts.get('top_ups', 0))} top-ups",
            "CNY",
            zh="充值",
        ),
        _card("Total paid", money(totals.get("paid_fen", 0)), unit="CNY", zh="付出"),
        _card("Total collected", money(totals.get("collected_fen", 0)), unit="CNY", zh="收取"),
    ]
    return _heading("Key figures", "关键数据") + f'<div class="cards">{"".join(cards)}</div>'


def _float_section(m: Mapping[str, Any]) -> str:
    """The issuer's net as SPEC §8's formula, one signed line per term, summing to it."""
    i = m.get("issuer", {})
    movement = (
        f'<p class="float">Card float: {money(i.get("float_opening_fen", 0))} → '
        f"{money(i.get('float_closing_fen', 0))} CNY "
        f"(change {money(i.get('float_change_fen', 0))})</p>"
    )
    terms = issuer_net_terms(i)
    losses = i.get("hot_list_loss_count", 0)
    lines = [
        (f"{label} ({_n(losses)} tap{'' if losses == 1 else 's'})" if key == "hot_list_loss_fen"
         else label, _signed(fen))
        for label, key, fen in terms
    ]  # fmt: skip
    net = i.get("net_fen", 0)
    check = _check(terms, net)
    table = _table(
        ("Issuer net, term by term", "CNY"),
        lines,
        {1},
        total=("= Issuer net (Σ of the lines above)", money(net)),
    )
    memo = _table(
        ("Memo: not in the sum", "CNY"), [(k, money(i.get(f, 0))) for k, f in _ISSUER_MEMO], {1}
    )
    formula = f'<p class="formula">{_e(ISSUER_NET_FORMULA)}</p>'
    gross = m.get("totals", {}).get("gross_fen", 0)
    cash = payments_net_terms(i, gross)
    paid = _table(
        ("The same net from the payments", "CNY"),
        [(label, _signed(fen)) for label, fen in cash],
        {1},
        total=("= Issuer net (collected − paid in payments.csv)", money(net)),
    )
    cash_formula = f'<p class="formula">{_e(PAYMENTS_NET_FORMULA)}</p>'
    return (
        _heading("Float movement and the issuer net", "沉淀资金与发卡方净额")
        + movement + formula + table + check + cash_formula + paid + _check(cash, net) + memo
    )  # fmt: skip


def _check(terms: Sequence[tuple[Any, ...]], net: int) -> str:
    added = sum(term[-1] for term in terms)
    if added == net:
        return '<p class="note ok">✓ The lines sum to the issuer net.</p>'
    return f'<p class="bad">✗ The lines sum to {money(added)}, not the net {money(net)}.</p>'


def _top_parties(rows: list[SummaryRow]) -> str:
    def top(role: str, title: str, zh: str) -> str:
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
        return f"<div><h3>{_e(title)}{_zh(zh)}</h3>{body}</div>"

    cols = top("MERCHANT", "Merchants", "商户") + top("OPERATOR", "Operators", "运营商")
    return (
        _heading(f"Top {SETTLEMENT_TOP_PARTIES} parties by gross", "交易额前列")
        + f'<div class="cols">{cols}</div>'
    )


def _taps_by_hour(m: Mapping[str, Any]) -> str:
    by_class = m.get("taps_by_hour") or {}
    note = "" if by_class else '<p class="note">No OK taps this day.</p>'
    return _heading("OK taps by hour", "分时刷卡量") + note + svg_chart(by_class)


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
    """Rows that need action first (the list arrives sorted so), then routine ones."""
    title = _heading("Exceptions", "异常")
    if not exceptions:
        return title + '<p class="note">No exceptions.</p>'
    review = sum(1 for x in exceptions if action(x.kind, x.reason) == REVIEW)
    summary = (
        f"<p><strong>{_n(review)} row{'' if review == 1 else 's'} need action</strong> "
        f"(action REVIEW: hot-list losses, sequence gaps, taps a terminal got wrong); "
        f"{_n(len(exceptions) - review)} routine (declines, resubmissions, late but paid).</p>"
    )
    shown = [
        (action(x.kind, x.reason), x.kind, x.reason, x.party_id, x.terminal_id, _n(x.count),
         money(x.amount_fen), x.detail)
        for x in exceptions[:EXCEPTIONS_SHOWN_MAX]
    ]  # fmt: skip
    more = len(exceptions) - len(shown)
    note = ""
    if more:  # the page stays light; the CSV next to it is complete
        note = (
            f'<p class="note">Showing the first {_n(len(shown))} of {_n(len(exceptions))} rows; '
            f"{_n(more)} more are in exceptions.csv.</p>"
        )
    headers = ("Action", "Kind", "Reason", "Party", "Terminal", "Count", "Amount", "Detail")
    return title + summary + note + _table(headers, shown, {4, 5, 6})


def _files_note(manifest: dict) -> str:
    """Every party's row is in summary.csv: a page of 650 rows would only slow it down."""
    counts = manifest.get("counts", {})
    return (
        _heading("Files", "文件")
        + f'<p class="note">summary.csv: every party ({_n(counts.get("parties", 0))}) and the '
        + f"issuer; payments.csv: {_n(counts.get('payments', 0))} payment instructions; "
        + "exceptions.csv (rows needing action first); settlement.xlsx: the same three tables "
        + "for spreadsheets, bank accounts as text and yuan beside fen; "
        + "manifest.json: the SHA-256 of each file, recorded in the journal.</p>"
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

"""The settlement files as a finance clerk checks them (issue 13, points 6-10).

The issuer's breakdown adds up to its net, totals add like with like, what needs
action comes first, bank accounts survive a spreadsheet, and the report reads
without a CJK font. Checked on the hand-worked day of test_settlement_example.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import struct
import zipfile
from decimal import Decimal
from html.parser import HTMLParser
from xml.etree import ElementTree

from clearing.codes import TapStatus
from clearing.settlement import files
from clearing.settlement.cjk_font import CHARACTERS, TTF_BASE64
from clearing.settlement.cjk_font_build import heading_characters
from clearing.settlement.exception_rows import REVIEW, ROUTINE, ExceptionRow, action
from clearing.settlement.figures import SummaryRow, direction, issuer_direction
from clearing.settlement.publish import load_published, parse_summary
from clearing.v1 import settlement_pb2
from tests.test_settlement_example import (
    DAY_END_MS,
    play_the_day,
    read,
    read_bytes,
    run,
    set_clock,
)

NS = {"x": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}
ACCOUNT = "6222021234567890123"  # 19 digits: a spreadsheet's number would round it
ZERO_LED = "0012345678901234567"


async def settled_day(h):
    await play_the_day(h)
    await set_clock(h, DAY_END_MS + 1_000)
    return await run(h)


def fen(text: str) -> int:
    """The report's "−1,234.56" / "-1,234.56" back to integer fen."""
    sign = -1 if text[0] in "-−" else 1
    yuan, cents = text.lstrip("-−+").replace(",", "").split(".")
    return sign * (int(yuan) * 100 + int(cents))


class Tables(HTMLParser):
    """Every <table> as rows of cell texts; headings (h1-h3) as (english, chinese)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[str]]] = []
        self.headings: list[list[str]] = []
        self.cell: list[str] | None = None
        self.in_heading = False
        self.in_zh = False

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = []
        elif tag in ("h1", "h2", "h3"):
            self.in_heading = True
            self.headings.append(["", ""])
        elif tag == "span" and ("class", "zh") in attrs:
            self.in_zh = True

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1][-1].append("".join(self.cell))
            self.cell = None
        elif tag in ("h1", "h2", "h3"):
            self.in_heading = False
        elif tag == "span":
            self.in_zh = False

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)
        if self.in_heading:
            self.headings[-1][1 if self.in_zh else 0] += data


async def test_the_issuers_breakdown_is_signed_and_sums_to_its_net(harness):
    result = await settled_day(harness)
    manifest = json.loads(read(result.output_dir, "manifest.json"))
    terms = {t["field"]: t["fen"] for t in manifest["issuer_net_formula"]["terms"]}
    # The hand-worked day: float change 13,091 − hall top-ups 13,000 + balance refunds
    # 2,850 − hot-list loss 200 + fees 62 − commission 20 = 2,783.
    assert terms == {
        "float_change_fen": 13_091,
        "hall_topups_fen": -13_000,
        "balance_refunds_fen": 2_850,
        "hot_list_loss_fen": -200,
        "fee_income_fen": 62,
        "commission_expense_fen": -20,
    }
    assert sum(terms.values()) == manifest["issuer"]["net_fen"] == result.issuer.net_fen == 2_783
    page = read(result.output_dir, "report.html")
    assert manifest["issuer_net_formula"]["formula"] in page
    parser = Tables()
    parser.feed(page)
    (table,) = [t for t in parser.tables if t[0][0] == "Issuer net, term by term"]
    *lines, total = table[1:]
    shown = [amount for _, amount in lines]
    assert shown == ["+130.91", "-130.00", "+28.50", "-2.00", "+0.62", "-0.20"]
    assert [fen(amount) for amount in shown] == list(terms.values())
    assert sum(fen(amount) for amount in shown) == fen(total[1]) == 2_783
    assert page.count("✓ The lines sum to the issuer net.") == 2
    # The same net from the money moved: Σ COLLECT − Σ PAY of payments.csv.
    (cash,) = [t for t in parser.tables if t[0][0] == "The same net from the payments"]
    *lines, total = cash[1:]
    assert [amount for _, amount in lines] == ["+51.25", "-0.20", "-23.84", "+0.62"]
    payments = list(csv.DictReader(io.StringIO(read(result.output_dir, "payments.csv"))))
    collected = sum(int(p["amount_fen"]) for p in payments if p["direction"] == "COLLECT")
    paid = sum(int(p["amount_fen"]) for p in payments if p["direction"] == "PAY")
    assert sum(fen(amount) for _, amount in lines) == fen(total[1]) == collected - paid


async def test_summary_directions_and_totals_each_mean_one_thing(harness):
    result = await settled_day(harness)
    manifest = json.loads(read(result.output_dir, "manifest.json"))
    rows = list(csv.DictReader(io.StringIO(read(result.output_dir, "summary.csv"))))
    by_id = {(r["party_id"], r["role"]): r for r in rows}
    assert by_id["issuer", "ISSUER"]["direction"] == "RECEIVE"  # it nets 27.83 CNY in
    issuer = next(p for p in result.parties if p.party_id == "issuer")  # and so says gRPC
    assert issuer.direction == settlement_pb2.PartySettlement.RECEIVE
    assert {r["direction"] for r in rows if r["role"] in ("OPERATOR", "MERCHANT")} == {"PAY"}
    taps, top_ups, every = by_id["TOTAL", "TAPS"], by_id["TOTAL", "TOP_UPS"], by_id["TOTAL", "ALL"]
    totals = manifest["totals"]
    assert int(taps["gross_fen"]) == totals["gross_fen"] == 2_384  # fares, sales, bills
    assert int(taps["fee_fen"]) == totals["fee_fen"] == 62
    assert int(taps["count"]) == manifest["counts"]["taps"]["ok"] == 7
    assert int(top_ups["gross_fen"]) == totals["topups_fen"] == 18_125
    assert int(top_ups["fee_fen"]) == manifest["issuer"]["commission_expense_fen"] == 20
    assert int(every["net_fen"]) == 0
    assert every["count"] == every["gross_fen"] == every["fee_fen"] == ""  # nothing unlike added


def test_the_issuers_own_row_receives_or_funds():
    assert [issuer_direction(n) for n in (5, -5, 0)] == ["RECEIVE", "FUND", "NONE"]
    issuer = SummaryRow("issuer", "ISSUER", 0, 0, 0, 0, 0, -700, direction(-700), "")
    shop = SummaryRow("m-1", "MERCHANT", 1, 700, 0, 700, 0, 700, "PAY", ACCOUNT)
    data = files.summary_csv([issuer, shop])
    assert b'"issuer","ISSUER",0,0,0,0,0,-700,"FUND",""' in data
    # Read back (GetSettlement from the files), the row is as computed: the enum's COLLECT.
    assert parse_summary(data) == [issuer, shop]


async def test_what_needs_action_comes_first_and_is_counted(harness):
    result = await settled_day(harness)
    rows = list(csv.DictReader(io.StringIO(read(result.output_dir, "exceptions.csv"))))
    marks = [r["action"] for r in rows]
    assert marks == sorted(marks, key=lambda a: a != REVIEW)  # every REVIEW before any NONE
    review = {(r["kind"], r["reason"]) for r in rows if r["action"] == REVIEW}
    assert review == {
        ("HOT_LIST_LOSS", "CARD_NOT_ACTIVE"),
        ("SEQUENCE_GAP", "MISSING_TERMINAL_SEQ"),
        ("REJECTED_TAP", "ID_CONFLICT"),
    }
    manifest = json.loads(read(result.output_dir, "manifest.json"))
    assert manifest["counts"]["exceptions_to_review"] == 3
    assert "3 rows need action" in read(result.output_dir, "report.html")


def test_routine_declines_are_not_flagged_and_terminal_faults_are():
    routine = {TapStatus.INSUFFICIENT_FUNDS, TapStatus.CARD_BLOCKED}
    for status in TapStatus:
        if status != TapStatus.OK:
            want = ROUTINE if status in routine else REVIEW
            assert action("REJECTED_TAP", status.name) == want, status
    for kind in ("DUPLICATE_TAP", "LATE_TAP", "REFUSED_CARD_OP"):
        assert action(kind, "anything") == ROUTINE


def _sheet(book: bytes, number: int) -> list[dict[str, tuple[str | None, str, str | None]]]:
    """A worksheet's rows as {column: (type, text, style)}, read as a spreadsheet would."""
    with zipfile.ZipFile(io.BytesIO(book)) as z:
        root = ElementTree.fromstring(z.read(f"xl/worksheets/sheet{number}.xml"))
    rows = []
    for row in root.iterfind(".//x:sheetData/x:row", NS):
        cells = {}
        for c in row.iterfind("x:c", NS):
            column = re.sub(r"\d", "", c.get("r", ""))
            text = c.findtext("x:is/x:t", namespaces=NS) or c.findtext("x:v", namespaces=NS)
            cells[column] = (c.get("t"), text or "", c.get("s"))
        rows.append(cells)
    return rows


def test_bank_accounts_stay_text_and_yuan_sits_beside_fen():
    rows = [
        SummaryRow("agent-1", "AGENT", 2, 0, 0, 5_125, 20, -5_105, "COLLECT", ZERO_LED),
        SummaryRow("issuer", "ISSUER", 0, 0, 0, 0, 0, 5_105 - 842, "PAY", ""),
        SummaryRow("op-1", "OPERATOR", 5, 1_050, 200, 850, 8, 842, "PAY", ACCOUNT),
    ]
    instructions = files.payments("2030-03-17", rows)
    # CSV for machines: the account quoted, digits exact; yuan exact beside fen.
    payments = files.payments_csv(instructions)
    assert f',842,8.42,"{ACCOUNT}"\n'.encode() in payments
    assert f',5105,51.05,"{ZERO_LED}"\n'.encode() in payments
    read_back = list(csv.DictReader(io.StringIO(payments.decode())))
    assert [r["bank_account"] for r in read_back] == [ZERO_LED, ACCOUNT]
    assert [Decimal(r["amount_yuan"]) * 100 for r in read_back] == [5_105, 842]
    # The workbook for people: accounts are text cells, yuan numbers shown as 0.00.
    exceptions = [ExceptionRow("HOT_LIST_LOSS", "CARD_NOT_ACTIVE", "op-1", 101, 1, 200, "a<b")]
    book = files.workbook_xlsx(rows, instructions, exceptions)
    assert book == files.workbook_xlsx(rows, instructions, exceptions)  # journaled: same bytes
    summary = _sheet(book, 1)
    header = [text for _, text, _ in summary[0].values()]
    assert header[:5] == ["party_id", "role", "count", "list_fen", "list_yuan"]
    assert header[-3:] == ["net_yuan", "direction", "bank_account"]
    accounts = {row["A"][1]: row.get("O") for row in summary[1:]}
    assert accounts["op-1"] == ("inlineStr", ACCOUNT, None)
    assert accounts["agent-1"] == ("inlineStr", ZERO_LED, None)
    net_fen, net_yuan = summary[3]["L"], summary[3]["M"]
    assert (net_fen, net_yuan) == ((None, "842", None), (None, "8.42", "1"))
    pay = _sheet(book, 2)
    assert pay[2]["H"] == ("inlineStr", ACCOUNT, None)
    assert _sheet(book, 3)[1]["A"] == ("inlineStr", "REVIEW", None)


def test_csv_text_is_quoted_and_numbers_bare():
    data = files.summary_csv([SummaryRow("1e5", "MERCHANT", 1, 9, 0, 9, 0, 9, "PAY", ACCOUNT)])
    line = data.decode().splitlines()[1]
    assert line == f'"1e5","MERCHANT",1,9,0,9,0,9,"PAY","{ACCOUNT}"'


async def test_the_report_reads_in_english_without_a_cjk_font(harness):
    result = await settled_day(harness)
    page = read(result.output_dir, "report.html")
    parser = Tables()
    parser.feed(page)
    assert len(parser.headings) >= 10
    for english, chinese in parser.headings:
        # Every heading says what it is in English; the Chinese is an optional extra.
        assert re.search(r"[A-Za-z]{4,}", english), (english, chinese)
        assert not re.search(r"[\u3400-\u9fff]", english), english
    # Every CJK character sits in a lang-tagged span a missing font can only leave blank
    # boxes in, never in the English text around it.
    outside = re.sub(r'<span class="zh" lang="zh-Hans">[^<]*</span>', "", page)
    assert not re.search(r"[\u3400-\u9fff]", outside)
    zh_rule = re.search(r"\.zh\{[^}]*font-family:([^;}]*)", page)
    assert zh_rule is not None
    fonts = zh_rule.group(1)
    assert "Microsoft YaHei" in fonts and "PingFang SC" in fonts
    assert fonts.endswith('"Clearing CJK subset",sans-serif')
    # ... and the page carries the glyphs itself: every CJK character it prints is in
    # the embedded font, which was rebuilt for the headings report.py has now.
    assert '@font-face{font-family:"Clearing CJK subset";src:url(data:font/ttf;base64,' in page
    shown = set(re.findall(r"[\u3000-\u303f\u3400-\u9fff\uff00-\uffef]", page))
    covered = _covered(base64.b64decode("".join(TTF_BASE64)))
    assert shown <= covered, sorted(shown - covered)
    assert set(CHARACTERS) <= covered
    assert "".join(CHARACTERS) == heading_characters(), "run cjk_font_build.py"


async def test_the_workbook_holds_the_csvs_rows(harness):
    result = await settled_day(harness)
    book = read_bytes(result.output_dir, "settlement.xlsx")
    manifest = json.loads(read(result.output_dir, "manifest.json"))
    assert manifest["files"]["settlement.xlsx"] == files.sha256(book)
    for number, name in enumerate(("summary.csv", "payments.csv", "exceptions.csv"), 1):
        table = list(csv.reader(io.StringIO(read(result.output_dir, name))))
        sheet = _sheet(book, number)
        header = [text for _, text, _ in sheet[0].values()]
        assert len(sheet) == len(table)
        for csv_row, cells in zip(table[1:], sheet[1:], strict=True):
            by_name = dict.fromkeys(header, "")  # an empty field is no cell
            for column, (_, text, _) in cells.items():
                by_name[header[_index(column)]] = text
            assert [by_name[h] for h in table[0]] == csv_row


def _index(column: str) -> int:
    n = 0
    for letter in column:
        n = n * 26 + ord(letter) - ord("A") + 1
    return n - 1


def _covered(ttf: bytes) -> set[str]:
    """Characters a TrueType font maps to a real glyph (its cmap, format 4 subtable)."""
    (tables,) = struct.unpack_from(">H", ttf, 4)
    directory = {
        ttf[12 + 16 * i : 16 + 16 * i]: struct.unpack_from(">I", ttf, 20 + 16 * i)[0]
        for i in range(tables)
    }
    cmap = directory[b"cmap"]
    (count,) = struct.unpack_from(">H", ttf, cmap + 2)
    for k in range(count):
        platform, encoding, offset = struct.unpack_from(">HHI", ttf, cmap + 4 + 8 * k)
        base = cmap + offset
        if (platform, encoding) == (3, 1) and struct.unpack_from(">H", ttf, base)[0] == 4:
            break
    else:
        raise AssertionError("no Unicode BMP cmap")
    segments = struct.unpack_from(">H", ttf, base + 6)[0] // 2
    ends = struct.unpack_from(f">{segments}H", ttf, base + 14)
    starts = struct.unpack_from(f">{segments}H", ttf, base + 16 + 2 * segments)
    deltas = struct.unpack_from(f">{segments}h", ttf, base + 16 + 4 * segments)
    range_at = base + 16 + 6 * segments
    ranges = struct.unpack_from(f">{segments}H", ttf, range_at)
    out = set()
    for s, (start, end, delta, offset) in enumerate(zip(starts, ends, deltas, ranges, strict=True)):
        for code in range(start, min(end, 0xFFFE) + 1):
            if offset == 0:
                glyph = (code + delta) & 0xFFFF
            else:
                at = range_at + 2 * s + offset + 2 * (code - start)
                glyph = struct.unpack_from(">H", ttf, at)[0]
                glyph = (glyph + delta) & 0xFFFF if glyph else 0
            if glyph:
                out.add(chr(code))
    return out


OLD_SUMMARY = b"""\
party_id,role,count,list_fen,discount_fen,gross_fen,fee_fen,net_fen,direction,bank_account
agent-01,AGENT,2,0,0,5125,20,-5105,COLLECT,
issuer,ISSUER,0,0,0,0,0,2783,PAY,
op-bus-1,OPERATOR,5,1050,200,850,8,842,PAY,6222021234567890123
TOTAL,,7,1050,200,5975,28,-1480,,
"""


def test_a_day_settled_by_the_first_format_is_still_served(tmp_path):
    """Its directory has no settlement.xlsx and CSVs unquoted: it is read as recorded."""
    day = tmp_path / "2030-03-17"
    day.mkdir()
    (day / "summary.csv").write_bytes(OLD_SUMMARY)
    manifest = {
        "format": "clearing-settlement-1",
        "files": {"summary.csv": files.sha256(OLD_SUMMARY)},
    }
    data = files.manifest_json(manifest)
    (day / "manifest.json").write_bytes(data)
    loaded = load_published(str(tmp_path), "2030-03-17", files.sha256(data))
    assert loaded is not None
    got, rows = loaded
    assert got["format"] == "clearing-settlement-1"
    assert [(r.party_id, r.direction, r.bank_account) for r in rows] == [
        ("agent-01", "COLLECT", ""),
        ("issuer", "PAY", ""),
        ("op-bus-1", "PAY", ACCOUNT),
    ]
    (day / "summary.csv").write_bytes(OLD_SUMMARY + b"x")  # damaged: recomputed instead
    assert load_published(str(tmp_path), "2030-03-17", files.sha256(data)) is None

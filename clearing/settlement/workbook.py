"""settlement.xlsx: the day's three tables for people, in a spreadsheet's own format.

A CSV cannot be both a bank's import file and safe to open by double-click: a
spreadsheet reads a 19-digit account as a number and saves it back as
6.22202123456789E+18, and a workaround in the cell (``="…"``, a leading
apostrophe) breaks the machine reading it. So the CSVs stay plain for machines
and this workbook carries the same rows typed: identifiers and bank accounts as
text cells, fen as integers, yuan beside them as numbers shown with two decimals.

Written with the standard library's zipfile: the format needs five small XML
parts, and no spreadsheet package is in the pinned environment. The bytes depend
on the rows alone: entries stored in a fixed order, uncompressed (zlib's output
can change between versions) and dated 1980-01-01, because the manifest
journals this file's SHA-256 like the others.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from decimal import Decimal
from xml.sax.saxutils import escape

# A cell: text (str), an exact integer (int), or yuan (Decimal, shown as 0.00).
Cell = str | int | Decimal
Sheet = tuple[str, Sequence[str], Sequence[Sequence[Cell]]]  # name, header, rows

_DATE = (1980, 1, 1, 0, 0, 0)
_NS = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_PKG = "http://schemas.openxmlformats.org/package/2006/relationships"
_XML = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
# Cell styles (cellXfs): 0 general, 1 yuan "0.00" (built-in format 2), 2 bold header.
_YUAN_STYLE, _HEADER_STYLE = 1, 2
_STYLES = (
    f'{_XML}<styleSheet xmlns="{_NS}">'
    '<fonts count="2"><font><sz val="11"/><name val="Calibri"/></font>'
    '<font><b/><sz val="11"/><name val="Calibri"/></font></fonts>'
    '<fills count="2"><fill><patternFill patternType="none"/></fill>'
    '<fill><patternFill patternType="gray125"/></fill></fills>'
    '<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>'
    '<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>'
    '<cellXfs count="3"><xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/>'
    '<xf numFmtId="2" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
    '<xf numFmtId="0" fontId="1" fillId="0" borderId="0" xfId="0" applyFont="1"/></cellXfs>'
    '<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>'
    "</styleSheet>"
)


def _column(index: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA."""
    name = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        name = chr(ord("A") + rest) + name
    return name


def _cell(ref: str, value: Cell, style: int = 0) -> str:
    s = f' s="{style}"' if style else ""
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        text = escape(str(value))
        space = ' xml:space="preserve"' if text != text.strip() else ""  # else trimmed
        return f'<c r="{ref}" t="inlineStr"{s}><is><t{space}>{text}</t></is></c>'
    if isinstance(value, Decimal):
        return f'<c r="{ref}" s="{_YUAN_STYLE}"><v>{value}</v></c>'
    return f'<c r="{ref}"{s}><v>{value}</v></c>'


def _sheet_xml(header: Sequence[str], rows: Sequence[Sequence[Cell]]) -> str:
    lines = []
    for r, cells in enumerate([header, *rows], 1):
        style = _HEADER_STYLE if r == 1 else 0
        row = "".join(  # an empty field is no cell at all, as a spreadsheet saves it
            _cell(f"{_column(c)}{r}", v, style) for c, v in enumerate(cells) if v != ""
        )
        lines.append(f'<row r="{r}">{row}</row>')
    frozen = (  # the header stays in view while scrolling
        '<sheetViews><sheetView workbookViewId="0"><pane ySplit="1" topLeftCell="A2" '
        'activePane="bottomLeft" state="frozen"/></sheetView></sheetViews>'
    )
    data = "".join(lines)
    return f'{_XML}<worksheet xmlns="{_NS}">{frozen}<sheetData>{data}</sheetData></worksheet>'


def workbook(sheets: Sequence[Sheet]) -> bytes:
    n = range(1, len(sheets) + 1)
    parts = {
        "[Content_Types].xml": (
            f'{_XML}<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" '
            'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            '<Override PartName="/xl/workbook.xml" ContentType="application/'
            'vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
            '<Override PartName="/xl/styles.xml" ContentType="application/'
            'vnd.openxmlformats-officedocument.spreadsheetml.styles+xml"/>'
            + "".join(
                f'<Override PartName="/xl/worksheets/sheet{i}.xml" ContentType="application/'
                'vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
                for i in n
            )
            + "</Types>"
        ),
        "_rels/.rels": (
            f'{_XML}<Relationships xmlns="{_PKG}"><Relationship Id="rId1" '
            f'Type="{_REL}/officeDocument" Target="xl/workbook.xml"/></Relationships>'
        ),
        "xl/workbook.xml": (
            f'{_XML}<workbook xmlns="{_NS}" xmlns:r="{_REL}"><sheets>'
            + "".join(
                f'<sheet name="{escape(name)}" sheetId="{i}" r:id="rId{i}"/>'
                for i, (name, _, _) in zip(n, sheets, strict=True)
            )
            + "</sheets></workbook>"
        ),
        "xl/_rels/workbook.xml.rels": (
            f'{_XML}<Relationships xmlns="{_PKG}">'
            + "".join(
                f'<Relationship Id="rId{i}" Type="{_REL}/worksheet" '
                f'Target="worksheets/sheet{i}.xml"/>'
                for i in n
            )
            + f'<Relationship Id="rId{len(sheets) + 1}" Type="{_REL}/styles" '
            'Target="styles.xml"/></Relationships>'
        ),
        "xl/styles.xml": _STYLES,
        **{
            f"xl/worksheets/sheet{i}.xml": _sheet_xml(header, rows)
            for i, (_, header, rows) in zip(n, sheets, strict=True)
        },
    }
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, xml in parts.items():
            info = zipfile.ZipInfo(name, date_time=_DATE)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            z.writestr(info, xml.encode())
    return out.getvalue()

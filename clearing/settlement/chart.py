"""report.html's chart: OK taps by local hour, stacked by terminal class, as inline SVG.

Integer pixels and sorted classes only, so the page's bytes depend on the counts alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

HOURS = 24
# Fixed colours for the known classes so the chart looks the same every day;
# any other class takes the next fallback colour in sorted order.
CLASS_COLOURS = {"VALIDATOR": "#2563eb", "POS": "#ea580c", "BILLING": "#16a34a"}
FALLBACK_COLOURS = ("#9333ea", "#db2777", "#0d9488", "#64748b")


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _n(count: int) -> str:
    return f"{count:,}"


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


def svg_chart(by_class: Mapping[str, Sequence[int]]) -> str:
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

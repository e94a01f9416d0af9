"""The DKD-against-ASD chart as a small SVG (the browser has no Slicer plot view).

Each scored volume is a dot at (ASD, DKD); proposed volumes are orange, pseudo-labeled ones blue, the others grey
(labeled volumes have no DKD and no dot), so the user sees why a volume was chosen: far from what the pre-trained
encoder knows and from what is labeled (DKD), hard to segment (ASD: entropy inside the predicted anatomy), or both.
"""

from __future__ import annotations

import html
import math
from typing import Sequence

COLORS = {"proposed": "#ff9800", "labeled": "#4caf50", "pseudo-labeled": "#03a9f4"}
DEFAULT_COLOR = "#9e9e9e"
#: The chart's legend (the page shows it above the chart): every colour of :data:`COLORS` and the axes' meaning.
LEGEND = (
    "Dots: orange proposed, green labeled, blue pseudo-labeled, grey unlabeled. Right: harder to segment (ASD); "
    "up: newer to the model (DKD). A labeled volume has no DKD and no dot."
)


def _span(values: Sequence[float]) -> tuple:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    low, high = min(finite), max(finite)
    if high - low < 1e-12:
        return low - 0.5, high + 0.5
    pad = 0.08 * (high - low)
    return low - pad, high + pad


def scores_svg(rows: Sequence[dict], width: int = 320, height: int = 220) -> str:
    """SVG text of the chart of ``rows`` (dicts with ``volume``, ``dkd``, ``asd``, ``state``)."""
    left, right, top, bottom = 46, 10, 10, 34
    xs = [float(r["asd"]) for r in rows]
    ys = [float(r["dkd"]) for r in rows]
    (x0, x1), (y0, y1) = _span(xs), _span(ys)

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def py(y: float) -> float:
        return height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" style="background:#1e1e1e">'
    ]
    parts.append(
        f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
        'fill="none" stroke="#666"/>'
    )
    for value, anchor in ((x0, "start"), (x1, "end")):
        parts.append(
            f'<text x="{px(value):.1f}" y="{height - bottom + 13}" fill="#bbb" font-size="10" '
            f'text-anchor="{anchor}">{value:.2f}</text>'
        )
    for value in (y0, y1):
        parts.append(
            f'<text x="{left - 4}" y="{py(value) + 3:.1f}" fill="#bbb" font-size="10" '
            f'text-anchor="end">{value:.2f}</text>'
        )
    parts.append(
        f'<text x="{(left + width - right) / 2:.1f}" y="{height - 4}" fill="#ddd" font-size="11" '
        'text-anchor="middle">ASD (difficulty)</text>'
    )
    parts.append(
        f'<text x="12" y="{(top + height - bottom) / 2:.1f}" fill="#ddd" font-size="11" '
        f'text-anchor="middle" transform="rotate(-90 12 {(top + height - bottom) / 2:.1f})">DKD</text>'
    )
    for row, x, y in zip(rows, xs, ys):
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        color = COLORS.get(str(row.get("state", "")), DEFAULT_COLOR)
        title = html.escape(f"{row.get('volume', '')}: DKD {y:.3f}, ASD {x:.3f}, {row.get('state', '')}")
        parts.append(
            f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="5" fill="{color}" stroke="#000">'
            f"<title>{title}</title></circle>"
        )
    parts.append("</svg>")
    return "".join(parts)

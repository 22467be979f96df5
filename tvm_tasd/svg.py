"""Self-contained SVG charts (no scripts, no network at view time): the report's and the benchmarks'.

:func:`hbar_chart` draws grouped horizontal bars (a value per label and
series), :func:`scatter` marker series with an optional reference line and
a ringed point; both return one ``<svg>`` element as text.
"""

from __future__ import annotations

import html
import math

DENSE_COLOR, TASD_COLOR, REFERENCE_COLOR = "#9aa0a6", "#1a73e8", "#d93025"
SERIES_COLORS = (TASD_COLOR, REFERENCE_COLOR, "#188038", "#f9ab00", "#9334e6", "#12b5cb", "#e8710a")


def shorten(text: str, width: int) -> str:
    """Cut the middle out of a long name: both ends tell layers apart."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def nice_ticks(high: float, count: int = 5) -> list[float]:
    """0 and round steps up to at least ``high``."""
    if high <= 0:
        return [0.0, 1.0]
    raw = high / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    return [i * step for i in range(math.ceil(high / step - 1e-9) + 1)]


def hbar_chart(labels: list[str], series: list[tuple[str, str, list[float]]], notes: list[str],
                axis_label: str, x_max: float | None = None) -> str:
    """Horizontal bars, one group per label (one bar per series), a note after each group."""
    label_w, plot_w, note_w, bar_h, gap, top = 210, 560, 80, 11, 9, 26
    group_h = bar_h * len(series) + gap
    height = top + group_h * len(labels) + 34
    ticks = nice_ticks(x_max if x_max is not None else max((v for _, _, vs in series for v in vs), default=1.0))
    scale = plot_w / ticks[-1]
    parts = [f'<svg role="img" width="{label_w + plot_w + note_w}" height="{height}" '
             f'viewBox="0 0 {label_w + plot_w + note_w} {height}">']
    for i, (name, color, _) in enumerate(series):  # legend
        x = label_w + i * 230
        parts.append(f'<rect x="{x}" y="4" width="12" height="12" fill="{color}"/>'
                     f'<text x="{x + 17}" y="14">{html.escape(name)}</text>')
    bottom = top + group_h * len(labels)
    for tick in ticks:
        x = label_w + tick * scale
        parts.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{bottom}" stroke="#e0e0e0"/>'
                     f'<text x="{x:.1f}" y="{bottom + 14}" text-anchor="middle">{tick:.3g}</text>')
    parts.append(f'<text x="{label_w + plot_w / 2}" y="{bottom + 30}" text-anchor="middle">{html.escape(axis_label)}</text>')
    for g, label in enumerate(labels):
        y0 = top + g * group_h
        parts.append(f'<text x="{label_w - 6}" y="{y0 + bar_h * len(series) / 2 + 4:.1f}" text-anchor="end">'
                     f'<title>{html.escape(label)}</title>{html.escape(shorten(label, 30))}</text>')
        for s, (name, color, values) in enumerate(series):
            width = max(values[g] * scale, 0.5)
            parts.append(f'<rect x="{label_w}" y="{y0 + s * bar_h}" width="{width:.1f}" height="{bar_h - 1}" '
                         f'fill="{color}"><title>{html.escape(f"{label} {name}: {values[g]:.4g}")}</title></rect>')
        end = label_w + max(values[g] for _, _, values in series) * scale
        parts.append(f'<text x="{end + 5:.1f}" y="{y0 + bar_h * len(series) / 2 + 4:.1f}">{html.escape(notes[g])}</text>')
    parts.append(f'<line x1="{label_w}" y1="{top - 4}" x2="{label_w}" y2="{bottom}" stroke="#202124"/></svg>')
    return "\n".join(parts)


def scatter(series: dict[str, list[tuple[float, float]]], x_label: str, y_label: str, title: str,
            y_line: float | None = None, y_line_label: str | None = None,
            ringed: tuple[float, float] | None = None) -> str:
    """Self-contained SVG: one marker series per name (joined in x order), a legend when there are
    several, an optional dashed reference line at ``y_line`` and an optional ringed point."""
    width, height, left, right, bottom = 720, 420, 64, 20, 48
    top = 40 if title or len(series) > 1 else 16
    points = [p for values in series.values() for p in values]
    xs = [p[0] for p in points] + [1.0]
    ys = [p[1] for p in points] + ([y_line] if y_line is not None else [])
    x_ticks = nice_ticks(max(xs) * 1.05)
    y_lo, y_hi = min(ys), max(ys)
    pad = max((y_hi - y_lo) * 0.06, 1e-3)
    y_lo, y_hi = y_lo - pad, y_hi + pad
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x):
        return left + x / x_ticks[-1] * plot_w

    def py(y):
        return top + (y_hi - y) / (y_hi - y_lo) * plot_h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#202124"/>']
    if title:
        parts.append(f'<text x="{width / 2}" y="14" text-anchor="middle" font-size="13">{html.escape(title)}</text>')
    for tick in x_ticks:
        parts.append(f'<text x="{px(tick):.1f}" y="{top + plot_h + 15}" text-anchor="middle">{tick:.3g}</text>')
    for i in range(6):
        y = y_lo + (y_hi - y_lo) * i / 5
        parts.append(f'<line x1="{left}" y1="{py(y):.1f}" x2="{left + plot_w}" y2="{py(y):.1f}" stroke="#eeeeee"/>'
                     f'<text x="{left - 5}" y="{py(y) + 4:.1f}" text-anchor="end">{y:.3f}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">{html.escape(x_label)}</text>'
                 f'<text x="14" y="{top + plot_h / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {top + plot_h / 2})">{html.escape(y_label)}</text>')
    if y_line is not None:
        parts.append(f'<line x1="{left}" y1="{py(y_line):.1f}" x2="{left + plot_w}" y2="{py(y_line):.1f}" '
                     f'stroke="{REFERENCE_COLOR}" stroke-dasharray="5 4"/>')
        if y_line_label:
            parts.append(f'<text x="{left + plot_w - 4}" y="{py(y_line) - 5:.1f}" text-anchor="end" '
                         f'fill="{REFERENCE_COLOR}">{html.escape(y_line_label)}</text>')
    for i, (name, values) in enumerate(series.items()):
        color = SERIES_COLORS[i % len(SERIES_COLORS)]
        if len(series) > 1:
            x0 = left + i * plot_w / len(series)
            parts.append(f'<circle cx="{x0 + 6}" cy="{top - 14}" r="5" fill="{color}"/>'
                         f'<text x="{x0 + 14}" y="{top - 10}">{html.escape(name)}</text>')
        ordered = sorted(values)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-opacity="0.5" points="'
                     + " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in ordered) + '"/>')
        for x, y in ordered:
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="4" fill="{color}">'
                         f'<title>{html.escape(name)}: EDP {x:.3f}×, quality {y:.4f}</title></circle>')
    if ringed is not None:
        cx, cy = px(ringed[0]), py(ringed[1])
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="8" fill="none" stroke="{REFERENCE_COLOR}" stroke-width="2"/>'
                     f'<text x="{cx + 11:.1f}" y="{cy + 4:.1f}">chosen plan</text>')
    parts.append("</svg>")
    return "\n".join(parts)

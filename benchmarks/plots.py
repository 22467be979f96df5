"""Self-contained SVG plots for the benchmark results (no plotting library needed)."""

from __future__ import annotations

import html

from tvm_tasd.report import nice_ticks

COLORS = ("#1a73e8", "#d93025", "#188038", "#f9ab00", "#9334e6", "#12b5cb", "#e8710a")


def scatter(series: dict[str, list[tuple[float, float]]], x_label: str, y_label: str, title: str,
            y_line: float | None = None) -> str:
    """One marker series per method (lines join each series' points in x order), optional y reference line."""
    width, height, left, right, top, bottom, legend_h = 720, 420, 64, 20, 40, 48, 18
    points = [p for values in series.values() for p in values]
    xs, ys = [p[0] for p in points] + [1.0], [p[1] for p in points] + ([y_line] if y_line else [])
    x_ticks = nice_ticks(max(xs) * 1.05)
    y_lo, y_hi = min(ys), max(ys)
    pad = max((y_hi - y_lo) * 0.06, 1e-3)
    y_lo, y_hi = y_lo - pad, y_hi + pad
    plot_w, plot_h = width - left - right, height - top - bottom - legend_h

    def px(x):
        return left + x / x_ticks[-1] * plot_w

    def py(y):
        return top + legend_h + (y_hi - y) / (y_hi - y_lo) * plot_h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
             f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{html.escape(title)}</text>',
             f'<rect x="{left}" y="{top + legend_h}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#202124"/>']
    for tick in x_ticks:
        parts.append(f'<text x="{px(tick):.1f}" y="{top + legend_h + plot_h + 15}" text-anchor="middle">{tick:.3g}</text>')
    for i in range(6):
        y = y_lo + (y_hi - y_lo) * i / 5
        parts.append(f'<line x1="{left}" y1="{py(y):.1f}" x2="{left + plot_w}" y2="{py(y):.1f}" stroke="#eeeeee"/>'
                     f'<text x="{left - 5}" y="{py(y) + 4:.1f}" text-anchor="end">{y:.3f}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">{html.escape(x_label)}</text>'
                 f'<text x="14" y="{top + legend_h + plot_h / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {top + legend_h + plot_h / 2})">{html.escape(y_label)}</text>')
    if y_line is not None:
        parts.append(f'<line x1="{left}" y1="{py(y_line):.1f}" x2="{left + plot_w}" y2="{py(y_line):.1f}" '
                     f'stroke="#5f6368" stroke-dasharray="5 4"/>')
    for i, (name, values) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        x0 = left + i * (plot_w / max(1, len(series)))
        parts.append(f'<circle cx="{x0 + 6}" cy="{top + 4}" r="5" fill="{color}"/>'
                     f'<text x="{x0 + 14}" y="{top + 8}">{html.escape(name)}</text>')
        ordered = sorted(values)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-opacity="0.5" points="'
                     + " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in ordered) + '"/>')
        for x, y in ordered:
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="4" fill="{color}">'
                         f'<title>{html.escape(name)}: EDP {x:.3f}, quality {y:.4f}</title></circle>')
    parts.append("</svg>")
    return "\n".join(parts)

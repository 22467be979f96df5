"""Per-layer TASD reports: what each layer runs, why, and what it costs.

A report is built from the layers of a model (:func:`tvm_tasd.layers.find_layers`)
and the choices :class:`~tvm_tasd.transform.TASDRewrite` made for them — the
layer table of a built executable (``tvmc compile``) or of a plan applied to
its model (``tasd report plan.json``) — plus the analytical cost model
(:func:`tvm_tasd.candidates.layer_cost`). Per layer it records the shape,
the weight/activation series, the selection score, *why* (the pass's reason,
or TASDER's numbers when the series came from a search), the relative weight
error, and modelled cycles, energy and EDP next to the same layer run dense;
then model totals (EDP = Σ energy × Σ latency, as in :mod:`tvm_tasd.cost`).

:class:`Report` holds the JSON form (``report_version`` 1) and renders it
as a text table that fits 100 columns, as JSON, and as a self-contained HTML
page whose plots are inline SVG drawn here (no scripts, no network at view
time). Each layer keeps its geometry, so a saved report can be re-costed for
another target without the model.

The quality-vs-EDP plot reads the search's evaluated points from the plan,
``plan.info["search"]["points"]``: a list of ``{"edp_vs_dense": x,
"relative_quality": y}``; a plan without them gets a sentence saying so.
"""

from __future__ import annotations

import copy
import html
import math
import os
import textwrap
from dataclasses import dataclass
from importlib import metadata

import numpy as np

from .config import TASDConfig
from .cost import ModelCost
from .decompose import approximate, relative_error
from .hardware import HardwareTarget, load_target
from .plan import Plan

REPORT_VERSION = 1
WIDTH = 100  # terminal columns the text table fits
_DENSE_COLOR, _TASD_COLOR, _BUDGET_COLOR = "#9aa0a6", "#1a73e8", "#d93025"


def format_table(rows: list[list[str]], header: list[str], left: int = 1, width: int | None = None) -> list[str]:
    """Aligned columns: the first ``left`` columns flush left, the others right; with ``width``,
    the first column's cells are shortened (middle cut) until the table fits."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    excess = sum(widths) + 2 * (len(widths) - 1) - width if width else 0
    if excess > 0:
        widths[0] = max(len(header[0]), widths[0] - excess)
        rows = [[_shorten(str(r[0]), widths[0]), *r[1:]] for r in rows]

    def line(row):
        cells = (str(c).ljust(w) if i < left else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        return "  ".join(cells).rstrip()

    return [line(header), "  ".join("-" * w for w in widths), *map(line, rows)]


def _shorten(text: str, width: int) -> str:
    """Cut the middle out of a long name: both ends tell layers apart."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def _common_prefix(names: list[str]) -> str:
    """The dotted components every name shares (``encoder.layer.``), if any."""
    if len(names) < 2:
        return ""
    prefix = os.path.commonprefix(names)
    return prefix[: prefix.rfind(".") + 1]


def package_version() -> str:
    """The installed tvm_tasd version, recorded in reports and artifacts."""
    try:
        return metadata.version("tvm-tasd")
    except metadata.PackageNotFoundError:
        return "unknown"


# ------------------------------------------------------------------ building


def _geometry(layer) -> dict:
    """What the cost model needs to re-cost a layer without its weight."""
    return {
        "name": layer.name, "op": layer.op, "m": layer.m, "k": layer.k, "n": layer.n,
        "weight_shape": list(layer.weight.shape), "axis": layer.axis,
        "activation_shape": list(layer.activation_shape), "dtype": str(layer.dtype),
        "conv": dict(layer.conv), "ineligible": layer.ineligible,
    }


def _shape_only_layer(row: dict):
    # Imported here: it loads TVM (3 s), which `tasd targets` (format_table only) must not pay.
    from .layers import Layer

    # The cost model reads only the weight's shape: a zero-stride array stands in for it.
    weight = np.broadcast_to(np.float32(0), row["weight_shape"])
    return Layer(row["name"], row["op"], weight, row["axis"], row["m"], row["k"], row["n"],
                 tuple(row["activation_shape"]), row["dtype"], row["ineligible"], row["conv"])


def _cost_dict(cycles: float, cost) -> dict:
    return {"cycles": cycles, "latency_s": cost.latency_s, "energy_pj": cost.energy_pj, "edp_pj_s": cost.edp}


def plan_source(plan: Plan) -> str:
    """How a plan's series were chosen, in words (a budget means TASDER searched it)."""
    return "TASDER plan" if plan.budget is not None else "plan"


def _loss_shares(plan: Plan | None) -> dict[str, float]:
    """Each layer's share of TASDER's predicted quality loss Σ α·e² (needs its search statistics)."""
    if plan is None:
        return {}
    damage = {l.name: l.extra["sensitivity"] * l.extra["proxy_error"] ** 2
              for l in plan.layers if {"sensitivity", "proxy_error"} <= set(l.extra)}
    total = sum(damage.values())
    return {name: value / total for name, value in damage.items()} if total > 0 else {}


def _why(layer, config: TASDConfig, reason: str, entry, plan: Plan | None, shares: dict,
         shortest_m: int | None, mode: str) -> str:
    """A sentence a person can act on: the pass's reason, made specific where we know more."""
    if mode == "dense":
        return "dense build (no --pass tasd)"
    if layer.ineligible:
        return layer.ineligible
    if config.is_dense and shortest_m is not None and layer.grouped_length < shortest_m:
        unit = "input channel" if layer.op == "conv2d" else "reduction element"
        plural = "" if layer.grouped_length == 1 else "s"
        return (f"{layer.op} with {layer.grouped_length} {unit}{plural}: "
                f"shorter than any N:M group here (M ≥ {shortest_m}): dense")
    if entry is not None and str(entry.weight) == str(config) and "proxy_error" in entry.extra:
        budget = f"budget {plan.budget:g}" if plan.budget is not None else "its budget"
        if config.is_dense:
            return f"TASDER kept it dense under {budget}"
        share = f", {shares[layer.name]:.0%} of the predicted quality loss" if layer.name in shares else ""
        return f"TASDER ({budget}): output error {entry.extra['proxy_error']:.1%}{share}"
    return reason


@dataclass
class Report:
    """A per-layer report; ``data`` is its JSON form, everything else renders it."""

    data: dict

    @classmethod
    def from_layers(cls, hw, layers: list, summary: list[dict], plan: Plan | None = None, *,
                    model: str, mode: str = "tasd", source: str = "") -> Report:
        """Report ``layers`` (:class:`~tvm_tasd.layers.Layer`, with their weights) under the choices in ``summary``.

        ``summary``: TASDRewrite's layer table (``TASDExecutable.layers``: name,
        config, reason, executed/dense MACs). ``plan``: the plan the choices came
        from, if any (scores, TASDER statistics, search points). ``mode``:
        ``"tasd"`` or ``"dense"`` (a build without the pass). ``source``: how the
        series were chosen, in words.
        """
        from .candidates import useful_terms

        target = load_target(hw)
        chosen = {entry["name"]: entry for entry in summary}
        entries = plan.by_name() if plan is not None else {}
        shares = _loss_shares(plan)
        shortest_m = min((t.m for t in useful_terms(target)), default=None)
        rows = []
        for layer in layers:
            picked = chosen[layer.name]
            config = TASDConfig.parse(picked["config"])
            entry = entries.get(layer.name)
            follows_plan = entry is not None and str(entry.weight) == str(config)
            score = entry.selection_score if follows_plan else "magnitude"
            error = 0.0 if config.is_dense else relative_error(
                layer.weight, approximate(layer.weight, config, axis=layer.axis, score=score, name=layer.name))
            rows.append({
                **_geometry(layer),
                "weight": str(config),
                "activation": str(entry.activation) if follows_plan and entry.activation is not None else None,
                "score": entry.score if follows_plan and not config.is_dense else "magnitude",
                "density": config.density,
                "reason": picked["reason"],
                "why": _why(layer, config, picked["reason"], entry, plan, shares, shortest_m, mode),
                "weight_error": float(error),
                "macs": {"dense": picked["dense_macs"], "executed": picked["executed_macs"]},
            })
        data = {
            "report_version": REPORT_VERSION,
            "tvm_tasd": package_version(),
            "model": model,
            "mode": mode,
            "source": source,
            "chosen_for": target.name,
            "plan": None if plan is None else {
                "hardware": plan.hardware, "budget": plan.budget, "metric": plan.info.get("metric"),
                "quality": plan.info.get("quality"), "edp_vs_dense": plan.info.get("edp_vs_dense"),
            },
            "search_points": None if plan is None else plan.info.get("search", {}).get("points"),
            "layers": rows,
        }
        return cls(_costed(data, target))

    @classmethod
    def from_plan(cls, plan, imported, hw=None, *, model: str) -> Report:
        """Report ``plan`` applied to an imported model (:class:`~tvm_tasd.frontend.ImportedModel`):
        the choices are those :class:`~tvm_tasd.transform.TASDRewrite` makes, on ``hw``
        (default: the plan's hardware)."""
        from .layers import find_layers
        from .pipeline import plain
        from .transform import LAYERS_ATTR, TASDRewrite

        plan = Plan.coerce(plan)
        target = load_target(hw or plan.hardware or "cpu-emulated")
        rewritten = TASDRewrite(target, plan=plan)(imported.mod)
        summary = [{k: plain(v) for k, v in entry.items()} for entry in rewritten.attrs[LAYERS_ATTR]]
        return cls.from_layers(target, find_layers(imported.mod), summary, plan, model=model,
                               source=plan_source(plan))

    @classmethod
    def from_json(cls, data: dict, hw=None) -> Report:
        """A saved report; with ``hw`` other than its own, re-costed on that target (choices kept)."""
        if not isinstance(data, dict) or data.get("report_version") != REPORT_VERSION:
            raise ValueError(f"not a tvm_tasd report (report_version {REPORT_VERSION} expected)")
        if hw is None:
            return cls(data)
        target = load_target(hw)
        if target.name == data["hardware"]:
            return cls(data)
        return cls(_costed(copy.deepcopy(data), target))

    # -------------------------------------------------------------- summary

    @property
    def edp_ratio(self) -> float:
        """Model EDP of the chosen series ÷ the same model run dense, on the report's target."""
        return self.data["totals"]["ratio"]["edp"]

    def to_json(self) -> dict:
        return self.data

    def _title(self) -> str:
        d = self.data
        what = "dense build" if d["mode"] == "dense" else "TASD"
        return f"{d['model']} on {d['hardware']} — {what}" + (f": {d['source']}" if d["source"] else "")

    def _notes(self) -> list[str]:
        d = self.data
        notes = [f"Modelled, not measured (tvm_tasd.cost, {d['hardware_file']}); ratios are TASD ÷ "
                 "the same layer run dense."]
        if d["chosen_for"] != d["hardware"]:
            notes.append(f"Costs re-modelled on {d['hardware']}; the series were chosen for {d['chosen_for']}.")
        plan = d["plan"]
        if plan and plan.get("quality"):
            q = plan["quality"]
            notes.append(f"Search ({plan.get('metric')} on the calibration data): {q['original']:.4f} → "
                         f"{q['plan']:.4f}, {q['relative']:.1%} of the original (budget {plan['budget']:.1%}).")
        return notes

    # -------------------------------------------------------------- text

    def text(self) -> str:
        """The table for a terminal: one row per layer, its reason below it, ≤ 100 columns."""
        d = self.data
        header = ["layer", "op", "m×k×n", "weight", "act", "w.err", "cycles", "energy", "EDP"]
        prefix = _common_prefix([row["name"] for row in d["layers"]])
        rows = []
        for row in d["layers"]:
            ratio = row["ratio"]
            rows.append([
                row["name"][len(prefix):], row["op"], f"{row['m']}×{row['k']}×{row['n']}",
                row["weight"], row["activation"] or "—", f"{row['weight_error']:.1%}",
                f"{ratio['cycles']:.2f}×", f"{ratio['energy']:.2f}×", f"{ratio['edp']:.2f}×",
            ])
        total = d["totals"]["ratio"]
        rows.append([f"model ({len(d['layers'])} layers)", "", "", "", "", "",
                     f"{total['cycles']:.2f}×", f"{total['energy']:.2f}×", f"{total['edp']:.2f}×"])
        lines = format_table(rows, header, left=5, width=WIDTH)
        out = textwrap.wrap(self._title(), WIDTH)
        for note in self._notes() + ([f"Layer names below omit their common prefix {prefix!r}."] if prefix else []):
            out += textwrap.wrap(note, WIDTH)
        out += ["", *lines[:2]]
        for line, row in zip(lines[2:], d["layers"]):
            out.append(line)
            out += textwrap.wrap(row["why"], WIDTH, initial_indent="    why: ", subsequent_indent="         ")
        out += lines[-1:]
        dense, tasd = d["totals"]["dense"], d["totals"]["tasd"]
        out.append(f"dense {dense['cycles']:.3g} cycles, {dense['energy_pj']:.3g} pJ, EDP {dense['edp_pj_s']:.3g} pJ·s"
                   f" → TASD {tasd['cycles']:.3g} cycles, {tasd['energy_pj']:.3g} pJ, EDP {tasd['edp_pj_s']:.3g} pJ·s")
        return "\n".join(out)

    # -------------------------------------------------------------- HTML

    def html(self) -> str:
        """One self-contained page: summary, three inline-SVG plots, the full table."""
        d = self.data
        esc = html.escape
        layers = d["layers"]
        names = [row["name"] for row in layers]
        edp_chart = _hbar_chart(
            names,
            [("dense", _DENSE_COLOR, [r["dense"]["edp_pj_s"] for r in layers]),
             ("TASD", _TASD_COLOR, [r["tasd"]["edp_pj_s"] for r in layers])],
            [f"{r['ratio']['edp']:.2f}×" for r in layers], "modelled EDP (pJ·s)")
        density_chart = _hbar_chart(
            names, [("MAC density of the weight series", _TASD_COLOR, [r["density"] for r in layers])],
            [r["weight"] for r in layers], "Σ N/M of the chosen series (1 = dense)", x_max=1.0)
        plan = d["plan"]
        if d["search_points"]:
            curve = _quality_chart(d["search_points"], plan)
        elif plan is None:
            curve = "<p class='note'>No search: the series were not chosen by TASDER, so there is no quality-vs-EDP curve.</p>"
        else:
            curve = ("<p class='note'>This plan holds no search points (<code>search.points</code>), so the "
                     "quality-vs-EDP curve cannot be drawn; the chosen plan keeps "
                     f"{plan['quality']['relative']:.1%} of the original quality at "
                     f"{plan['edp_vs_dense']:.2f}× the dense EDP.</p>")
        header = ["layer", "op", "m×k×n", "weight", "act", "score", "weight error", "dense EDP (pJ·s)",
                  "TASD EDP (pJ·s)", "cycles", "energy", "EDP", "executed MACs", "why"]
        body = []
        for r in layers:
            cells = [r["name"], r["op"], f"{r['m']}×{r['k']}×{r['n']}", r["weight"], r["activation"] or "—",
                     r["score"], f"{r['weight_error']:.2%}", f"{r['dense']['edp_pj_s']:.3g}",
                     f"{r['tasd']['edp_pj_s']:.3g}", f"{r['ratio']['cycles']:.2f}×", f"{r['ratio']['energy']:.2f}×",
                     f"{r['ratio']['edp']:.2f}×", f"{r['macs']['executed'] / r['macs']['dense']:.0%}", r["why"]]
            body.append("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in cells) + "</tr>")
        t = d["totals"]
        total_cells = ["model", "", "", "", "", "", "", f"{t['dense']['edp_pj_s']:.3g}", f"{t['tasd']['edp_pj_s']:.3g}",
                       f"{t['ratio']['cycles']:.2f}×", f"{t['ratio']['energy']:.2f}×", f"{t['ratio']['edp']:.2f}×", "", ""]
        body.append("<tr class='total'>" + "".join(f"<td>{esc(c)}</td>" for c in total_cells) + "</tr>")
        notes = "".join(f"<p class='note'>{esc(n)}</p>" for n in self._notes())
        return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>TASD report — {esc(d['model'])} on {esc(d['hardware'])}</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1180px; color: #202124; padding: 0 16px; }}
h1 {{ font-size: 20px; }} h2 {{ font-size: 16px; margin-top: 28px; }}
.headline {{ font-size: 16px; }} .note {{ color: #5f6368; }}
table {{ border-collapse: collapse; font-size: 12.5px; }}
th, td {{ border-bottom: 1px solid #e0e0e0; padding: 3px 7px; text-align: right; vertical-align: top; }}
th:nth-child(-n+6), td:nth-child(-n+6), th:last-child, td:last-child {{ text-align: left; }}
tr.total td {{ font-weight: 600; border-top: 2px solid #202124; }}
svg text {{ font: 11px system-ui, sans-serif; fill: #202124; }}
</style></head>
<body>
<h1>TASD report: {esc(self._title())}</h1>
<p class="headline">Model EDP <b>{t['ratio']['edp']:.2f}×</b> the dense model (cycles {t['ratio']['cycles']:.2f}×,
energy {t['ratio']['energy']:.2f}×) over {len(layers)} layers, {sum(not TASDConfig.parse(r['weight']).is_dense for r in layers)} of them rewritten.</p>
{notes}
<h2>EDP per layer, dense vs TASD</h2>
{edp_chart}
<h2>Density chosen per layer</h2>
{density_chart}
<h2>Quality vs EDP (search)</h2>
{curve}
<h2>Layers</h2>
<table><thead><tr>{''.join(f'<th>{esc(h)}</th>' for h in header)}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table>
<p class="note">tvm_tasd {esc(d['tvm_tasd'])}; weight error = relative Frobenius error of the approximated weight.</p>
</body></html>
"""


def _costed(data: dict, target: HardwareTarget) -> dict:
    """Fill every row's dense and TASD costs, their ratios and the model totals, on ``target``."""
    from .candidates import layer_cost

    dense_costs, tasd_costs = [], []
    for row in data["layers"]:
        layer = _shape_only_layer(row)
        dense = layer_cost(target, layer, "dense")
        tasd = layer_cost(target, layer, row["weight"], activation=row["activation"])
        dense_costs.append(dense)
        tasd_costs.append(tasd)
        row["dense"], row["tasd"] = _cost_dict(dense.cycles, dense), _cost_dict(tasd.cycles, tasd)
        row["ratio"] = _ratios(row["dense"], row["tasd"])
    totals = {name: _cost_dict(sum(c.cycles for c in costs), ModelCost(tuple(costs)))
              for name, costs in (("dense", dense_costs), ("tasd", tasd_costs))}
    totals["ratio"] = _ratios(totals["dense"], totals["tasd"])
    data.update(hardware=target.name, hardware_file=target.source_file.rsplit("/", 1)[-1], totals=totals)
    return data


def _ratios(dense: dict, tasd: dict) -> dict:
    return {key: tasd[field] / dense[field] if dense[field] else 1.0
            for key, field in (("cycles", "cycles"), ("energy", "energy_pj"), ("edp", "edp_pj_s"))}


# ------------------------------------------------------------------ SVG plots


def nice_ticks(high: float, count: int = 5) -> list[float]:
    """0 and round steps up to at least ``high``."""
    if high <= 0:
        return [0.0, 1.0]
    raw = high / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    return [i * step for i in range(math.ceil(high / step - 1e-9) + 1)]


def _hbar_chart(labels: list[str], series: list[tuple[str, str, list[float]]], notes: list[str],
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
                     f'<title>{html.escape(label)}</title>{html.escape(_shorten(label, 30))}</text>')
        for s, (name, color, values) in enumerate(series):
            width = max(values[g] * scale, 0.5)
            parts.append(f'<rect x="{label_w}" y="{y0 + s * bar_h}" width="{width:.1f}" height="{bar_h - 1}" '
                         f'fill="{color}"><title>{html.escape(f"{label} {name}: {values[g]:.4g}")}</title></rect>')
        end = label_w + max(values[g] for _, _, values in series) * scale
        parts.append(f'<text x="{end + 5:.1f}" y="{y0 + bar_h * len(series) / 2 + 4:.1f}">{html.escape(notes[g])}</text>')
    parts.append(f'<line x1="{label_w}" y1="{top - 4}" x2="{label_w}" y2="{bottom}" stroke="#202124"/></svg>')
    return "\n".join(parts)


def _quality_chart(points: list[dict], plan: dict) -> str:
    """The search's evaluated plans: relative quality vs EDP ratio, budget line, chosen plan ringed."""
    chosen = None
    if plan.get("edp_vs_dense") is not None and plan.get("quality"):
        chosen = (plan["edp_vs_dense"], plan["quality"]["relative"])
    series = {"evaluated plans": [(p["edp_vs_dense"], p["relative_quality"]) for p in points] + [(1.0, 1.0)]}
    budget = plan.get("budget")
    return scatter(series, "modelled EDP ÷ dense", "quality ÷ original", "",
                   y_line=budget, y_line_label=None if budget is None else f"budget {budget:g}", ringed=chosen)


SERIES_COLORS = (_TASD_COLOR, _BUDGET_COLOR, "#188038", "#f9ab00", "#9334e6", "#12b5cb", "#e8710a")


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
                     f'stroke="{_BUDGET_COLOR}" stroke-dasharray="5 4"/>')
        if y_line_label:
            parts.append(f'<text x="{left + plot_w - 4}" y="{py(y_line) - 5:.1f}" text-anchor="end" '
                         f'fill="{_BUDGET_COLOR}">{html.escape(y_line_label)}</text>')
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
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="8" fill="none" stroke="{_BUDGET_COLOR}" stroke-width="2"/>'
                     f'<text x="{cx + 11:.1f}" y="{cy + 4:.1f}">chosen plan</text>')
    parts.append("</svg>")
    return "\n".join(parts)
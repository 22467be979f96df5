"""Per-layer TASD reports: what each layer runs, why, and what it costs.

A report is built from the layers of a model (:class:`~tvm_tasd.layer.Layer`)
and the :class:`~tvm_tasd.policy.Choice` made for each — by a build
(``TASDExecutable.choices``, what ``tvmc compile`` reports) or by the policy
applying a plan (``tasd report plan.json``, no kernels built) — plus the
analytical cost model (:func:`tvm_tasd.cost.layer_cost`). Per layer it
records the shape, the weight/activation series, the method, *why*
(the policy's reason, or TASDER's numbers when a search chose the series),
the relative weight error, and modelled cycles, energy, EDP and executed
MACs next to the same layer run dense; then model totals (EDP = Σ energy ×
Σ latency, as in :mod:`tvm_tasd.cost`).

:class:`Report` holds the JSON form (``report_version`` 2; 1 named the method ``score``) and renders it
as a text table that fits 100 columns, as JSON, and as a self-contained HTML
page whose plots are inline SVG (:mod:`tvm_tasd.svg`). Each layer keeps its
geometry, so a saved report can be re-costed for another target without
the model.

The quality-vs-EDP plot reads the search's evaluated points from the plan,
``plan.info["search"]["points"]``: a list of ``{"edp_vs_dense": x,
"relative_quality": y}``; a plan without them gets a sentence saying so.
"""

from __future__ import annotations

import copy
import html
import os
import textwrap
from dataclasses import dataclass

import numpy as np

from . import __version__
from .candidates import useful_terms
from .config import TASDConfig
from .cost import ModelCost, layer_cost
from .hardware import HardwareTarget, load_target
from .layer import Layer
from .plan import Plan
from .policy import Choice, Policy, weight_error
from .svg import DENSE_COLOR, TASD_COLOR, hbar_chart, scatter, shorten

REPORT_VERSION = 2
WIDTH = 100  # terminal columns the text table fits


def format_table(rows: list[list[str]], header: list[str], left: int = 1, width: int | None = None) -> list[str]:
    """Aligned columns: the first ``left`` columns flush left, the others right; with ``width``,
    the first column's cells are shortened (middle cut) until the table fits."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    excess = sum(widths) + 2 * (len(widths) - 1) - width if width else 0
    if excess > 0:
        widths[0] = max(len(header[0]), widths[0] - excess)
        rows = [[shorten(str(r[0]), widths[0]), *r[1:]] for r in rows]

    def line(row):
        cells = (str(c).ljust(w) if i < left else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        return "  ".join(cells).rstrip()

    return [line(header), "  ".join("-" * w for w in widths), *map(line, rows)]


def printable(text: str) -> str:
    """``text`` safe for a terminal: control characters (escape sequences in a layer name) shown as ``\\xNN``."""
    return "".join(c if c == "\n" or (c.isprintable() and c != "\x7f") else f"\\x{ord(c):02x}" for c in text)


def _common_prefix(names: list[str]) -> str:
    """The dotted components every name shares (``encoder.layer.``), if any."""
    if len(names) < 2:
        return ""
    prefix = os.path.commonprefix(names)
    return prefix[: prefix.rfind(".") + 1]


# ------------------------------------------------------------------ building


def _geometry(layer: Layer) -> dict:
    """What the cost model needs to re-cost a layer without its weight."""
    return {
        "name": layer.name, "op": layer.op, "m": layer.m, "k": layer.k, "n": layer.n,
        "weight_shape": list(layer.weight.shape), "axis": layer.axis,
        "activation_shape": list(layer.activation_shape), "dtype": str(layer.dtype),
        "conv": dict(layer.conv), "ineligible": layer.ineligible,
    }


def _layer_of(row: dict) -> Layer:
    """A saved row's layer; the cost model reads only the weight's shape, so a zero-stride array stands in."""
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
    damage = {layer.name: layer.stats.predicted_damage for layer in plan.layers if layer.stats is not None}
    total = sum(damage.values())
    return {name: value / total for name, value in damage.items()} if total > 0 else {}


def _why(layer: Layer, choice: Choice, plan: Plan | None, shares: dict, shortest_m: int | None, mode: str) -> str:
    """A sentence a person can act on: the policy's reason, made specific where we know more."""
    if mode == "dense":
        return "dense build (no --pass tasd)"
    if layer.ineligible:
        return layer.ineligible
    if choice.weight.is_dense and shortest_m is not None and layer.grouped_length < shortest_m:
        unit = "input channel" if layer.op == "conv2d" else "reduction element"
        plural = "" if layer.grouped_length == 1 else "s"
        return (f"{layer.op} with {layer.grouped_length} {unit}{plural}: "
                f"shorter than any N:M group here (M ≥ {shortest_m}): dense")
    if choice.stats is not None:
        budget = f"budget {plan.budget:g}" if plan is not None and plan.budget is not None else "its budget"
        if choice.weight.is_dense:
            return f"TASDER kept it dense under {budget}"
        share = f", {shares[layer.name]:.0%} of the predicted quality loss" if layer.name in shares else ""
        return f"TASDER ({budget}): output error {choice.stats.proxy_error:.1%}{share}"
    return choice.reason


@dataclass
class Report:
    """A per-layer report; ``data`` is its JSON form, everything else renders it."""

    data: dict

    @classmethod
    def from_choices(cls, target: HardwareTarget, layers: list[Layer], choices: dict[str, Choice],
                     plan: Plan | None = None, *, weight_errors: dict[str, float] | None = None, model: str,
                     mode: str = "tasd", source: str = "") -> Report:
        """Report ``layers`` (with their weights) under ``choices`` (layer name → :class:`Choice`).

        ``plan``: the plan the choices came from, if any (TASDER's budget and
        search points). ``weight_errors``: each layer's relative weight error
        when a build already measured it (else it is computed here). ``mode``:
        ``"tasd"`` or ``"dense"`` (a build without the pass). ``source``: how
        the series were chosen, in words.
        """
        shares = _loss_shares(plan)
        shortest_m = min((t.m for t in useful_terms(target)), default=None)
        rows = []
        for layer in layers:
            choice = choices[layer.name]
            error = weight_errors[layer.name] if weight_errors is not None else weight_error(layer, choice)
            rows.append({
                **_geometry(layer),
                "weight": str(choice.weight),
                "activation": None if choice.activation is None else str(choice.activation),
                "method": "magnitude" if choice.weight.is_dense else choice.method,
                "density": choice.weight.density,
                "reason": choice.reason,
                "why": _why(layer, choice, plan, shares, shortest_m, mode),
                "weight_error": float(error),
            })
        data = {
            "report_version": REPORT_VERSION,
            "tvm_tasd": __version__,
            "model": model,
            "mode": mode,
            "source": source,
            "chosen_for": target.name,
            "chosen_for_digest": target.digest,
            "plan": None if plan is None else {
                "hardware": plan.hardware, "budget": plan.budget, "metric": plan.info.get("metric"),
                "quality": plan.info.get("quality"), "edp_vs_dense": plan.info.get("edp_vs_dense"),
            },
            "search_points": None if plan is None else plan.info.get("search", {}).get("points"),
            "layers": rows,
        }
        return cls(_costed(data, target))

    @classmethod
    def from_plan(cls, plan, layers: list[Layer], hw=None, *, model: str) -> Report:
        """Report ``plan`` applied to a model's ``layers`` (:func:`tvm_tasd.matcher.find_layers`) as the
        pass would apply it on ``hw`` (default: the plan's hardware), without building anything."""
        plan = Plan.coerce(plan)
        target = plan.target(hw)
        choices = Policy(target, plan=plan).decide(layers)
        return cls.from_choices(target, layers, choices, plan, model=model, source=plan_source(plan))

    @classmethod
    def from_json(cls, data: dict, hw=None) -> Report:
        """A saved report; with ``hw`` other than its own, re-costed on that target (choices kept)."""
        if isinstance(data, dict) and data.get("report_version") == 1 and isinstance(data.get("layers"), list):
            data = {**data, "report_version": REPORT_VERSION,  # version 1 named the method "score"
                    "layers": [{**{k: v for k, v in row.items() if k != "score"}, "method": row.get("score")}
                               if isinstance(row, dict) else row for row in data["layers"]]}
        if not isinstance(data, dict) or data.get("report_version") != REPORT_VERSION:
            raise ValueError(f"not a tvm_tasd report (report_version {REPORT_VERSION} or 1 expected)")
        _check_saved(data)
        if hw is None:
            return cls(data)
        target = load_target(hw)
        if (target.name, target.digest) == (data["hardware"], data.get("hardware_digest")):
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
        elif d.get("chosen_for_digest") != d.get("hardware_digest"):
            notes.append(f"Costs re-modelled on a {d['hardware']} with other numbers ({d['hardware_file']}) than the "
                         "one the series were chosen for.")
        plan = d["plan"]
        if plan and plan.get("quality"):
            q = plan["quality"]
            notes.append(f"Search ({plan.get('metric')} on the calibration data): {q['original']:.4f} → "
                         f"{q['plan']:.4f}, {q['relative']:.1%} of the original (budget {plan['budget']:.1%}).")
            if held := q.get("held_out"):
                notes.append(f"On {held['batches']} held-out calibration batch(es) the search never saw: "
                             f"{held['original']:.4f} → {held['plan']:.4f}, {held['relative']:.1%} of the original.")
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
                row["weight"] + ("" if row["method"] == "magnitude" else f" ({_SHORT_METHOD.get(row['method'], row['method'])})"),
                row["activation"] or "—", f"{row['weight_error']:.1%}",
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
        return printable("\n".join(out))

    # -------------------------------------------------------------- HTML

    def html(self) -> str:
        """One self-contained page: summary, three inline-SVG plots, the full table."""
        d = self.data
        esc = html.escape
        layers = d["layers"]
        names = [row["name"] for row in layers]
        edp_chart = hbar_chart(
            names,
            [("dense", DENSE_COLOR, [r["dense"]["edp_pj_s"] for r in layers]),
             ("TASD", TASD_COLOR, [r["tasd"]["edp_pj_s"] for r in layers])],
            [f"{r['ratio']['edp']:.2f}×" for r in layers], "modelled EDP (pJ·s)")
        density_chart = hbar_chart(
            names, [("MAC density of the weight series", TASD_COLOR, [r["density"] for r in layers])],
            [r["weight"] for r in layers], "Σ N/M of the chosen series (1 = dense)", x_max=1.0)
        plan = d["plan"]
        if d["search_points"]:
            curve = _quality_chart(d["search_points"], plan)
        elif plan is None or not plan.get("quality") or plan.get("edp_vs_dense") is None:
            curve = "<p class='note'>No search: the series were not chosen by TASDER, so there is no quality-vs-EDP curve.</p>"
        else:
            curve = ("<p class='note'>This plan holds no search points (<code>search.points</code>), so the "
                     "quality-vs-EDP curve cannot be drawn; the chosen plan keeps "
                     f"{plan['quality']['relative']:.1%} of the original quality at "
                     f"{plan['edp_vs_dense']:.2f}× the dense EDP.</p>")
        header = ["layer", "op", "m×k×n", "weight", "act", "method", "weight error", "dense EDP (pJ·s)",
                  "TASD EDP (pJ·s)", "cycles", "energy", "EDP", "executed MACs", "why"]
        body = []
        for r in layers:
            cells = [r["name"], r["op"], f"{r['m']}×{r['k']}×{r['n']}", r["weight"], r["activation"] or "—",
                     r["method"], f"{r['weight_error']:.2%}", f"{r['dense']['edp_pj_s']:.3g}",
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


_SHORT_METHOD = {"activation": "act.", "obs": "OBS"}  # how a series not taken by magnitude is marked in text

_TOP_KEYS = {"model": str, "mode": str, "source": str, "chosen_for": str, "hardware": str, "hardware_file": str,
             "layers": list, "totals": dict}
_ROW_KEYS = {"name": str, "op": str, "m": int, "k": int, "n": int, "weight": str, "method": str, "why": str,
             "weight_shape": list, "axis": int, "activation_shape": list, "dtype": str, "conv": dict,
             "weight_error": (int, float), "density": (int, float), "dense": dict, "tasd": dict, "ratio": dict,
             "macs": dict}


def _check_saved(data: dict) -> None:
    """A saved report has what rendering and re-costing read, of the right kinds (else one clear error)."""
    _check_keys("report", data, _TOP_KEYS)
    for index, row in enumerate(data["layers"]):
        _check_keys(f"report layer {index}", row, _ROW_KEYS)


def _check_keys(where: str, value, keys: dict) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"{where} is not a JSON object: not a tvm_tasd report")
    for key, kind in keys.items():
        if not isinstance(value.get(key), kind) or isinstance(value.get(key), bool):
            raise ValueError(f"{where}: '{key}' is missing or not a {getattr(kind, '__name__', 'number')}: "
                             "not a tvm_tasd report as this version writes it")


def _costed(data: dict, target: HardwareTarget) -> dict:
    """Fill every row's dense and TASD costs, executed MACs, their ratios and the model totals, on ``target``."""
    dense_costs, tasd_costs = [], []
    for row in data["layers"]:
        layer = _layer_of(row)
        dense = layer_cost(target, layer, "dense")
        tasd = layer_cost(target, layer, row["weight"], activation=row["activation"])
        dense_costs.append(dense)
        tasd_costs.append(tasd)
        row["dense"], row["tasd"] = _cost_dict(dense.cycles, dense), _cost_dict(tasd.cycles, tasd)
        row["ratio"] = _ratios(row["dense"], row["tasd"])
        row["macs"] = {"dense": dense.dense_macs, "executed": tasd.executed_macs}
    totals = {name: _cost_dict(sum(c.cycles for c in costs), ModelCost(tuple(costs)))
              for name, costs in (("dense", dense_costs), ("tasd", tasd_costs))}
    totals["ratio"] = _ratios(totals["dense"], totals["tasd"])
    data.update(hardware=target.name, hardware_digest=target.digest, hardware_file=target.source_file.rsplit("/", 1)[-1],
                totals=totals)
    return data


def _ratios(dense: dict, tasd: dict) -> dict:
    return {key: tasd[field] / dense[field] if dense[field] else 1.0
            for key, field in (("cycles", "cycles"), ("energy", "energy_pj"), ("edp", "edp_pj_s"))}


def _quality_chart(points: list[dict], plan: dict) -> str:
    """The search's evaluated plans: relative quality vs EDP ratio, budget line, chosen plan ringed."""
    chosen = None
    if plan.get("edp_vs_dense") is not None and plan.get("quality"):
        chosen = (plan["edp_vs_dense"], plan["quality"]["relative"])
    series = {"evaluated plans": [(p["edp_vs_dense"], p["relative_quality"]) for p in points] + [(1.0, 1.0)]}
    budget = plan.get("budget")
    return scatter(series, "modelled EDP ÷ dense", "quality ÷ original", "",
                   y_line=budget, y_line_label=None if budget is None else f"budget {budget:g}", ringed=chosen)

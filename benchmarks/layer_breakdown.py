"""Per-layer breakdown of one plan: which layer got which series, and where the EDP goes.

For a committed TASDER plan (default: all-MiniLM-L6-v2 on ``vegeta-m8``),
every layer's modelled energy split into compute, each memory level,
metadata and TASD units, dense vs the plan, plus latency and its
bottleneck. All numbers are **modelled** (``tvm_tasd.cost``, the plan's
target file).

    python benchmarks/layer_breakdown.py [--plan benchmarks/results/plans/minilm_vegeta-m8.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tvm_tasd.benchmarks.common import RESULTS, stamp, stamp_markdown, write
from tvm_tasd.cost import model_cost
from tvm_tasd.frontend import from_onnx
from tvm_tasd.hardware import load_target
from tvm_tasd.matcher import find_layers
from tvm_tasd.plan import Plan

DEFAULT_PLAN = RESULTS / "plans" / "minilm_vegeta-m8.json"


def _minilm_layers():
    from tvm_tasd.benchmarks.models import minilm

    return find_layers(from_onnx(minilm.onnx_path(50, 40), {"input_ids": [50, 40], "attention_mask": [50, 40]}).mod)


def breakdown(plan: Plan, layers) -> list[dict]:
    target = load_target(plan.hardware)
    series = plan.series()
    rows = []
    for layer, dense, cost in zip(layers, model_cost(target, layers).layers, model_cost(target, layers, series).layers):
        rows.append({
            "layer": layer.name, "weight": str(cost.weight),
            "activation": None if cost.activation.is_dense else str(cost.activation),
            "m": layer.m, "k": layer.k, "n": layer.n,
            "energy_pj": cost.energy_breakdown_pj, "dense_energy_pj": dense.energy_breakdown_pj,
            "latency_s": cost.latency_s, "dense_latency_s": dense.latency_s,
            "bottleneck": cost.bottleneck, "dense_bottleneck": dense.bottleneck,
        })
    return rows


def to_markdown(meta: dict, rows: list[dict]) -> str:
    components = list(rows[0]["energy_pj"])
    lines = ["# Per-layer EDP breakdown (modelled)", "", *stamp_markdown(meta), "",
             f"Plan `{meta['plan']}` on `{meta['hardware']}` (modelled from `hardware_targets/{meta['hardware']}.toml`). "
             "Energy in µJ per component, the plan's value with the dense value in brackets; latency in µs.", "",
             "| layer | series | " + " | ".join(components) + " | latency (dense) | bottleneck |",
             "|---|---|" + "---:|" * len(components) + "---:|---|"]
    for r in rows:
        series = r["weight"] + (f" / act {r['activation']}" if r["activation"] else "")
        cells = [f"{r['energy_pj'][c] / 1e6:.2f} ({r['dense_energy_pj'][c] / 1e6:.2f})" for c in components]
        lines.append(f"| {r['layer']} | {series} | " + " | ".join(cells)
                     + f" | {r['latency_s'] * 1e6:.1f} ({r['dense_latency_s'] * 1e6:.1f}) | {r['bottleneck']} |")
    totals = {c: sum(r["energy_pj"][c] for r in rows) for c in components}
    dense_totals = {c: sum(r["dense_energy_pj"][c] for r in rows) for c in components}
    lines.append("| **total** | | " + " | ".join(f"{totals[c] / 1e6:.1f} ({dense_totals[c] / 1e6:.1f})" for c in components)
                 + f" | {sum(r['latency_s'] for r in rows) * 1e6:.0f} ({sum(r['dense_latency_s'] for r in rows) * 1e6:.0f}) | |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", type=Path, default=DEFAULT_PLAN)
    args = parser.parse_args(argv)
    plan = Plan.load(args.plan)
    rows = breakdown(plan, _minilm_layers())
    meta = stamp("per-layer EDP breakdown (modelled)", plan=args.plan.name, hardware=plan.hardware)
    write("layer_breakdown", {"meta": meta, "rows": rows}, to_markdown(meta, rows))


if __name__ == "__main__":
    main()

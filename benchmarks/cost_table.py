"""Modelled speed-up, energy and EDP of TASD configs on every bundled hardware target.

For a compute-bound GEMM (1024×4096×4096) and a memory-bound GEMV
(1×4096×4096), each config's weight series is costed with
``tvm_tasd.cost.gemm_cost`` and compared with the same target running the
layer dense.  Writes ``cost_table.md`` and ``cost_table.json`` (default:
``benchmarks/results/``).  Analytical model only: nothing is measured.

    python benchmarks/cost_table.py [--out DIR]
"""

from __future__ import annotations

from pathlib import Path

from tvm_tasd.benchmarks.common import run_table, stamp, stamp_markdown
from tvm_tasd.cost import gemm_cost
from tvm_tasd.hardware import list_targets, load_target

SHAPES = {"compute-bound GEMM": (1024, 4096, 4096), "memory-bound GEMV": (1, 4096, 4096)}
CONFIGS = ("2:4", "1:4", "1:8", "2:8+1:8")

def collect() -> dict:
    rows = []
    for shape_name, (m, k, n) in SHAPES.items():
        for target in list_targets():
            dense = gemm_cost(target, m, k, n)
            for config in CONFIGS:
                cost = gemm_cost(target, m, k, n, weight=config)
                rows.append({
                    "shape": shape_name, "m": m, "k": k, "n": n, "target": target, "config": config,
                    "runs_as": [str(t.execution) for t in cost.terms if t.operand == "weight"],
                    "speedup": cost.speedup_vs(dense), "energy_ratio": cost.energy_vs(dense),
                    "edp_ratio": cost.edp_vs(dense), "bottleneck": cost.bottleneck,
                    "dense_bottleneck": dense.bottleneck, "cost": cost.to_dict(), "dense": dense.to_dict(),
                })
    meta = stamp("modelled cost table (analytical model, nothing measured)",
                 target_files={t: load_target(t).source_file for t in list_targets()})
    return {"meta": meta, "rows": rows}


def to_markdown(data: dict) -> str:
    meta = data["meta"]
    lines = [
        "# Modelled cost table",
        "",
        "**Modelled, not measured**: the analytical model of `tvm_tasd.cost` (equations in",
        "`docs/cost_model.md`). Ratios are against the same target running the layer dense;",
        "speed-up > 1 and energy / EDP ratio < 1 are better. Only the weight is sparse.",
        "",
        *stamp_markdown(meta),
        "- target files: " + ", ".join(f"`hardware_targets/{Path(f).name}`" for f in meta["target_files"].values()),
    ]
    for shape_name, (m, k, n) in SHAPES.items():
        lines += ["", f"## {shape_name}: m×k×n = {m}×{k}×{n}", "",
                  "| target | config | runs as | speed-up | energy ratio | EDP ratio | bottleneck (dense) |",
                  "|---|---|---|---:|---:|---:|---|"]
        for row in (r for r in data["rows"] if r["shape"] == shape_name):
            lines.append(
                f"| {row['target']} | {row['config']} | {' + '.join(row['runs_as'])} | {row['speedup']:.2f}× "
                f"| {row['energy_ratio']:.3f} | {row['edp_ratio']:.3f} "
                f"| {row['bottleneck']} ({row['dense_bottleneck']}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    run_table("cost_table", __doc__, collect, to_markdown, argv)


if __name__ == "__main__":
    main()

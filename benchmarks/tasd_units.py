"""When do TASD units hide the run-time decomposition, and when does the activation route pay?

TASD units (``[tasd_units]`` of ``ttc-*.toml``, docs/cost_model.md "TASD units") extract one kept
value per cycle from a block of M activation values, so an N:M activation term costs N unit
cycles per block while the array spends ``n`` MACs per kept value per output column.  With
``count`` units the decomposition keeps pace with the array when

    count · values_per_cycle ≥ dense_macs_per_cycle · utilization / (n · KH · KW)

(a conv decomposes its input tensor once, the array reuses each value KH·KW times).  The first
table counts unit cycles against the layer's other cycles for 4–32 units on layers of the
paper's model classes; the second sets the activation route (``activation=`` the series, dense
weight) beside the weight route (the same series on the weight) on ``ttc-vegeta-m8``.  Both are
**modelled** (``tvm_tasd.cost``), for the cost of one configuration, not its quality: where the
activation has real zeros (after a ReLU) the activation route also loses less quality.

    python benchmarks/tasd_units.py [--out DIR]
"""

from __future__ import annotations

import dataclasses

from tvm_tasd.benchmarks.common import run_table, stamp, stamp_markdown
from tvm_tasd.cost import conv2d_cost, gemm_cost
from tvm_tasd.hardware import load_target

TARGET = "ttc-vegeta-m8"
UNIT_COUNTS = (4, 8, 16, 32)
CONFIGS = ("4:8", "2:8")
#: (name, kind, shape): GEMMs as (m, k, n); convs as (data NCHW, weight OIHW, padding)
LAYERS = [
    ("MiniLM q/k/v/o (8×40 tokens)", "gemm", (320, 384, 384)),
    ("MiniLM FFN up", "gemm", (320, 384, 1536)),
    ("MiniLM FFN down", "gemm", (320, 1536, 384)),
    ("BERT-base FFN up (128 tokens)", "gemm", (128, 768, 3072)),
    ("ResNet-50 conv2 3×3", "conv", ((1, 64, 56, 56), (64, 64, 3, 3), 1)),
    ("ResNet-50 conv2 1×1 expand", "conv", ((1, 64, 56, 56), (256, 64, 1, 1), 0)),
    ("ResNet-50 conv2 1×1 reduce", "conv", ((1, 256, 56, 56), (64, 256, 1, 1), 0)),
    ("ResNet-50 conv5 3×3", "conv", ((1, 512, 7, 7), (512, 512, 3, 3), 1)),
    ("narrow head (n = 16)", "gemm", (1024, 512, 16)),
    ("pointwise, 32 channels out", "conv", ((1, 96, 56, 56), (32, 96, 1, 1), 0)),
]


def _cost(hw, kind, shape, **series):
    if kind == "gemm":
        return gemm_cost(hw, *shape, **series)
    data, weight, padding = shape
    return conv2d_cost(hw, data, weight, padding=padding, **series)


def _with_units(hw, count):
    return dataclasses.replace(hw, tasd_units=dataclasses.replace(hw.tasd_units, count=count))


def collect() -> dict:
    hw = load_target(TARGET)
    rows = []
    for name, kind, shape in LAYERS:
        for config in CONFIGS:
            dense = _cost(hw, kind, shape)
            weight_route = _cost(hw, kind, shape, weight=config)
            units = []
            for count in UNIT_COUNTS:
                cost = _cost(_with_units(hw, count), kind, shape, activation=config)
                others = max(v for k, v in cost.cycles_by.items() if k != "tasd_units")
                units.append({"count": count, "unit_cycles": cost.cycles_by["tasd_units"],
                              "array_cycles": cost.cycles_by["compute"], "other_cycles": others,
                              "bottleneck": cost.bottleneck, "edp_vs_dense": cost.edp_vs(dense)})
            route = _cost(hw, kind, shape, activation=config)
            rows.append({
                "layer": name, "kind": kind, "shape": shape, "config": config,
                "m": dense.m, "k": dense.k, "n": dense.n, "units": units,
                "weight_route_edp": weight_route.edp_vs(dense), "activation_route_edp": route.edp_vs(dense),
                "weight_route_bottleneck": weight_route.bottleneck, "activation_route_bottleneck": route.bottleneck,
                "tasd_energy_share": route.energy_breakdown_pj["tasd_units"] / route.energy_pj,
            })
    meta = stamp("TASD units and the activation route (analytical model, nothing measured)",
                 target_file=hw.source_file, tasd_units=dataclasses.asdict(hw.tasd_units))
    return {"meta": meta, "rows": rows}


def to_markdown(data: dict) -> str:
    meta, rows = data["meta"], data["rows"]
    lines = ["# TASD units: when 16 hide the decomposition, and when the activation route pays", "",
             "**Modelled, not measured** (`tvm_tasd.cost`, `hardware_targets/ttc-vegeta-m8.toml`). A unit extracts one "
             "kept value per cycle from a block of 8 activation values (N cycles for an N:8 term), its comparator tree "
             "compares the block's values each cycle. The units keep pace with the array when "
             "`count ≥ 1024 · utilization / (n · KH · KW)`: 16 units cover layers with about 55 (2:8) to 64 (4:8) "
             "output columns per input value and more.", "", *stamp_markdown(meta), "",
             "## Unit cycles over the array's cycles", "",
             "≤ 1: the units keep pace with the array; ✗: they do not (the layer waits on them when nothing "
             "else is slower); **bold**: the units are this layer's bottleneck. The layers below are all DRAM-bound "
             "on this target, so the units never set the pace here even where they are slower than the array.", "",
             "| layer | m×k×n | activation | " + " | ".join(f"{u['count']} units" for u in rows[0]["units"]) + " |",
             "|---|---|---|" + "---:|" * len(rows[0]["units"])]
    for r in rows:
        cells = []
        for u in r["units"]:
            cell = f"{u['unit_cycles'] / u['array_cycles']:.2f}" + (" ✗" if u["unit_cycles"] > u["array_cycles"] else "")
            cells.append(f"**{cell}**" if u["bottleneck"] == "tasd_units" else cell)
        lines.append(f"| {r['layer']} | {r['m']}×{r['k']}×{r['n']} | {r['config']} | " + " | ".join(cells) + " |")
    lines += ["", "## Activation route vs weight route (EDP vs dense on the same target, 16 units)", "",
              "The weight route stores the series compressed from DRAM on; the activation route reads the dense "
              "activation from DRAM and the dense weight everywhere, and holds the compressed activation on chip. "
              "So the activation route wins on layers whose activation is the larger operand (m·k ≫ k·n: many "
              "positions, few output channels) and loses where the weight dominates the traffic.", "",
              "| layer | m×k×n | series | weight route | activation route | bottleneck (weight / activation) | unit energy share |",
              "|---|---|---|---:|---:|---|---:|"]
    for r in rows:
        best_w, best_a = r["weight_route_edp"], r["activation_route_edp"]
        mark = lambda v, other: f"**{v:.3f}**" if v < other else f"{v:.3f}"  # noqa: E731
        lines.append(f"| {r['layer']} | {r['m']}×{r['k']}×{r['n']} | {r['config']} | {mark(best_w, best_a)} | "
                     f"{mark(best_a, best_w)} | {r['weight_route_bottleneck']} / {r['activation_route_bottleneck']} | "
                     f"{r['tasd_energy_share']:.3%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    return run_table("tasd_units", __doc__, collect, to_markdown, argv)


if __name__ == "__main__":
    main()

"""What each cost-model assumption is worth: the committed TASDER plans under other DRAM energies and
with inter-layer residency.

For each committed plan on ``vegeta-m8`` (MiniLM, CREPE full: ``results/plans/``), the plan's
modelled EDP, energy and speed relative to the same model running dense on the same target
variant, for DRAM at 31.2 pJ/B (HBM2, the target file), 64 pJ/B (the LPDDR4 of Sparseloop's
STC-like design) and 162.5 pJ/B (Horowitz's DDR3-era DRAM, the cost model's figure before
issue 15), each without and with inter-layer residency (a layer's input and output that fit in
half the L2 stay there instead of going through DRAM: ``HardwareTarget.residency``).  The plan is
the one searched on the target file as it is; only its cost is re-evaluated.  **Modelled**
(``tvm_tasd.cost``), nothing measured.

    python benchmarks/cost_sensitivity.py [--out DIR]
"""

from __future__ import annotations

import dataclasses

from tvm_tasd.benchmarks.common import RESULTS, run_table, stamp, stamp_markdown
from tvm_tasd.config import TASDConfig
from tvm_tasd.cost import model_cost
from tvm_tasd.frontend import from_onnx
from tvm_tasd.hardware import load_target
from tvm_tasd.matcher import find_layers
from tvm_tasd.plan import Plan

TARGET = "vegeta-m8"
DRAM_PJ_PER_BYTE = {31.2: "HBM2 (target file)", 64.0: "LPDDR4 (Sparseloop STC)", 162.5: "DDR3-era (cost model v1)"}


def _onnx(model: str):
    """The model at the input shapes quality_vs_edp searched it on."""
    from tvm_tasd.benchmarks.models import crepe, minilm

    return {"minilm": lambda: minilm.onnx_path(50, 40), "crepe-full": lambda: crepe.onnx_path("full", 64)}[model]()


def _variant(hw, dram_pj: float, residency: bool):
    dram = dataclasses.replace(hw.memory[0], energy_pj_per_byte=dram_pj)
    return dataclasses.replace(hw, memory=(dram, *hw.memory[1:]), residency=residency)


def collect() -> dict:
    hw = load_target(TARGET)
    rows, plans = [], {}
    for model in ("minilm", "crepe-full"):
        path = RESULTS / "plans" / f"{model}_{TARGET}.json"
        if not path.exists():
            print(f"skipping {model}: no committed plan at {path} (benchmarks/quality_vs_edp.py writes it)")
            continue
        plan = Plan.load(path)
        layers = find_layers(from_onnx(_onnx(model)).mod)  # exported at the benchmark's fixed input shapes
        plans[model] = {"file": path.name, "edp_vs_dense_recorded": plan.info.get("edp_vs_dense")}
        for dram_pj in DRAM_PJ_PER_BYTE:
            for residency in (False, True):
                variant = _variant(hw, dram_pj, residency)
                dense, tasd = model_cost(variant, layers), model_cost(variant, layers, plan.series())
                dram_share = dense.energy_breakdown_pj[hw.memory[0].name] / dense.energy_pj
                layer_edp = sum(c.edp for c in tasd.layers) / sum(c.edp for c in dense.layers)
                rows.append({"model": model, "dram_pj_per_byte": dram_pj, "residency": residency,
                             "edp_vs_dense": tasd.edp_vs(dense), "layer_edp_sum_vs_dense": layer_edp,
                             "energy_vs_dense": tasd.energy_vs(dense),
                             "speedup": tasd.speedup_vs(dense), "dense_dram_energy_share": dram_share})
    meta = stamp("cost-model sensitivity of the committed plans (analytical model, nothing measured)",
                 target_file=hw.source_file, plans=plans)
    return {"meta": meta, "rows": rows}


def to_markdown(data: dict) -> str:
    meta = data["meta"]
    lines = ["# Cost-model sensitivity of the committed plans (modelled)", "",
             f"The committed TASDER plans on `{TARGET}`, re-costed on variants of "
             f"`hardware_targets/{TARGET}.toml`: DRAM energy, and inter-layer residency (a layer's input and output "
             "that fit in half the L2 stay on chip). Ratios are against the same model running dense on the same "
             "variant. EDP is the model's (Σ energy × Σ latency, docs/cost_model.md); the Σ EDP column sums the "
             "layers' own EDPs instead, for comparison. **Modelled, not measured.**", "", *stamp_markdown(meta), "",
             "| model | DRAM pJ/B | residency | EDP vs dense | Σ layer EDP vs dense | energy vs dense | speed-up "
             "| DRAM share of dense energy |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in data["rows"]:
        lines.append(f"| {r['model']} | {r['dram_pj_per_byte']:g} ({DRAM_PJ_PER_BYTE[r['dram_pj_per_byte']]}) | "
                     f"{'yes' if r['residency'] else 'no'} | {r['edp_vs_dense']:.3f} | {r['layer_edp_sum_vs_dense']:.3f} | "
                     f"{r['energy_vs_dense']:.3f} | "
                     f"{r['speedup']:.2f}× | {r['dense_dram_energy_share']:.1%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    return run_table("cost_sensitivity", __doc__, collect, to_markdown, argv)


if __name__ == "__main__":
    main()

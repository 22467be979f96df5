"""Paper-style EDP table: TASDER's improvement per model × sparsity variant × target.

Each cell runs TASDER (quality ≥ ``--budget`` of the *original* model — for
a sparse variant, the sparse model itself, as in the paper) and reports the
**modelled** EDP improvement over running the same model on the same target
without TASD: ``1 − EDP(plan) / EDP(dense)`` (what a structured-sparse
target does with an unstructured model: it runs it dense). Quality is
measured twice: on the calibration data the search used, and on unseen data.

Jobs run in local processes, or on a Ray cluster with ``--ray auto`` /
``--ray ADDRESS`` (``--ray local`` starts a local Ray instance). Finished
cells are kept in ``<out>/<name>.partial.jsonl`` until the table is written,
so the same command run again after a crash resumes (delete that file to
start over, e.g. after changing the code).

    python benchmarks/edp_table.py [--quick] [--models ...] [--variants 0 0.5 0.7 0.9]
        [--targets ...] [--budget 0.99] [--ray auto]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from tvm_tasd.benchmarks import sweep
from tvm_tasd.benchmarks.common import RESULTS, stamp, stamp_markdown, write
from tvm_tasd.benchmarks.quality_vs_edp import load_task
from tvm_tasd.evaluation.onnx import OnnxWeightFedModel, run_plan
from tvm_tasd.benchmarks.models.sparse import prune_onnx

TARGETS = ["stc-2of4", "vegeta-m4", "vegeta-m8", "highlight", "ttc-stc", "ttc-vegeta-m8"]
PAPER = {"best": 0.83, "average": 0.74}


def cell(job: dict) -> dict:
    """One table cell: search, then measure the plan on unseen data."""
    task = load_task(job["model"], job["quick"])
    model = task.model if not job["sparsity"] else prune_onnx(task.model, job["sparsity"])
    original = min(task.calibration_metric(OnnxWeightFedModel(model, task.calibration).run()),
                   task.validation_metric(OnnxWeightFedModel(model, task.validation).run()))
    if original <= 0:  # e.g. CREPE pruned to 90 %: nothing left to keep 99 % of
        return {**job, "skipped": f"the {job['sparsity']:.0%}-sparse original scores {original:.3g}"}
    plan = task.search(job["target"], job["budget"], model=model)
    original = task.test_metric(OnnxWeightFedModel(model, task.test).run())
    unseen = task.test_metric(run_plan(model, plan, task.test)) / original
    edp = plan.info["edp_vs_dense"]
    return {
        **job,
        "edp_vs_dense": edp,
        "improvement": 1.0 - edp,
        "calibration_quality": plan.info["quality"]["relative"],
        "unseen_quality": unseen,
        "layers": {l.name: {"weight": str(l.weight), "activation": None if l.activation is None else str(l.activation),
                            "method": l.method} for l in plan.layers},
        "search": plan.info["search"],
    }


def summary(rows: list[dict]) -> dict:
    improvements = [r["improvement"] for r in rows if "skipped" not in r]
    return {"best": max(improvements), "average": float(np.mean(improvements)), "cells": len(improvements)}


def _cell(row: dict | None) -> str:
    if row is None:
        return "—"
    if "skipped" in row:
        return "n/a¹"
    return f"{row['improvement']:.0%} ({row['unseen_quality']:.3f})"


def to_markdown(data: dict) -> str:
    rows, targets = data["rows"], data["meta"]["targets"]
    lines = ["# EDP improvement of TASDER plans (EDP modelled, quality measured)", "", *stamp_markdown(data["meta"]), "",
             f"Cell: modelled EDP improvement `1 − EDP(plan)/EDP(dense)` on that target "
             f"(`hardware_targets/<target>.toml`), with quality ≥ {data['meta']['budget']} of the original model on "
             "the calibration data; in brackets the relative quality on unseen data. Sparse variants are "
             "magnitude-pruned (unstructured) and are their own originals.", "",
             "| model | variant | " + " | ".join(targets) + " |", "|---|---|" + "---:|" * len(targets)]
    for model, sparsity in dict.fromkeys((r["model"], r["sparsity"]) for r in rows):
        cells = {r["target"]: r for r in rows if r["model"] == model and r["sparsity"] == sparsity}
        variant = "dense" if not sparsity else f"{sparsity:.0%} sparse"
        lines.append(f"| {model} | {variant} | " + " | ".join(_cell(cells.get(t)) for t in targets) + " |")
    s = data["summary"]
    skipped = sorted({r["skipped"] for r in rows if "skipped" in r})
    if skipped:
        lines += ["", "¹ not searched: " + "; ".join(skipped) + " (no quality to keep)."]
    lines += ["", f"Best improvement {s['best']:.0%}, average {s['average']:.0%} over {s['cells']} cells "
              f"(the paper reports up to {PAPER['best']:.0%} and {PAPER['average']:.0%} on average, on its own models "
              "and simulator)."]
    return "\n".join(lines) + "\n"


def check(data: dict) -> None:
    """What --quick verifies about its own output, so CI can trust it."""
    for row in (r for r in data["rows"] if "skipped" not in r):
        for key in ("edp_vs_dense", "improvement", "calibration_quality", "unseen_quality"):
            if not math.isfinite(row[key]):
                raise SystemExit(f"non-finite {key} in {row['model']}/{row['target']}")
        if abs(row["improvement"] - (1 - row["edp_vs_dense"])) > 1e-12:
            raise SystemExit("improvement is not computed against the dense run on the same target")
        if row["calibration_quality"] < row["budget"]:
            raise SystemExit(f"{row['model']}/{row['target']}: plan misses its budget on calibration data")
        if not 0 < row["edp_vs_dense"] <= 1 + 1e-9:
            raise SystemExit(f"{row['model']}/{row['target']}: EDP ratio {row['edp_vs_dense']} outside (0, 1]")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits models, dense + 50 %%, small data; checks itself")
    parser.add_argument("--models", nargs="+")
    parser.add_argument("--variants", nargs="+", type=float)
    parser.add_argument("--targets", nargs="+", default=TARGETS)
    parser.add_argument("--budget", type=float, default=0.99)
    parser.add_argument("--workers", type=int, help="local processes (default: half the cores)")
    parser.add_argument("--ray", metavar="ADDRESS", help="run on Ray: auto, local, or a cluster address")
    parser.add_argument("--name", default=None, help="results file name (default edp_table or edp_table_quick)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    models = args.models or (["digits-mlp", "digits-cnn"] if args.quick else
                             ["digits-mlp", "digits-cnn", "crepe-tiny", "minilm"])
    variants = args.variants or ([0.0, 0.5] if args.quick else [0.0, 0.5, 0.7, 0.9])
    jobs = [{"model": m, "sparsity": v, "target": t, "budget": args.budget, "quick": args.quick}
            for m in models for v in variants for t in args.targets]
    name = args.name or ("edp_table_quick" if args.quick else "edp_table")
    checkpoint = args.out / f"{name}.partial.jsonl"
    args.out.mkdir(parents=True, exist_ok=True)
    rows = sweep.run(cell, jobs, workers=args.workers, ray_address=args.ray, checkpoint=checkpoint)
    meta = stamp("EDP table (EDP modelled, quality measured)", targets=args.targets, budget=args.budget,
                 runner="ray" if args.ray else f"{sweep.local_workers(args.workers)} local processes")
    data = {"meta": meta, "rows": rows, "summary": summary(rows)}
    check(data)
    write(name, data, to_markdown(data), args.out)
    checkpoint.unlink()
    return data


if __name__ == "__main__":
    main()

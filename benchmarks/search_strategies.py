"""How many full evaluations TASDER's verification needs: surrogate vs bisection vs plain greedy.

All three verify the same greedy path (same candidates, same sensitivity
runs); they differ only in which path states they evaluate for real.
``walk`` is plain greedy — every step until the first failure — the
baseline the savings are quoted against. Same model, same data, one run.

    python benchmarks/search_strategies.py [--models digits-mlp digits-cnn crepe-tiny] [--targets vegeta-m8]
"""

from __future__ import annotations

import argparse
import time

from tvm_tasd import tasder
from tvm_tasd.benchmarks.common import stamp, stamp_markdown, write
from tvm_tasd.benchmarks.quality_vs_edp import load_task


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["digits-mlp", "digits-cnn", "crepe-tiny"])
    parser.add_argument("--targets", nargs="+", default=["vegeta-m8", "ttc-vegeta-m8"])
    parser.add_argument("--budget", type=float, default=0.99)
    args = parser.parse_args(argv)
    rows = []
    for model in args.models:
        task = load_task(model, quick=True)
        for target in args.targets:
            for strategy in tasder.STRATEGIES:
                start = time.perf_counter()
                plan = task.search(target, args.budget, strategy=strategy)
                search = plan.info["search"]
                rows.append({"model": model, "target": target, "strategy": strategy,
                             "full_evaluations": search["full_evaluations"], "path_length": sum(search["path_lengths"].values()),
                             "edp_vs_dense": plan.info["edp_vs_dense"], "relative_quality": plan.info["quality"]["relative"],
                             "seconds": time.perf_counter() - start})
                print(rows[-1])
    meta = stamp("TASDER verification strategies (evaluations measured, EDP modelled)", budget=args.budget)
    lines = ["# TASDER: full evaluations per verification strategy", "", *stamp_markdown(meta), "",
             f"Budget {args.budget}; full evaluations include the original model's run; path length = states on the uniform, greedy and refine paths together. "
             "EDP modelled (`tvm_tasd.cost`), quality measured on the calibration data.", "",
             "| model | target | strategy | full evaluations | path length | EDP vs dense | relative quality | seconds |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['target']} | {r['strategy']} | {r['full_evaluations']} | {r['path_length']} "
                     f"| {r['edp_vs_dense']:.3f} | {r['relative_quality']:.4f} | {r['seconds']:.1f} |")
    walk = sum(r["full_evaluations"] for r in rows if r["strategy"] == "walk")
    for strategy in ("bisect", "surrogate"):
        used = sum(r["full_evaluations"] for r in rows if r["strategy"] == strategy)
        lines.append(f"\n{strategy}: {used} full evaluations in all, plain greedy (walk) {walk}: "
                     f"{walk - used} saved ({(walk - used) / walk:.0%}).")
    write("search_strategies", {"meta": meta, "rows": rows}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""End-to-end latency and build time on this CPU: onnxruntime, the dense TVM build, TASD builds.

For MiniLM (batch 8 × 40 tokens) and CREPE tiny (64 frames): onnxruntime on
the original ONNX model (same thread count as TVM), the dense TVM build for
``cpu-emulated`` (every layer through the scheduled dense kernel, every
other op through ``schedules/llvm_default.py``), the TASD build at two
uniform configs, and at the committed TASDER plan for ``vegeta-m8``
(``benchmarks/results/plans/``, the quality the search accepted), all timed
side by side: blocks of consecutive runs per contender, interleaved over
rounds (median). Ratios are what to quote: the same machine, the same run.

    python benchmarks/end_to_end.py [--quick]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import tvm
from tvm import relax

from tvm_tasd import build
from tvm_tasd.benchmarks.common import stamp, stamp_markdown, write
from tvm_tasd.frontend import from_onnx

CONFIGS = {"minilm": ("4:8+2:8", "2:8+1:8"), "crepe-tiny": ("2:4+1:8", "2:8")}
PLANS = Path(__file__).resolve().parent / "results" / "plans"
#: Consecutive runs of one contender per round: onnxruntime's and TVM's worker threads spin for a while after a
#: run, so a run right after the other runtime's loses its cores to them; within a block only the first does.
BLOCK = 5


def _case(name: str):
    if name == "minilm":
        from tvm_tasd.benchmarks.models import minilm

        path = minilm.onnx_path(8, 40)
        return path, minilm.Tokenizer(40)(["A man is playing a guitar on stage."] * 8)
    from tvm_tasd.benchmarks.models import crepe

    return crepe.onnx_path("tiny", 64), {"frames": crepe.synthetic_tones(64, seed=0)[0]}


def _timed_build(mod, **choice):
    start = time.perf_counter()
    ex = build(mod, "cpu-emulated", **choice)  # the host's fast plain kernels
    return ex, time.perf_counter() - start


def _onnxruntime(path, feed):
    options = ort.SessionOptions()
    options.intra_op_num_threads = tvm.runtime.num_threads()  # the threads TVM's runtime uses
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, feed)


def measure(name: str, rounds: int) -> list[dict]:
    path, feed = _case(name)
    imported = from_onnx(onnx.load(path), {k: list(v.shape) for k, v in feed.items()})
    args = [tvm.runtime.tensor(feed[n]) for n in imported.inputs]
    builds = {"dense": _timed_build(imported.mod, config="dense")}
    for config in CONFIGS[name]:
        builds[config] = _timed_build(imported.mod, config=config)
    plan = PLANS / f"{name}_vegeta-m8.json"
    if plan.exists():
        builds["TASDER plan (vegeta-m8)"] = _timed_build(imported.mod, plan=plan)
    runners = {"onnxruntime": _onnxruntime(path, feed)}
    for config, (ex, _) in builds.items():
        vm = relax.VirtualMachine(ex, tvm.cpu())
        runners[config] = lambda vm=vm: vm["main"](*args)
    samples = {c: [] for c in runners}
    for run in runners.values():
        run()  # warm-up
    for _ in range(rounds):  # interleaved blocks, so background load hits every contender alike
        for config, run in runners.items():
            for _ in range(BLOCK):
                start = time.perf_counter()
                run()
                samples[config].append(time.perf_counter() - start)
    median = {c: float(np.median(s)) for c, s in samples.items()}
    rows = [{"model": name, "config": "onnxruntime", "median_s": median["onnxruntime"], "speedup_vs_ort": 1.0}]
    for config, (ex, build_s) in builds.items():
        rows.append({"model": name, "config": config, "median_s": median[config],
                     "speedup_vs_ort": median["onnxruntime"] / median[config],
                     "speedup_vs_dense": median["dense"] / median[config],
                     "build_s": build_s, "build_vs_dense": build_s / builds["dense"][1],
                     "mac_density": sum(l["executed_macs"] for l in ex.layers) / sum(l["dense_macs"] for l in ex.layers)})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CREPE only, fewer rounds")
    args = parser.parse_args(argv)
    models = ["crepe-tiny"] if args.quick else ["minilm", "crepe-tiny"]
    rows = [row for model in models for row in measure(model, 2 if args.quick else 6)]
    meta = stamp("end-to-end latency and build time on this CPU (measured)")
    lines = ["# End to end on this CPU (measured)", "", *stamp_markdown(meta), "",
             "onnxruntime = the original ONNX model, same thread count; dense = the TVM build with every matmul/conv "
             "through the scheduled dense kernel; TASD = the fused N:M kernels (uniform config, or the committed "
             "TASDER plan for vegeta-m8); every other op through the default CPU schedules in all TVM builds. "
             f"Median of {BLOCK}-run blocks, interleaved.", "",
             "| model | build | executed MAC share | speed vs onnxruntime | speed vs dense TVM | build time vs dense |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if r["config"] == "onnxruntime":
            lines.append(f"| {r['model']} | onnxruntime | — | 1.00× | — | — |")
            continue
        lines.append(f"| {r['model']} | {r['config']} | {r['mac_density']:.3f} | {r['speedup_vs_ort']:.2f}× "
                     f"| {r['speedup_vs_dense']:.2f}× | {r['build_vs_dense']:.2f}× |")
    write("end_to_end", {"meta": meta, "rows": rows}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

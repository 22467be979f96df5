"""End-to-end latency and build time on the emulated target: dense TVM vs TASD.

For MiniLM (batch 8 × 40 tokens) and CREPE tiny (64 frames): build for
``cpu-emulated`` the dense model (every layer through the scheduled dense
kernel) and the TASD model at two configs (the plain fused N:M kernels), time each on this CPU side by side (interleaved
rounds, median), and time the builds. Ratios are what to quote: the same
machine, the same run. The build-time goal: the pass adds ≤ 1× the dense
build time.

    python benchmarks/end_to_end.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
import tvm
from tvm import relax

from tvm_tasd import build
from tvm_tasd.benchmarks.common import stamp, stamp_markdown, write
from tvm_tasd.frontend import from_onnx

CONFIGS = {"minilm": ("4:8+2:8", "2:8+1:8"), "crepe-tiny": ("2:4+1:8", "2:8")}


def _case(name: str):
    if name == "minilm":
        from tvm_tasd.benchmarks.models import minilm

        proto = onnx.load(minilm.onnx_path(8, 40))
        feed = minilm.Tokenizer(40)(["A man is playing a guitar on stage."] * 8)
        return proto, feed
    from tvm_tasd.benchmarks.models import crepe

    proto = onnx.load(crepe.onnx_path("tiny", 64))
    return proto, {"frames": crepe.synthetic_tones(64, seed=0)[0]}


def _timed_build(mod, config):
    start = time.perf_counter()
    ex = build(mod, "cpu-emulated", config=config)  # the host's fast plain kernels
    return ex, time.perf_counter() - start


def measure(name: str, rounds: int) -> list[dict]:
    proto, feed = _case(name)
    imported = from_onnx(proto, {k: list(v.shape) for k, v in feed.items()})
    args = [tvm.runtime.tensor(feed[n]) for n in imported.inputs]
    builds = {"dense": _timed_build(imported.mod, "dense")}
    for config in CONFIGS[name]:
        builds[config] = _timed_build(imported.mod, config)
    runners = {c: relax.VirtualMachine(ex, tvm.cpu()) for c, (ex, _) in builds.items()}
    samples = {c: [] for c in runners}
    for vm in runners.values():
        vm["main"](*args)  # warm-up
    for _ in range(rounds):  # interleaved, so background load hits every contender alike
        for config, vm in runners.items():
            start = time.perf_counter()
            vm["main"](*args)
            samples[config].append(time.perf_counter() - start)
    dense_time = float(np.median(samples["dense"]))
    dense_build = builds["dense"][1]
    rows = []
    for config, (ex, build_s) in builds.items():
        t = float(np.median(samples[config]))
        rows.append({"model": name, "config": config, "median_s": t, "speedup_vs_dense": dense_time / t,
                     "build_s": build_s, "build_vs_dense": build_s / dense_build,
                     "mac_density": sum(l["executed_macs"] for l in ex.layers) / sum(l["dense_macs"] for l in ex.layers)})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CREPE only, fewer rounds")
    args = parser.parse_args(argv)
    models = ["crepe-tiny"] if args.quick else ["minilm", "crepe-tiny"]
    rows = [row for model in models for row in measure(model, 5 if args.quick else 20)]
    meta = stamp("end-to-end latency and build time on the emulated target (measured)")
    lines = ["# End to end on the emulated target (measured)", "", *stamp_markdown(meta), "",
             "Dense = every matmul/conv through the scheduled dense kernel; TASD = the fused N:M kernels; all "
             "other ops are TVM's default lowering in both. Median of interleaved rounds on this CPU.", "",
             "| model | config | executed MAC share | latency vs dense | speed-up | build time vs dense |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['config']} | {r['mac_density']:.3f} | {1 / r['speedup_vs_dense']:.3f} "
                     f"| {r['speedup_vs_dense']:.2f}× | {r['build_vs_dense']:.2f}× |")
    write("end_to_end", {"meta": meta, "rows": rows}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

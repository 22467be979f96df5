"""Pointwise convs in NCHW against blocked channels (NCHW{L}c): the evidence for a blocked CNN layout.

For each distinct 1×1 conv of EfficientNet-Lite0 at 16 images whose channel counts the target's lanes
divide, three contenders run the same GEMM: this project's dense NCHW conv kernel (``dense_conv2d``, no
bias), the blocked kernel (``schedules.llvm_blocked``), both compiled for the target, timed side by side in
interleaved rounds (``kernel_speed.interleave``: ratios within a round, the median over rounds); and
onnxruntime's own NCHWc conv — the middle conv of a three-conv chain, so it reads and writes blocked
tensors, its node time from onnxruntime's profiler (median over the runs). GMAC/s counts the conv's MACs.

    python benchmarks/blocked_layout.py [--rounds R] [--target cpu-emulated|host] [--name STEM]
"""

from __future__ import annotations

import argparse
import json
import tempfile

from tvm_tasd.threads import default_tvm_threads

default_tvm_threads()  # before TVM starts its thread pool: TVM alone would use half the cores here

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import tvm  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from tvm_tasd.benchmarks.common import CPU_TARGETS, stamp, stamp_markdown, write  # noqa: E402
from tvm_tasd.benchmarks.kernel_speed import interleave, tvm_timer  # noqa: E402
from tvm_tasd.schedules.llvm import build, dense_conv2d  # noqa: E402
from tvm_tasd.schedules.llvm_blocked import blocked_pointwise_conv2d, to_blocked  # noqa: E402
from tvm_tasd.schedules.llvm_common import CPUShape  # noqa: E402

BATCH = 16
ORT_RUNS = 20


def pointwise_shapes(onnx_path) -> list[tuple[int, int, int]]:
    """Distinct (input channels, output channels, plane side) of the model's ungrouped 1×1 convs."""
    model = onnx.load(onnx_path)
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    values = [*onnx.shape_inference.infer_shapes(model).graph.value_info, *model.graph.input]
    sides = {v.name: v.type.tensor_type.shape.dim[2].dim_value for v in values
             if len(v.type.tensor_type.shape.dim) == 4}
    shapes = []
    for node in model.graph.node:
        w = weights.get(node.input[1]) if node.op_type == "Conv" else None
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        if w and w[2:] == [1, 1] and groups == 1 and (w[1], w[0], sides[node.input[0]]) not in shapes:
            shapes.append((w[1], w[0], sides[node.input[0]]))
    return shapes


def onnxruntime_blocked_seconds(channels: int, outputs: int, side: int, rng) -> float:
    """onnxruntime's node time for the middle of three chained 1×1 convs (so in and out are NCHWc)."""
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name) for name, shape in
             (("w0", (channels, channels, 1, 1)), ("w", (outputs, channels, 1, 1)), ("w2", (channels, outputs, 1, 1)))]
    nodes = [helper.make_node("Conv", [a, w], [b], name=b) for a, w, b in
             (("x", "w0", "pre"), ("pre", "w", "mid"), ("mid", "w2", "post"))]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                             [BATCH, channels, side, side])],
                              [helper.make_tensor_value_info("post", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = tvm.runtime.num_threads()
    options.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as folder:
        options.enable_profiling = True
        options.profile_file_prefix = f"{folder}/ort"
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        feed = {"x": rng.standard_normal((BATCH, channels, side, side)).astype(np.float32)}
        for _ in range(ORT_RUNS):
            session.run(None, feed)
        with open(session.end_profiling()) as f:
            events = json.load(f)
    times = [e["dur"] for e in events if e.get("cat") == "Node" and e["name"].startswith("mid")
             and e["name"].endswith("_kernel_time")]
    if not times:
        raise RuntimeError("onnxruntime's profile has no node time for the middle conv")
    return float(np.median(times[len(times) // 2:])) * 1e-6  # the later half: warmed up


def measure(rounds: int, target) -> list[dict]:
    from tvm_tasd.benchmarks.models import efficientnet

    lanes = CPUShape.of(target).lanes("float32")
    rng = np.random.default_rng(0)
    rows = []
    for channels, outputs, side in pointwise_shapes(efficientnet.onnx_path(BATCH)):
        macs = BATCH * side * side * channels * outputs
        row = {"channels": channels, "outputs": outputs, "side": side, "macs": macs}
        if channels % lanes or outputs % lanes:
            rows.append({**row, "skipped": f"channels not a multiple of {lanes}"})
            continue
        print(f"{channels} → {outputs} on {side}×{side}…", flush=True)
        x = rng.standard_normal((BATCH, channels, side, side)).astype(np.float32)
        w = rng.standard_normal((outputs, channels, 1, 1)).astype(np.float32)
        nchw = dense_conv2d(x.shape, w.shape, target=target)
        blocked = blocked_pointwise_conv2d(x.shape, w.shape, target=target)
        timers = {"nchw": tvm_timer(build(nchw, target), x, *nchw.pack(w)),
                  "blocked": tvm_timer(build(blocked, target), to_blocked(x, lanes), *blocked.pack(w))}
        samples, _ = interleave(timers, rounds)
        nchw_s, blocked_s = (np.asarray(samples[k]) for k in ("nchw", "blocked"))
        ort_s = onnxruntime_blocked_seconds(channels, outputs, side, rng)
        rows.append({**row, "nchw_s": float(np.median(nchw_s)), "blocked_s": float(np.median(blocked_s)),
                     "onnxruntime_s": ort_s, "blocked_vs_nchw": float(np.median(nchw_s / blocked_s)),
                     "tile": blocked.params})
    return rows


def _line(r: dict) -> str:
    shape = f"| {r['channels']} → {r['outputs']} | {r['side']}×{r['side']} |"
    if "skipped" in r:
        return f"{shape} — | — | — | — ({r['skipped']}) |"
    rate = {k: r["macs"] / r[f"{k}_s"] / 1e9 for k in ("nchw", "blocked", "onnxruntime")}
    return (f"{shape} {r['nchw_s'] * 1e3:.3f} ({rate['nchw']:.0f}) | {r['blocked_s'] * 1e3:.3f} ({rate['blocked']:.0f}) "
            f"| {r['onnxruntime_s'] * 1e3:.3f} ({rate['onnxruntime']:.0f}) | {r['blocked_vs_nchw']:.2f}× |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per shape")
    parser.add_argument("--target", choices=list(CPU_TARGETS), default="host",
                        help="compile the TVM kernels for this machine's CPU (host, default) or cpu-emulated's AVX2")
    parser.add_argument("--name", default="blocked_layout", help="results file stem under benchmarks/results/")
    args = parser.parse_args(argv)
    target = CPU_TARGETS[args.target]()
    rows = measure(args.rounds, target)
    meta = stamp("pointwise convs: NCHW vs blocked channels (measured)", tvm_target=str(target))
    lines = ["# Pointwise convs: NCHW against blocked channels (measured)", "", *stamp_markdown(meta),
             f"- TVM target {args.target}: `{target}`", "",
             f"EfficientNet-Lite0's distinct 1×1 convs at {BATCH} images; ms per call (GMAC/s in brackets). "
             "NCHW = this project's dense conv kernel; blocked = `schedules/llvm_blocked.py` (NCHW{L}c, L = the "
             "target's fp32 lanes); both interleaved, medians over the rounds; onnxruntime = its NCHWc conv as the "
             "middle of a three-conv chain, median node time from its profiler, same threads. No bias or "
             "activation in either TVM kernel.", "",
             "| conv | plane | NCHW ms | blocked ms | onnxruntime NCHWc ms | blocked vs NCHW |",
             "|---|---|---:|---:|---:|---:|", *(_line(r) for r in rows)]
    write(args.name, {"meta": meta, "rows": rows}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

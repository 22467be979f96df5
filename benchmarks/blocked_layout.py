"""Pointwise and depthwise convs in NCHW against blocked channels (NCHW{L}c): the evidence for a blocked CNN layout.

For each distinct 1×1 and depthwise conv of EfficientNet-Lite0 at 16 images (channel counts the target's
lanes do not divide zero-padded, in the blocked kernels as in onnxruntime), three contenders run the same
conv: in NCHW as a build with ``blocked_channels=False`` runs it (1×1: this project's
dense conv kernel, ``dense_conv2d``, no bias; depthwise: TVM's conv under the default CPU rules, the
function ``tvm_tasd.build`` compiles for it, captured from the VM and called on its own arguments), in
blocked channels (``schedules.llvm_blocked``), both compiled for the target and timed side by side in
interleaved rounds (``kernel_speed.interleave``: ratios within a round, the median over rounds); and
onnxruntime's own NCHWc conv — the middle conv of a three-conv chain, so it reads and writes blocked
tensors, its node time from onnxruntime's profiler (median over the runs). GMAC/s counts the conv's MACs.

    python benchmarks/blocked_layout.py [--rounds R] [--target cpu-emulated|host] [--name STEM]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from tvm_tasd.threads import default_tvm_threads

default_tvm_threads()  # before TVM starts its thread pool: TVM alone would use half the cores here

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import tvm  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from tvm import relax  # noqa: E402

from tvm_tasd.benchmarks.common import CPU_TARGETS, stamp, stamp_markdown, write  # noqa: E402
from tvm_tasd.benchmarks.kernel_speed import interleave, tvm_timer  # noqa: E402
from tvm_tasd.pipeline import compile_module  # noqa: E402
from tvm_tasd.schedules.llvm import build, dense_conv2d  # noqa: E402
from tvm_tasd.schedules.llvm_blocked import blocked_depthwise_conv2d, blocked_conv2d, to_blocked  # noqa: E402
from tvm_tasd.schedules.llvm_common import CPUShape  # noqa: E402

BATCH = 16
ORT_RUNS = 20
DEPTHWISE_CALLS = 10


def conv_shapes(onnx_path) -> list[tuple]:
    """Distinct ("1x1", channels, outputs, side) and ("depthwise", channels, kernel, stride, side) of the
    model's ungrouped unstrided 1×1 and its depthwise convs, side = the input plane's."""
    model = onnx.load(onnx_path)
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    values = [*onnx.shape_inference.infer_shapes(model).graph.value_info, *model.graph.input]
    sides = {v.name: v.type.tensor_type.shape.dim[2].dim_value for v in values
             if len(v.type.tensor_type.shape.dim) == 4}
    shapes = []
    for node in model.graph.node:
        w = weights.get(node.input[1]) if node.op_type == "Conv" else None
        attrs = {a.name: a for a in node.attribute}
        groups = attrs["group"].i if "group" in attrs else 1
        stride = attrs["strides"].ints[0] if "strides" in attrs else 1
        if not w:
            continue
        if w[2:] == [1, 1] and groups == 1 and stride == 1:
            shape = ("1x1", w[1], w[0], sides[node.input[0]])
        elif groups == w[0] and w[1] == 1:
            shape = ("depthwise", w[0], w[2], stride, sides[node.input[0]])
        else:
            continue
        if shape not in shapes:
            shapes.append(shape)
    return shapes


def onnxruntime_blocked_seconds(channels: int, side: int, middle: dict, rng) -> float:
    """onnxruntime's node time for the middle of three chained convs (1×1 channels → channels, ``middle``:
    its weight shape and Conv attributes, 1×1 back to channels), so the middle one reads and writes NCHWc."""
    w = middle["shape"]
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name) for name, shape in
             (("w0", (channels, channels, 1, 1)), ("w", w), ("w2", (channels, w[0], 1, 1)))]
    attrs = {k: v for k, v in middle.items() if k != "shape"}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["pre"], name="pre"),
             helper.make_node("Conv", ["pre", "w"], ["mid"], name="mid", **attrs),
             helper.make_node("Conv", ["mid", "w2"], ["post"], name="post")]
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


def tvm_depthwise_timer(x: np.ndarray, w: np.ndarray, stride: int, padding: int, target):
    """Timer for the function a TVM build runs for this depthwise conv (legalized, fused, default CPU rules)."""
    builder = relax.BlockBuilder()
    xv, wv = (relax.Var(n, relax.TensorType(a.shape, "float32")) for n, a in (("x", x), ("w", w)))
    with builder.function("main", [xv, wv]):
        with builder.dataflow():
            out = builder.emit_output(relax.op.nn.conv2d(xv, wv, strides=stride, padding=padding, groups=w.shape[0]))
        builder.emit_func_output(out)
    vm = relax.VirtualMachine(compile_module(builder.get(), target), tvm.cpu())
    calls = []

    def capture(func, symbol, before, _result, *args):
        if not before and not symbol.startswith("vm.builtin"):
            calls.append((func, args))
        return 0

    vm.set_instrument(capture)
    vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(w))
    (func, args), = calls  # one function: the conv

    def sample():
        func(*args)  # warm-up
        start = time.perf_counter()
        for _ in range(DEPTHWISE_CALLS):
            func(*args)
        return (time.perf_counter() - start) / DEPTHWISE_CALLS

    return sample


def _conv_label(kind: str, channels: int, rest: list) -> str:
    if kind == "1x1":
        return f"{channels} → {rest[0]}"
    k, stride = rest[0], rest[1]
    return f"{channels} ch {k}×{k}" + (f" /{stride}" if stride > 1 else "")


def measure(rounds: int, target) -> list[dict]:
    from tvm_tasd.benchmarks.models import efficientnet

    lanes = CPUShape.of(target).lanes("float32")
    rng = np.random.default_rng(0)
    rows = []
    for kind, channels, *rest in conv_shapes(efficientnet.onnx_path(BATCH)):
        side, label = rest[-1], _conv_label(kind, channels, rest)
        outputs = rest[0] if kind == "1x1" else channels
        print(f"{kind} {label} on {side}×{side}…", flush=True)
        x = rng.standard_normal((BATCH, channels, side, side)).astype(np.float32)
        if kind == "1x1":
            w = rng.standard_normal((outputs, channels, 1, 1)).astype(np.float32)
            macs, middle = BATCH * side * side * channels * outputs, {"shape": w.shape}
            nchw = dense_conv2d(x.shape, w.shape, target=target)
            nchw_timer = tvm_timer(build(nchw, target), x, *nchw.pack(w))
            blocked = blocked_conv2d(x.shape, w.shape, target=target)
            blocked_x = to_blocked(x, lanes)
        else:
            k, stride = rest[0], rest[1]
            w = rng.standard_normal((channels, 1, k, k)).astype(np.float32)
            macs = BATCH * (side // stride) ** 2 * channels * k * k
            middle = {"shape": w.shape, "group": channels, "strides": [stride] * 2, "pads": [k // 2] * 4}
            nchw_timer = tvm_depthwise_timer(x, w, stride, k // 2, target)
            blocked = blocked_depthwise_conv2d(x.shape, w.shape, strides=stride, padding=k // 2, target=target)
            blocked_x = to_blocked(x, lanes)
        row = {"kind": kind, "conv": label, "side": side, "macs": macs}
        timers = {"nchw": nchw_timer, "blocked": tvm_timer(build(blocked, target), blocked_x, *blocked.pack(w))}
        samples, _ = interleave(timers, rounds)
        nchw_s, blocked_s = (np.asarray(samples[name]) for name in ("nchw", "blocked"))
        ort_s = onnxruntime_blocked_seconds(channels, side, middle, rng)
        rows.append({**row, "nchw_s": float(np.median(nchw_s)), "blocked_s": float(np.median(blocked_s)),
                     "onnxruntime_s": ort_s, "blocked_vs_nchw": float(np.median(nchw_s / blocked_s)),
                     "tile": blocked.params})
    return rows


def _line(r: dict) -> str:
    shape = f"| {r['kind']} | {r['conv']} | {r['side']}×{r['side']} |"
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
    meta = stamp("pointwise and depthwise convs: NCHW vs blocked channels (measured)", tvm_target=str(target))
    lines = ["# Pointwise and depthwise convs: NCHW against blocked channels (measured)", "", *stamp_markdown(meta),
             f"- TVM target {args.target}: `{target}`", "",
             f"EfficientNet-Lite0's distinct 1×1 and depthwise convs at {BATCH} images (/2: stride 2; plane: the "
             "input's); ms per call (GMAC/s in brackets). NCHW = as a build runs it: this project's dense conv "
             "kernel (1×1), TVM's conv under the default CPU rules (depthwise); blocked = "
             "`schedules/llvm_blocked.py` (NCHW{L}c, L = the target's fp32 lanes); both interleaved, medians over "
             "the rounds; onnxruntime = its NCHWc conv as the middle of a three-conv chain, median node time from "
             "its profiler, same threads. No bias or activation in any of them.", "",
             "| kind | conv | plane | NCHW ms | blocked ms | onnxruntime NCHWc ms | blocked vs NCHW |",
             "|---|---|---|---:|---:|---:|---:|", *(_line(r) for r in rows)]
    write(args.name, {"meta": meta, "rows": rows}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

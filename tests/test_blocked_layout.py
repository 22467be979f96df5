"""CPU builds run a CNN's dense pointwise and depthwise convs in blocked channels (NCHW{L}c) and keep it in that
layout between them: numerics against onnxruntime, and where the layout transforms remain."""

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from tvm_tasd import TASDRewrite, build
from tvm_tasd.blocked_layout import FROM_BLOCKED, TO_BLOCKED, layout_transform
from tvm_tasd.frontend import from_onnx

INPUT = [2, 12, 6, 6]
C, E = 20, 36  # channels no multiple of any target's lanes: every blocked tensor is padded


class _Graph:
    """Builds an ONNX graph node by node, with random weights."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.count = [], {}, 0

    def _name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, value) -> str:
        name = self._name("k")
        self.inits[name] = np.asarray(value, np.float32)
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self._name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def conv(self, x: str, channels: int, outputs: int, k: int = 1, groups: int = 1, relu6: bool = True) -> str:
        w = self.const(self.rng.normal(size=(outputs, channels // groups, k, k)) / np.sqrt(channels // groups * k * k))
        y = self.node("Conv", [x, w, self.const(self.rng.normal(size=outputs) * 0.5)], kernel_shape=[k, k],
                      pads=[k // 2] * 4, group=groups)
        return self.node("Clip", [y, self.const(0), self.const(6)]) if relu6 else y

    def model(self, out: str, out_shape: list[int]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, INPUT)],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)],
            [numpy_helper.from_array(v, k) for k, v in self.inits.items()])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _mobile_block_model() -> onnx.ModelProto:
    """A stem 1×1 conv, an inverted residual block (expand, depthwise, project, a per-channel scale and shift,
    residual add), a squeeze-and-excitation scale (global pool, two 1×1 convs on the 1 × 1 plane, hard
    sigmoid, broadcast multiply), a hardswish spelled as PaddlePaddle exports it (÷ 6), max and average
    pooling, global pooling and a classifier."""
    g = _Graph(0)
    stem = g.conv("x", INPUT[1], C)
    expanded = g.conv(stem, C, E)
    depthwise = g.conv(expanded, E, E, k=3, groups=E)
    projected = g.conv(depthwise, E, C, relu6=False)
    scaled = g.node("Add", [g.node("Mul", [projected, g.const(g.rng.normal(size=(C, 1, 1)))]),
                            g.const(g.rng.normal(size=(1, C, 1, 1)))])  # an unfolded batch norm
    residual = g.node("Add", [stem, scaled])
    pooled = g.node("GlobalAveragePool", [residual])
    scale = g.node("HardSigmoid", [g.conv(g.conv(pooled, C, 8, relu6=False), 8, C, relu6=False)])
    excited = g.node("Mul", [residual, scale])
    shifted = g.node("Clip", [g.node("Add", [excited, g.const([3])]), g.const(0), g.const(6)])  # a 1-element shift
    swished = g.node("Div", [g.node("Mul", [excited, shifted]), g.const(6)])
    windowed = g.node("AveragePool", [g.node("MaxPool", [swished], kernel_shape=[2, 2], strides=[2, 2])],
                      kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)
    features = g.node("Flatten", [g.node("GlobalAveragePool", [windowed])])
    logits = g.node("Gemm", [features, g.const(g.rng.normal(size=(C, 5))), g.const(g.rng.normal(size=5))])
    return g.model(logits, [INPUT[0], 5])


def _broken_chain_model() -> onnx.ModelProto:
    """Pointwise convs joined by ops that must not run blocked: a division of two blocked values (a padding
    channel's 0 / 0 would reach the next conv) and a sigmoid (not carried)."""
    g = _Graph(1)
    a, b = g.conv("x", INPUT[1], C), g.conv("x", INPUT[1], C)
    ratio = g.node("Div", [g.node("Clip", [a, g.const(1), g.const(6)]), g.node("Clip", [b, g.const(1), g.const(6)])])
    mixed = g.node("Add", [ratio, g.node("Sigmoid", [a])])
    return g.model(g.conv(mixed, C, E, relu6=False), [INPUT[0], E, *INPUT[2:]])


def _flattened_classifier_model(channels: int, window: int = 2) -> onnx.ModelProto:
    """A 3×3 conv, max pooling (2 × 2, or 3 × 3 with padding 1) of stride 2, Flatten and a Gemm classifier over
    all C·H·W features (LeNet's head)."""
    g = _Graph(2)
    pooled = g.node("MaxPool", [g.conv("x", INPUT[1], channels, k=3)], kernel_shape=[window] * 2, strides=[2, 2],
                    pads=[window // 2 - (window == 2)] * 4)
    features = g.node("Flatten", [pooled])
    weight = g.rng.normal(size=(channels * INPUT[2] * INPUT[3] // 4, 5))
    return g.model(g.node("Gemm", [features, g.const(weight), g.const(g.rng.normal(size=5))]), [INPUT[0], 5])


def _run(model: onnx.ModelProto, **options) -> tuple[np.ndarray, np.ndarray]:
    """(TVM build's output, onnxruntime's) on one random input."""
    x = np.random.default_rng(5).normal(size=INPUT).astype(np.float32)
    ex = build(from_onnx(model).mod, "cpu-emulated", config="dense", **options)
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return out, session.run(None, {"x": x})[0]


def _main_ops(model: onnx.ModelProto) -> Counter:
    """How often each layout transform and Relax op is called in ``main`` after the rewrite; ``blocked <op>``
    counts the calls that compute a blocked (5-D) value."""
    with tvm.target.Target({"kind": "llvm", "mcpu": "haswell"}):
        rewrite = TASDRewrite("cpu-emulated", config="dense", dense_kernels=True, blocked_channels=True)
        mod = rewrite(from_onnx(model).mod)
    ops = Counter()
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            kind = layout_transform(mod, value)
            kind = kind or (value.op.name if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op)
                            else "other")
            ops[kind] += 1
            ops[f"blocked {kind}"] += len(binding.var.ty.shape.values) == 5
    return ops


@pytest.mark.parametrize("model", [_mobile_block_model, _broken_chain_model, lambda: _flattened_classifier_model(16),
                                   lambda: _flattened_classifier_model(C), lambda: _flattened_classifier_model(16, 3)],
                         ids=["mobile_block", "broken_chain", "flatten_16", f"flatten_{C}", "flatten_16_pool_3x3"])
def test_blocked_build_computes_what_onnxruntime_computes(model):
    out, reference = _run(model())
    np.testing.assert_allclose(out, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())
    nchw, _ = _run(model(), blocked_channels=False)
    np.testing.assert_allclose(out, nchw, rtol=1e-5, atol=1e-5 * np.abs(reference).max())


def test_transforms_remain_only_where_the_blocked_chain_meets_the_rest():
    """Convs, the scale and shift, the residual add, the squeeze-and-excitation (its convs, hard sigmoid and
    broadcast multiply), the hardswish and the pooling all run blocked: one transform in (the input), one out
    (before Flatten)."""
    ops = _main_ops(_mobile_block_model())
    assert ops[TO_BLOCKED] == 1 and ops[FROM_BLOCKED] == 1, ops
    assert ops["relax.nn.conv2d"] == 0 and ops["blocked relax.mean"] == 2
    assert ops["blocked relax.nn.max_pool2d"] == ops["blocked relax.nn.avg_pool2d"] == 1
    assert ops["blocked relax.add"] == ops["relax.add"] >= 4  # shift, residual, SE's hard sigmoid, hardswish


def test_ops_that_cannot_run_blocked_end_the_chain():
    ops = _main_ops(_broken_chain_model())
    assert ops["relax.sigmoid"] == ops["relax.divide"] == ops["relax.add"] == 1  # on NCHW values
    assert ops["blocked relax.maximum"] == ops["blocked relax.minimum"] == 2  # the clips run blocked
    # in: x (once for both convs) and the sum; out: a, the clips and the output
    assert ops[TO_BLOCKED] == 2 and ops[FROM_BLOCKED] == 4, ops


def test_a_series_too_dense_for_its_transforms_runs_the_blocked_dense_kernel():
    """With ``nm_kernels="auto"`` a conv that runs blocked when dense keeps its N:M kernel (NCHW, a layout
    transform on each side) only where that pays (``llvm.nm_kernel_pays``): at 2:8 the block's five convs run the
    blocked dense kernel on the approximated weights (the depthwise conv is dense anyway, the classifier a matmul
    that keeps its N:M kernel), computing what their N:M kernels compute."""
    model = _mobile_block_model()
    x = np.random.default_rng(5).normal(size=INPUT).astype(np.float32)
    outs = {}
    for nm_kernels, nm in (("auto", 1), ("always", 6)):
        ex = build(from_onnx(model).mod, "cpu-emulated", config="2:8", nm_kernels=nm_kernels)
        outs[nm_kernels] = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
        kernels = Counter(layer["kernel"] for layer in ex.layers)
        assert kernels["nm"] == nm and kernels["dense"] == 7 - nm, (nm_kernels, kernels)
    np.testing.assert_allclose(outs["auto"], outs["always"], rtol=1e-5, atol=1e-5 * np.abs(outs["always"]).max())


def test_a_dense_classifier_reads_the_flattened_blocked_value():
    """Flatten → Gemm: the classifier's kernel reads the blocked value flattened as it is, its weight rows
    permuted (no transform out); not where padding channels would enter the row (C = 20 on 8 lanes)."""
    folded = _main_ops(_flattened_classifier_model(16, window=3))
    assert folded[FROM_BLOCKED] == 0 and folded["blocked relax.nn.max_pool2d"] == 1, folded
    padded = _main_ops(_flattened_classifier_model(C, window=3))
    assert padded[FROM_BLOCKED] == 1 and padded["blocked relax.nn.max_pool2d"] == 1, padded


def test_a_2x2_max_pool_after_a_conv_runs_in_its_output_stage():
    """conv → ReLU6 → 2 × 2 max pooling of stride 2: the blocked conv writes the pooled output (no pooling op, the
    full-size output never written); a 3 × 3 pooling stays an op of its own (on the blocked value)."""
    pooled = _main_ops(_flattened_classifier_model(16))
    assert pooled["relax.nn.max_pool2d"] == 0 and pooled["relax.call_tir"] == 2, pooled  # the conv and the Gemm
    assert _main_ops(_flattened_classifier_model(16, window=3))["relax.nn.max_pool2d"] == 1


def test_nm_layers_stay_nchw_and_their_neighbours_blocked():
    """A layer the config makes N:M runs its NCHW kernel: the chain is cut around it, the output unchanged from
    the NCHW build of the same approximated weights."""
    model = _mobile_block_model()
    x = np.random.default_rng(5).normal(size=INPUT).astype(np.float32)
    outs = []
    for blocked in (True, False):
        ex = build(from_onnx(model).mod, "cpu-emulated", config="2:4", nm_kernels="always", blocked_channels=blocked)
        outs.append(relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy())
        kernels = Counter(layer["kernel"] for layer in ex.layers)
        assert kernels["nm"] == 6 and kernels["dense" if blocked else "relax"] == 1  # the depthwise conv: blocked
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5 * np.abs(outs[1]).max())

"""The CPU schedules of the ops the rewrite leaves to TVM (``schedules/llvm_default.py``): every op gets one, and
each computes what numpy computes."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from hypothesis import given
from hypothesis import strategies as st
from tvm import relax

from tvm_tasd.pipeline import relax_pipeline, scheduling_passes
from tvm_tasd.schedules import llvm_common
from tvm_tasd.schedules.llvm import host_target
from tvm_tasd.schedules.llvm_default import Window
from tvm_tasd.schedules.llvm_depthwise_rows import depthwise_row_legalizations


INDEX = ((3, 4), "int64")  # an index input into a table of 50 rows


def _erf(x):
    from math import erf

    return np.vectorize(erf)(x.astype(np.float64)).astype(np.float32)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _layer_norm(x, gamma, beta):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * gamma + beta


def _depthwise(x, w, stride, pad, reduce=None):
    """Per-channel window sums x ⋆ w (or ``reduce`` over each window when ``w`` is None), NCHW."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    size = 3 if w is None else w.shape[-1]
    rows, cols = (x.shape[2] - size) // stride + 1, (x.shape[3] - size) // stride + 1
    windows = np.stack([x[:, :, i : i + stride * rows : stride, j : j + stride * cols : stride]
                        for i in range(size) for j in range(size)], axis=-1)
    if w is None:
        return reduce(windows, axis=-1)
    return (windows * w.reshape(1, w.shape[0], 1, 1, size * size)).sum(-1)


def _hardswish(x):
    return relax.op.divide(relax.op.multiply(x, relax.op.clip(relax.op.add(x, relax.const(3.0, "float32")), 0, 6)),
                           relax.const(6.0, "float32"))


def _np_hardswish(x):
    return x * np.clip(x + 3, 0, 6) / 6


# name: (input shapes, relax body, numpy reference); float32 inputs, except the int64 INDEX
CASES = {
    "attention": (
        [(2, 3, 10, 16), (2, 3, 10, 16), (2, 3, 10, 16), (2, 1, 1, 10)],
        lambda q, k, v, mask: relax.op.matmul(
            relax.op.nn.softmax(relax.op.add(relax.op.multiply(
                relax.op.matmul(q, relax.op.permute_dims(k, [0, 1, 3, 2])), relax.const(0.25, "float32")), mask)), v),
        lambda q, k, v, mask: _softmax(q @ k.transpose(0, 1, 3, 2) * 0.25 + mask) @ v,
    ),
    "layer_norm": (  # rows of 48: both AVX2 (8 lanes) and AVX-512 (16 lanes) divide them
        [(4, 7, 48), (48,), (48,)],
        lambda x, g, b: relax.op.nn.layer_norm(x, g, b, axes=[-1]),
        _layer_norm,
    ),
    "softmax_rows": (  # rows a vector width divides: summed in vector lanes
        [(3, 5, 48)],
        lambda x: relax.op.nn.softmax(x, axis=-1),
        _softmax,
    ),
    "mean_pool": (  # a reduction over two axes, then the divide: the rows are the only loops left to it
        [(2, 8, 5, 6)],
        lambda x: relax.op.mean(x, axis=[2, 3], keepdims=True),
        lambda x: x.mean(axis=(2, 3), keepdims=True),
    ),
    "mean_pool_lanes": (  # the same over 4 × 12 values a vector width divides: summed in vector lanes
        [(2, 8, 4, 12)],
        lambda x: relax.op.mean(x, axis=[2, 3], keepdims=True),
        lambda x: x.mean(axis=(2, 3), keepdims=True),
    ),
    "depthwise_hardswish": (  # a 3×3 depthwise conv, stride 2, padded, then bias and hardswish
        [(1, 6, 9, 20), (6, 1, 3, 3), (1, 6, 1, 1)],
        lambda x, w, b: _hardswish(relax.op.add(relax.op.nn.conv2d(x, w, strides=2, padding=1, groups=6), b)),
        lambda x, w, b: _np_hardswish(_depthwise(x, w, 2, 1) + b),
    ),
    "depthwise_rows": (  # a 5×5 depthwise conv on 14-wide rows (computed 16 wide), then bias and ReLU6
        [(2, 4, 14, 14), (4, 1, 5, 5), (1, 4, 1, 1)],
        lambda x, w, b: relax.op.clip(relax.op.add(relax.op.nn.conv2d(x, w, padding=2, groups=4), b), 0, 6),
        lambda x, w, b: np.clip(_depthwise(x, w, 1, 2) + b, 0, 6),
    ),
    "depthwise_short_rows": (  # 3×3 on 7-wide rows (computed 8 wide), several images, no epilogue
        [(3, 5, 7, 7), (5, 1, 3, 3)],
        lambda x, w: relax.op.nn.conv2d(x, w, padding=1, groups=5),
        lambda x, w: _depthwise(x, w, 1, 1),
    ),
    "depthwise_strided_rows": (  # 5×5, stride 2, 7-wide output rows: read from two phase planes, 8 wide
        [(2, 4, 13, 13), (4, 1, 5, 5), (1, 4, 1, 1)],
        lambda x, w, b: relax.op.clip(relax.op.add(relax.op.nn.conv2d(x, w, strides=2, padding=2, groups=4), b), 0, 6),
        lambda x, w, b: np.clip(_depthwise(x, w, 2, 2) + b, 0, 6),
    ),
    "depthwise_strided_3x3": (  # 3×3, stride 2, 8-wide output rows: phase planes, no widening
        [(2, 4, 16, 16), (4, 1, 3, 3)],
        lambda x, w: relax.op.nn.conv2d(x, w, strides=2, padding=1, groups=4),
        lambda x, w: _depthwise(x, w, 2, 1),
    ),
    "max_pool": (
        [(2, 3, 8, 16)],
        lambda x: relax.op.nn.max_pool2d(x, pool_size=3, strides=1, padding=1),
        lambda x: _depthwise(np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf), None, 1, 0, np.max),
    ),
    "bias_gelu": (
        [(6, 40), (40,)],
        lambda x, b: relax.op.nn.gelu(relax.op.add(x, b)),
        lambda x, b: 0.5 * (x + b) * (1 + _erf((x + b) / np.sqrt(2))),
    ),
    "transpose_reshape": (
        [(2, 5, 3, 8)],
        lambda x: relax.op.reshape(relax.op.permute_dims(x, [0, 2, 1, 3]), (6, 40)),
        lambda x: x.transpose(0, 2, 1, 3).reshape(6, 40),
    ),
    "gather": (
        [(50, 12), INDEX],
        lambda table, index: relax.op.take(table, index, axis=0),
        lambda table, index: table[index],
    ),
}


def _module(shapes, body):
    bb = relax.BlockBuilder()
    params = []
    for i, shape in enumerate(shapes):
        shape, dtype = shape if shape is INDEX else (shape, "float32")
        params.append(relax.Var(f"x{i}", relax.TensorType(shape, dtype)))
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(body(*params))
        bb.emit_func_output(out)
    return bb.get()


def _inputs(shapes, rng):
    arrays = []
    for shape in shapes:
        if shape is INDEX:
            arrays.append(rng.integers(0, 50, size=INDEX[0]).astype("int64"))
        else:
            arrays.append(rng.standard_normal(shape).astype("float32"))
    return arrays


@pytest.fixture
def parallel_at_any_size(monkeypatch):
    """The cases are small enough to run on one thread; this makes their schedules show the parallel loop
    they get at real sizes."""
    monkeypatch.setattr(llvm_common, "PARALLEL_MIN_WORK", 0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_op_gets_a_schedule(name, parallel_at_any_size):
    shapes, body, _ = CASES[name]
    target = host_target()
    with target:
        mod = tvm.transform.Sequential(scheduling_passes(target))(_module(shapes, body))
    funcs = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert funcs and all(f.attrs is not None and f.attrs.get("tirx.is_scheduled") for f in funcs)
    assert any("parallel" in f.script() for f in funcs)


@pytest.mark.parametrize("name", sorted(CASES))
def test_scheduled_ops_match_numpy(name):
    shapes, body, reference = CASES[name]
    arrays = _inputs(shapes, np.random.default_rng(0))
    target = host_target()
    vm = relax.VirtualMachine(tvm.compile(_module(shapes, body), target=target, relax_pipeline=relax_pipeline(target)),
                              tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(a) for a in arrays]).numpy()
    np.testing.assert_allclose(out, reference(*arrays), rtol=1e-4, atol=1e-5)


def _scheduled_scripts(name: str) -> list[str]:
    """The TVMScript of every PrimFunc of case ``name`` after the CPU scheduling passes."""
    shapes, body, _ = CASES[name]
    with host_target() as target:
        mod = tvm.transform.Sequential(scheduling_passes(target))(_module(shapes, body))
    return [f.script() for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]


@pytest.mark.parametrize("name", ["attention", "bias_gelu"])
def test_gelu_and_softmax_lower_without_a_libm_call_per_element(name):
    """``T.erf``/``T.exp`` become one scalar libm call per element on LLVM; the fast legalizations avoid both."""
    scripts = "".join(_scheduled_scripts(name))
    assert "T.erf(" not in scripts and "T.exp(" not in scripts


@pytest.mark.parametrize("name", ["layer_norm", "softmax_rows", "mean_pool_lanes"])
def test_row_reductions_sum_in_vector_lanes(name):
    """A reduction over rows the vector width divides becomes per-lane partials (``rfactor``) in a vector loop."""
    scripts = _scheduled_scripts(name)
    assert any("_rf" in script and "T.vectorized" in script for script in scripts)


@pytest.mark.parametrize("name", ["depthwise_hardswish", "depthwise_rows", "max_pool"])
def test_window_reductions_run_per_channel_in_vectors(name, parallel_at_any_size):
    """Depthwise convs and pooling: channels in parallel, the taps summed into vectors along each output row."""
    scripts = _scheduled_scripts(name)
    assert any("T.parallel" in script and "T.vectorized" in script and "_update" in script for script in scripts)


def test_window_taps_feed_a_register_tile_of_rows_and_vectors(parallel_at_any_size):
    """Each tap updates several output vectors (unrolled rows × row vectors), not one accumulator chain."""
    script = next(s for s in _scheduled_scripts("depthwise_rows") if "_update" in s)
    lines = script.splitlines()
    update = next(i for i, line in enumerate(lines) if "T.sblock(" in line and '_update")' in line)
    loops = [line.strip() for line in lines[:update] if line.strip().startswith("for ")]
    assert [loop for loop in loops[-3:] if "T.unroll" in loop], loops[-4:]


@pytest.mark.parametrize("name, widths", [("depthwise_rows", (14, 16)), ("depthwise_short_rows", (7, 8)),
                                          ("depthwise_strided_rows", (7, 8))])
def test_depthwise_rows_no_vector_fits_are_computed_wider(name, widths):
    """A depthwise conv on 14- or 7-wide rows accumulates rows of 16 or 8 (whole 256-bit vectors) and writes
    the real width; a strided one reads its padded input as phase planes. The numerics are
    test_scheduled_ops_match_numpy's."""
    width, widened = widths
    shapes, body, _ = CASES[name]
    with host_target() as target:
        mod = tvm.transform.Sequential(scheduling_passes(target))(_module(shapes, body))
    conv = next(f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc) and "_update" in f.script())
    accumulator = next(line for line in conv.script().splitlines() if "group_conv2d_nchw" in line and "alloc_buffer" in line)
    assert accumulator.rstrip().endswith(f"T.int64({widened})))"), accumulator
    assert int(conv.params[-1].shape[-1]) == width
    phases = [line for line in conv.script().splitlines() if "phases = " in line]  # (…, row, phase, column)
    assert len(phases) == ("strided" in name) and all(line.count("T.int64(") == 5 for line in phases), phases


def _conv_call(x_shape, w_shape, **attrs):
    x = relax.Var("x", relax.TensorType(x_shape, "float32"))
    w = relax.Var("w", relax.TensorType(w_shape, "float32"))
    return relax.BlockBuilder().normalize(relax.op.nn.conv2d(x, w, **attrs))


@pytest.mark.parametrize("x_shape, w_shape, attrs, legalized_width", [
    ((1, 8, 14, 14), (8, 1, 5, 5), dict(padding=2, groups=8), 16),
    ((1, 8, 28, 28), (8, 1, 3, 3), dict(padding=1, groups=8), 32),
    ((1, 8, 16, 16), (8, 1, 3, 3), dict(padding=1, groups=8), None),  # whole vectors already
    ((1, 8, 28, 28), (8, 1, 5, 5), dict(padding=2, strides=2, groups=8), 16),  # strided 5×5: phase planes
    ((1, 8, 32, 32), (8, 1, 5, 5), dict(padding=2, strides=2, groups=8), 16),  # phases, no widening
    ((1, 8, 28, 28), (8, 1, 3, 3), dict(padding=1, strides=2, groups=8), 16),  # strided 3×3 too
    ((1, 8, 20, 20), (8, 1, 3, 3), dict(padding=1, strides=2, groups=8), None),  # 16 columns for 10: too many
    ((1, 8, 28, 28), (8, 1, 5, 5), dict(padding=4, strides=2, dilation=2, groups=8), None),
    ((1, 8, 14, 14), (8, 8, 3, 3), dict(padding=1), None),  # not grouped
    ((1, 8, 14, 14), (4, 2, 3, 3), dict(padding=1, groups=4), None),  # grouped, not depthwise
    ((1, 8, 5, 5), (8, 1, 3, 3), dict(padding=1, groups=8), None),  # 8 columns for 5: too much more work
    ((1, 8, 14, 14), (8, 1, 3, 3), dict(padding=1, groups=8, data_layout="NHWC"), None),
])
def test_which_depthwise_convs_are_widened(x_shape, w_shape, attrs, legalized_width):
    if attrs.get("data_layout") == "NHWC":
        x_shape = (x_shape[0], x_shape[2], x_shape[3], x_shape[1])
    call = _conv_call(x_shape, w_shape, **attrs)
    bb = relax.BlockBuilder()
    with bb.function("main", []):
        with bb.dataflow():
            legalized = depthwise_row_legalizations(tvm.target.Target({"kind": "llvm", "mattr": ["+avx2"]}))[
                "relax.nn.conv2d"](bb, call)
            bb.emit_output(legalized)
        bb.emit_func_output(relax.const(0, "float32"))
    widths = [int(f.params[-1].shape[-1]) for f in bb.get().functions.values()
              if isinstance(f, tvm.tirx.PrimFunc)]
    expected = [legalized_width, call.ty.shape.values[3]] if legalized_width else [call.ty.shape.values[-1]]
    assert sorted(widths) == sorted(int(w) for w in expected), widths


@given(rows=st.integers(1, 120), vectors=st.integers(1, 40), registers=st.sampled_from([16, 32]))
def test_window_register_tile_divides_the_row_and_fits(rows, vectors, registers):
    tile_rows, tile_vectors = Window._register_tile(rows, vectors, registers)
    assert rows % tile_rows == 0 and vectors % tile_vectors == 0
    assert tile_rows * tile_vectors <= registers // 2


def test_only_functions_worth_a_fork_join_run_in_parallel():
    """A small op stays on one thread (waking the pool costs more than it saves); the same op large does not."""
    sizes = {"small": (4, 48), "large": (64, llvm_common.PARALLEL_MIN_WORK // 64 + 48)}
    body = lambda x: relax.op.nn.softmax(x, axis=-1)  # noqa: E731
    scripts = {}
    for size, shape in sizes.items():
        with host_target() as target:
            mod = tvm.transform.Sequential(scheduling_passes(target))(_module([shape], body))
        scripts[size] = "".join(f.script() for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc))
    assert "T.parallel" not in scripts["small"] and "T.parallel" in scripts["large"]

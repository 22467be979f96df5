"""The keep-top-k rule the evaluators emulate activation series with, held to the decomposition itself."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tvm_tasd import approximate
from tvm_tasd.evaluation.keep_top import NumpyOps, keep_top


@settings(max_examples=60, deadline=None)
@given(
    m=st.sampled_from([2, 4, 8]),
    data=st.data(),
)
def test_keeping_the_top_k_of_each_group_is_the_greedy_series_of_that_m(m, data):
    groups = data.draw(st.integers(1, 6))
    # small integers: many ties and exact zeros, where the tie and zero rules matter
    x = data.draw(hnp.arrays(np.float32, (3, groups * m), elements=st.integers(-3, 3).map(float)))
    for keep in range(1, m + 1):  # one term keep:M keeps what any greedy series of that M with ΣN = keep keeps
        expected = approximate(x, f"{keep}:{m}", axis=-1)
        np.testing.assert_array_equal(keep_top(x, keep, m, NumpyOps(x.dtype)), expected)
    if m <= 4:
        np.testing.assert_array_equal(keep_top(x, 2, m, NumpyOps(x.dtype)), approximate(x, f"1:{m}+1:{m}", axis=-1))


@settings(max_examples=30, deadline=None)
@given(m=st.sampled_from([2, 4, 8]), data=st.data())
def test_channels_first_groups_run_along_the_channels_of_an_nchw_tensor(m, data):
    channels = m * data.draw(st.integers(1, 3))
    x = data.draw(hnp.arrays(np.float32, (2, channels, 3, 2), elements=st.integers(-3, 3).map(float)))
    keep = data.draw(st.integers(1, m))
    np.testing.assert_array_equal(keep_top(x, keep, m, NumpyOps(x.dtype), channels_first=True),
                                  approximate(x, f"{keep}:{m}", axis=1))


def _ties_and_zeros(m):
    # small integers: entries of equal |x| (x and −x too) and exact zeros in most groups
    return np.random.default_rng(m).integers(-2, 3, size=(6, 4 * m)).astype(np.float32)


@pytest.mark.parametrize("m", [4, 8])
def test_onnxruntime_keeps_what_numpy_keeps_through_ties(m):
    import onnx
    from onnx import helper

    from tvm_tasd.evaluation.onnx import OnnxOps, inference_session

    x = _ties_and_zeros(m)
    ops = OnnxOps("k::", np.float32)
    out = keep_top("x", "keep", m, ops)
    graph = helper.make_graph(ops.nodes, "keep_top",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(x.shape)),
                               helper.make_tensor_value_info("keep", onnx.TensorProto.INT64, [])],
                              [helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None)], ops.initializers)
    session = inference_session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    for keep in range(1, m + 1):
        got = session.run(None, {"x": x, "keep": np.array(keep, np.int64)})[0]
        np.testing.assert_array_equal(got, keep_top(x, keep, m, NumpyOps(np.float32)))


@pytest.mark.parametrize("m", [4, 8])
def test_relax_keeps_what_numpy_keeps_through_ties(m):
    import tvm
    from tvm import relax

    from tvm_tasd.evaluation.relax import RelaxOps

    x = _ties_and_zeros(m)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "float32"))
    keep = relax.Var("keep", relax.TensorType((), "int64"))
    with bb.function("main", [xv, keep]):
        with bb.dataflow():
            out = bb.emit_output(keep_top(xv, keep, m, RelaxOps(x.shape, "float32", bb)))
        bb.emit_func_output(out)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target="llvm"), tvm.cpu())
    for keep_count in range(1, m + 1):
        got = vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(np.array(keep_count, np.int64))).numpy()
        np.testing.assert_array_equal(got, keep_top(x, keep_count, m, NumpyOps(np.float32)))

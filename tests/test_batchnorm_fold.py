"""Folding batch norms: into the conv before them (exact, the weight scaled per output channel), and after a
ReLU (exact on onnxruntime, the layer ReLU-fed, its weight untouched)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from tvm_tasd.batchnorm_fold import fold_batchnorm_after_relu, fold_batchnorm_into_conv
from tvm_tasd.frontend import from_onnx
from tvm_tasd.io import fingerprint
from tvm_tasd.matcher import find_layers
from tvm_tasd.policy import Choice
from tvm_tasd.reference import approximate_onnx, canonical

C = 16  # channels into the layer: two groups of 8


def _model(after_bn, layer, x_shape, out_shape, initializers, scale=None, relu="Relu", extra_readers=()):
    """x → Relu → BatchNormalization → after_bn nodes → layer, as a model (initializers: name → array)."""
    rng = np.random.default_rng(0)
    scale = rng.uniform(0.5, 2.0, C) if scale is None else scale
    bn = {"bn.scale": scale, "bn.bias": rng.normal(size=C), "bn.mean": rng.normal(size=C),
          "bn.var": rng.uniform(0.5, 2.0, C)}
    relu_nodes = [helper.make_node("Relu", ["x"], ["r"])] if relu == "Relu" else [
        helper.make_node("Clip", ["x", "zero", "six"], ["r"])]
    inits = {**bn, "zero": np.float32(0), "six": np.float32(6), **initializers}
    nodes = [*relu_nodes, helper.make_node("BatchNormalization", ["r", *bn], ["b"], epsilon=1e-3), *after_bn, layer,
             *extra_readers]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in out_shape],
        [numpy_helper.from_array(v if isinstance(v, np.ndarray) and v.dtype == np.int64 else np.asarray(v, np.float32), k)
         for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def _conv_model(kernel, stride, pads, dilation, bias=True, pool=True, scale=None, relu="Relu", width_pad=1):
    rng = np.random.default_rng(1)
    weight = rng.normal(size=(8, C, kernel, 3)).astype(np.float32)
    inits = {"w": weight, **({"cb": rng.normal(size=8)} if bias else {})}
    after = [helper.make_node("MaxPool", ["b"], ["p"], kernel_shape=[2, 2], strides=[2, 2])] if pool else []
    conv = helper.make_node("Conv", ["p" if pool else "b", "w", *(["cb"] if bias else [])], ["y"],
                            kernel_shape=[kernel, 3], strides=[stride, 1], dilations=[dilation, 1],
                            pads=[pads[0], width_pad, pads[1], width_pad])
    return _model(after, conv, [2, C, 20, 12], [("y", None)], inits, scale=scale, relu=relu)


@settings(max_examples=20, deadline=None)
@given(kernel=st.integers(1, 4), stride=st.integers(1, 2), top=st.integers(0, 3), bottom=st.integers(0, 3),
       dilation=st.integers(1, 2), bias=st.booleans(), pool=st.booleans(), relu=st.sampled_from(["Relu", "Clip"]))
def test_conv_fold_is_exact_with_any_padding(kernel, stride, top, bottom, dilation, bias, pool, relu):
    model = _conv_model(kernel, stride, (top, bottom), dilation, bias, pool, relu=relu)
    folded = fold_batchnorm_after_relu(model)
    assert "BatchNormalization" not in [node.op_type for node in folded.graph.node]
    assert _initializer(folded, "w").tobytes() == _initializer(model, "w").tobytes()  # the weight plans name
    x = np.random.default_rng(2).normal(size=(2, C, 20, 12)).astype(np.float32)
    (expected,), (got,) = _run(model, x), _run(folded, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def _initializer(model, name):
    return numpy_helper.to_array(next(init for init in model.graph.initializer if init.name == name))


def test_the_scale_stays_before_the_pooling_and_the_shift_moves_to_the_layer():
    folded = fold_batchnorm_after_relu(_conv_model(3, 1, (1, 1), 1))
    assert [node.op_type for node in folded.graph.node] == ["Relu", "Mul", "MaxPool", "Add", "Conv"]


def test_a_negative_scale_folds_too_but_hides_the_zeros_from_the_search():
    """max(a·x + b) = max(a·x) + b for any sign of a; a negative a makes the pooled values no longer the
    ReLU's zeros, so the layer is not ReLU-fed."""
    model = _conv_model(3, 1, (1, 1), 1, scale=np.where(np.arange(C) == 3, -1.0, 1.0))
    folded = fold_batchnorm_after_relu(model)
    assert "BatchNormalization" not in [node.op_type for node in folded.graph.node]
    x = np.random.default_rng(5).normal(size=(2, C, 20, 12)).astype(np.float32)
    (expected,), (got,) = _run(model, x), _run(folded, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    (layer,) = find_layers(from_onnx(model).mod)
    assert not layer.relu_fed


def test_gemm_after_pooling_and_layout_ops_and_matmul():
    rng = np.random.default_rng(3)
    after = [helper.make_node("MaxPool", ["b"], ["p"], kernel_shape=[2, 1], strides=[2, 1]),
             helper.make_node("Transpose", ["p"], ["t"], perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", ["t", "shape"], ["f"])]
    gemm = helper.make_node("Gemm", ["f", "w", "gb"], ["y"], transB=1)
    inits = {"shape": np.array([2, -1], np.int64), "w": rng.normal(size=(5, 4 * C)), "gb": rng.normal(size=5)}
    model = _model(after, gemm, [2, C, 8, 1], [("y", [2, 5])], inits)
    matmul = _model([], helper.make_node("MatMul", ["b", "w"], ["y"]), [4, C], [("y", None)],
                    {"w": rng.normal(size=(C, 6))})
    for model, shape in ((model, (2, C, 8, 1)), (matmul, (4, C))):
        folded = fold_batchnorm_after_relu(model)
        assert "BatchNormalization" not in [node.op_type for node in folded.graph.node]
        x = np.random.default_rng(4).normal(size=shape).astype(np.float32)
        (expected,), (got,) = _run(model, x), _run(folded, x)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("case", ["two readers", "average pooling", "no relu"])
def test_what_is_not_folded_stays_as_it_was(case):
    model = _conv_model(3, 1, (1, 1), 1)
    graph = model.graph
    if case == "two readers":
        graph.node.append(helper.make_node("Identity", ["b"], ["b2"]))
        graph.output.append(helper.make_tensor_value_info("b2", TensorProto.FLOAT, None))
    elif case == "average pooling":
        graph.node[2].op_type = "AveragePool"
    elif case == "no relu":
        graph.node[0].op_type = "Sigmoid"
    assert fold_batchnorm_after_relu(model) is model


def test_every_path_decomposes_the_relu_fed_part_and_adds_the_shift_back():
    """A 2:8 activation series on the folded conv: the TVM build and the onnxruntime evaluator both keep the
    top 2 of 8 of y = maxpool(a·relu(x)) per position, then add b back — checked against numpy."""
    from tvm_tasd import build
    from tvm_tasd.evaluation.keep_top import NumpyOps, keep_top
    from tvm_tasd.evaluation.onnx import OnnxWeightFedModel

    model = _conv_model(3, 1, (1, 1), 1)
    (layer,) = find_layers(from_onnx(model).mod)
    assert layer.name == "w" and layer.relu_fed  # the import folds as the ONNX reference does
    np.testing.assert_array_equal(layer.weight, _initializer(model, "w"))
    scale = _initializer(model, "bn.scale") / np.sqrt(_initializer(model, "bn.var") + 1e-3)
    shift = _initializer(model, "bn.bias") - scale * _initializer(model, "bn.mean")
    np.testing.assert_allclose(layer.input_shift.reshape(-1), shift, rtol=1e-6)

    x = np.random.default_rng(6).normal(size=(2, C, 20, 12)).astype(np.float32)
    relu = np.maximum(x, 0) * scale[None, :, None, None].astype(np.float32)
    pooled = relu.reshape(2, C, 10, 2, 6, 2).max(axis=(3, 5))
    kept = keep_top(pooled, 2, 8, NumpyOps(np.float32), channels_first=True) + shift[None, :, None, None]
    conv = helper.make_graph([helper.make_node("Conv", ["x", "w", "cb"], ["y"], pads=[1, 1, 1, 1])], "c",
                             [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                             [numpy_helper.from_array(_initializer(model, n), n) for n in ("w", "cb")])
    expected = _run(helper.make_model(conv, opset_imports=[helper.make_opsetid("", 17)]), kept.astype(np.float32))[0]
    assert (pooled == 0).mean() > 0.03  # the ReLU's zeros survive the scale and the pooling

    evaluator = OnnxWeightFedModel(model, [{"x": x}], activation_groups={"w": 8})
    np.testing.assert_allclose(evaluator.run(keeps={"w": 2})[0][0], expected, rtol=1e-4, atol=1e-4)
    executable = build(from_onnx(model).mod, "ttc-vegeta-m8", plan={"layers": [
        {"name": "w", "weight": "dense", "activation": "2:8"}]})
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_plans_apply_to_the_folded_model_as_to_the_source():
    model = _conv_model(3, 1, (1, 1), 1)
    choice = Choice("w", "2:8", source=fingerprint(_initializer(model, "w")))
    approximated = approximate_onnx(model, plan={"layers": [choice.to_json()]})
    assert "BatchNormalization" not in [node.op_type for node in approximated.graph.node]
    np.testing.assert_array_equal(_initializer(approximated, "w"), choice.approximated(_initializer(model, "w"), 1))


def _conv_bn_model(groups=1, bias=True, channels=16):
    """x → Conv (``groups``) → BatchNormalization → Relu, as a model."""
    rng = np.random.default_rng(7)
    inits = {"w": rng.normal(size=(channels, C // groups, 3, 3)), **({"cb": rng.normal(size=channels)} if bias else {}),
             "s": rng.uniform(-2.0, 2.0, channels), "t": rng.normal(size=channels), "m": rng.normal(size=channels),
             "v": rng.uniform(0.5, 2.0, channels)}
    nodes = [helper.make_node("Conv", ["x", "w", *(["cb"] if bias else [])], ["c"], pads=[1, 1, 1, 1], group=groups),
             helper.make_node("BatchNormalization", ["c", "s", "t", "m", "v"], ["b"], epsilon=1e-5),
             helper.make_node("Relu", ["b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, C, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@settings(max_examples=10, deadline=None)
@given(groups=st.sampled_from([1, 2, C]), bias=st.booleans())
def test_a_batch_norm_after_a_conv_folds_into_its_weight_and_bias(groups, bias):
    model = _conv_bn_model(groups, bias)
    folded = fold_batchnorm_into_conv(model)
    assert [node.op_type for node in folded.graph.node] == ["Conv", "Relu"]
    assert not {"s", "t", "m", "v"} & {init.name for init in folded.graph.initializer}
    scale = _initializer(model, "s") / np.sqrt(_initializer(model, "v") + 1e-5)
    np.testing.assert_allclose(_initializer(folded, "w"), _initializer(model, "w") * scale[:, None, None, None],
                               rtol=1e-6)
    x = np.random.default_rng(8).normal(size=(2, C, 6, 6)).astype(np.float32)
    (expected,), (got,) = _run(model, x), _run(folded, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_a_per_output_channel_scale_keeps_the_magnitude_mask():
    """Groups run along input channels, so scaling each output channel moves no group's ranking: a plan's
    magnitude series on the folded weight is the series of the unfolded one, scaled."""
    model = _conv_bn_model()
    folded = fold_batchnorm_into_conv(model)
    choice = Choice("w", "2:8")
    original, scaled = _initializer(model, "w"), _initializer(folded, "w")
    np.testing.assert_array_equal(choice.approximated(original, 1) != 0, choice.approximated(scaled, 1) != 0)


@pytest.mark.parametrize("case", ["conv output read twice", "shared weight", "conv output is a model output",
                                  "channels differ"])
def test_a_batch_norm_the_conv_fold_cannot_take_stays(case):
    model = _conv_bn_model()
    graph = model.graph
    if case == "conv output read twice":
        graph.node.append(helper.make_node("Identity", ["c"], ["c2"]))
        graph.output.append(helper.make_tensor_value_info("c2", TensorProto.FLOAT, None))
    elif case == "shared weight":
        graph.node.append(helper.make_node("Identity", ["w"], ["w2"]))
        graph.output.append(helper.make_tensor_value_info("w2", TensorProto.FLOAT, None))
    elif case == "conv output is a model output":
        graph.output.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, None))
    else:
        for init in graph.initializer:
            if init.name in "stmv":
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init)[:1], init.name))
    assert fold_batchnorm_into_conv(model) is model


def test_canonical_folds_both_kinds_and_plans_name_the_folded_weight():
    """Relu → BN → Conv → BN: the second batch norm goes into the conv, the first is split around it; a plan
    searched on the loaded model carries the folded weight's fingerprint, and the ONNX reference applies it."""
    rng = np.random.default_rng(9)

    def bn(prefix):
        return {f"{prefix}.{k}": v for k, v in zip("stmv", (rng.uniform(0.5, 2, C), rng.normal(size=C),
                                                            rng.normal(size=C), rng.uniform(0.5, 2, C)))}
    first, second = bn("a"), bn("b")
    inits = {**first, **second, "w": rng.normal(size=(C, C, 3, 3))}
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("BatchNormalization", ["r", *first], ["n"]),
             helper.make_node("Conv", ["n", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", *second], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, C, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    loaded = canonical(model)
    assert [node.op_type for node in loaded.graph.node] == ["Relu", "Mul", "Add", "Conv"]
    x = np.random.default_rng(10).normal(size=(2, C, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(_run(loaded, x)[0], _run(model, x)[0], rtol=1e-5, atol=1e-5)
    (layer,) = find_layers(from_onnx(model).mod)
    assert layer.relu_fed and fingerprint(layer.weight) == fingerprint(_initializer(loaded, "w"))
    choice = Choice("w", "2:8", source=fingerprint(layer.weight))
    approximated = approximate_onnx(model, plan={"layers": [choice.to_json()]})
    np.testing.assert_array_equal(_initializer(approximated, "w"), choice.approximated(layer.weight, 1))

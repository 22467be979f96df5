"""A layer's bias add and activation function run in its kernel's output stage: which ops are absorbed, which are
not, and that the compiled model still computes what onnxruntime computes."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from tvm_tasd import build
from tvm_tasd.epilogue import find_epilogues
from tvm_tasd.frontend import from_onnx
from tvm_tasd.matcher import LayerMatcher

X_SHAPE = [2, 16, 9, 10]
O = 24  # output channels


def _activation_nodes(kind: str, y: str) -> list:
    """Nodes computing ``out`` from ``y``."""
    if kind == "none":
        return [helper.make_node("Identity", [y], ["out"])]
    if kind == "relu":
        return [helper.make_node("Relu", [y], ["out"])]
    if kind == "relu6":
        return [helper.make_node("Clip", [y, "zero", "six"], ["out"])]
    if kind == "hardswish":  # ONNX HardSwish: imported as y · (clip(y + 3, 0, 6) / 6)
        return [helper.make_node("HardSwish", [y], ["out"])]
    assert kind == "hardswish_paddle"  # as PaddlePaddle exports it: (y · clip(y + 3, 0, 6)) / 6
    return [helper.make_node("Add", [y, "three"], ["s"]), helper.make_node("Clip", ["s", "zero", "six"], ["c"]),
            helper.make_node("Mul", [y, "c"], ["m"]), helper.make_node("Div", ["m", "six"], ["out"])]


def _model(kind: str, layer: str = "conv", bias: bool = True, extra_output: bool = False,
           pool: int = 0) -> onnx.ModelProto:
    """The layer, its bias and ``kind`` of activation; ``pool``: then a max pooling of that window, stride 2."""
    rng = np.random.default_rng(len(kind))
    if layer == "conv":
        x_shape, out_shape = X_SHAPE, [2, O, 9, 10]
        inits = {"w": rng.normal(size=(O, 16, 3, 3)) / 4, "b": rng.normal(size=O) * 3}
        node = helper.make_node("Conv", ["x", "w", *(["b"] if bias else [])], ["y"], kernel_shape=[3, 3],
                                pads=[1, 1, 1, 1])
        nodes = [node]
    else:  # a Linear on a 3-D activation: MatMul then Add
        x_shape, out_shape = [2, 5, 48], [2, 5, O]
        inits = {"w": rng.normal(size=(48, O)) / 4, "b": rng.normal(size=O) * 3}
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y" if not bias else "mm"])]
        if bias:
            nodes.append(helper.make_node("Add", ["mm", "b"], ["y"]))
    nodes += _activation_nodes(kind, "y")
    if pool:
        nodes[-1].output[0] = "activated"
        nodes.append(helper.make_node("MaxPool", ["activated"], ["out"], kernel_shape=[pool, pool], strides=[2, 2]))
        out_shape = [*out_shape[:2], *((d - pool) // 2 + 1 for d in out_shape[2:])]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)]
    if extra_output:  # the biased output is read twice: by the activation and as an output
        outputs.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape))
    inits.update(zero=np.float32(0), three=np.float32(3), six=np.float32(6))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)], outputs,
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _epilogues(model):
    mod = from_onnx(model).mod
    matcher = LayerMatcher(mod)
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            matcher.remember(binding.var, binding.value)
    return list(find_epilogues(mod["main"], matcher).values())


def _compiled_vs_onnxruntime(model, config: str):
    x = np.random.default_rng(7).normal(size=[d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim])
    x = x.astype(np.float32)
    ex = build(from_onnx(model).mod, "cpu-emulated", config=config, nm_kernels="always")
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x))
    outs = [out.numpy()] if isinstance(out, tvm.runtime.Tensor) else [o.numpy() for o in out]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return ex, outs, session.run(None, {"x": x})


ABSORBED = {"none": None, "relu": "relu", "relu6": "relu6", "hardswish": "hardswish", "hardswish_paddle": "hardswish"}


@pytest.mark.parametrize("layer", ["conv", "matmul"])
@pytest.mark.parametrize("kind", sorted(ABSORBED))
def test_bias_and_activation_are_found(kind, layer):
    (epilogue,) = _epilogues(_model(kind, layer))
    assert epilogue.activation == ABSORBED[kind]
    assert epilogue.bias is not None and epilogue.bias.shape == (O,)


def test_an_activation_without_a_bias_is_found():
    (epilogue,) = _epilogues(_model("relu6", bias=False))
    assert epilogue.bias is None and epilogue.activation == "relu6"


def test_a_2x2_max_pooling_after_the_chain_is_found():
    """Found for kernels that can take it (the blocked convs); a 3 × 3 pooling is not. The conv here writes an odd
    9 × 10 plane, so its blocked kernel keeps the pooling an op of its own: still what onnxruntime computes."""
    (epilogue,) = _epilogues(_model("relu", pool=2))
    assert epilogue.activation == "relu" and epilogue.pooled is not None
    (epilogue,) = _epilogues(_model("relu", pool=3))
    assert epilogue.activation == "relu" and epilogue.pooled is None
    _, (out,), (reference,) = _compiled_vs_onnxruntime(_model("relu", pool=2), "dense")
    np.testing.assert_allclose(out, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


def test_a_value_read_twice_ends_the_chain():
    """The conv's output (with its bias) is also a model output: the bias is absorbed, the ReLU is not."""
    (epilogue,) = _epilogues(_model("relu", extra_output=True))
    assert epilogue.bias is not None and epilogue.activation is None


def test_a_bias_along_another_axis_is_not_absorbed():
    model = _model("none")
    b = next(i for i in model.graph.initializer if i.name == "b")
    b.CopyFrom(numpy_helper.from_array(np.ones((1, 1, 1, 10), np.float32), "b"))  # one value per column
    model.graph.node[0].input.pop()  # the conv without its bias …
    model.graph.node.insert(1, helper.make_node("Add", ["y0", "b"], ["y"]))  # … then the odd add
    model.graph.node[0].output[0] = "y0"
    assert _epilogues(model) == []


@pytest.mark.parametrize("config", ["dense", "2:8"])
@pytest.mark.parametrize("layer, kind", [("conv", "hardswish_paddle"), ("conv", "relu6"), ("matmul", "hardswish"),
                                         ("matmul", "relu")])
def test_fused_kernels_compute_what_onnxruntime_does(layer, kind, config):
    model = _model(kind, layer)
    if config != "dense":  # the same approximated weight on both sides
        from tvm_tasd import approximate

        w = next(i for i in model.graph.initializer if i.name == "w")
        value = numpy_helper.to_array(w)
        w.CopyFrom(numpy_helper.from_array(approximate(value, config, axis=1 if layer == "conv" else 0), "w"))
    ex, (out,), (ref,) = _compiled_vs_onnxruntime(model, config)
    kernels = [gv.name_hint for gv in ex.module.get_global_vars() if gv.name_hint.startswith("tasd_")]
    assert len(kernels) == 1 and kernels[0].endswith(f"_bias_{ABSORBED[kind]}"), kernels
    calls = [str(b.value.op) for block in ex.module["main"].body.blocks for b in block.bindings
             if isinstance(b.value, relax.Call)]
    assert not any(op in ("relax.add", "relax.nn.relu", "relax.clip", "relax.multiply") for op in calls), calls
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_a_value_read_twice_still_reaches_both_readers():
    _, outs, refs = _compiled_vs_onnxruntime(_model("relu", extra_output=True), "dense")
    for out, ref in zip(outs, refs):
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)

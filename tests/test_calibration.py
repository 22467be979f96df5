"""Calibration statistics against plain numpy re-computations of the digits models."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tvm_tasd.evaluation import calibrate
from tvm_tasd.evaluation.onnx import OnnxWeightFedModel
from tvm_tasd.frontend import from_onnx
from tvm_tasd.models.digits import load_data, model_path


@pytest.fixture(scope="module")
def x():
    return load_data().test_x[:200]


def batches_of(x, size=50):
    return [{"input": x[i : i + size]} for i in range(0, len(x), size)]


def params(name):
    return {init.name: numpy_helper.to_array(init) for init in onnx.load(model_path(name)).graph.initializer}


def norms_of(activation, axis):
    pooled = tuple(a for a in range(activation.ndim) if a != axis)
    return np.sqrt(np.square(activation.astype(np.float64)).sum(axis=pooled))


def relu(v):
    return np.maximum(v, 0)


def conv3x3(images, weight, bias):
    """Stride-1 'same' 3×3 convolution, NCHW/OIHW, by explicit windows."""
    size = images.shape[-1]
    padded = np.pad(images, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.stack([padded[:, :, i : i + size, j : j + size] for i in range(3) for j in range(3)], axis=2)
    return np.einsum("bckhw,ock->bohw", windows, weight.reshape(*weight.shape[:2], 9)) + bias[:, None, None]


def test_mlp_norms_and_density_match_numpy(x):
    p = params("digits-mlp")
    h1 = relu(x @ p["fc1.weight"] + p["fc1.bias"])
    h2 = relu(h1 @ p["fc2.weight"] + p["fc2.bias"])
    stats = calibrate(model_path("digits-mlp"), batches_of(x))
    assert stats.batches == 4
    for name, activation in (("fc1.weight", x), ("fc2.weight", h1), ("fc3.weight", h2)):
        np.testing.assert_allclose(stats.norms[name], norms_of(activation, 1), rtol=1e-5)
        assert stats.nonzero_density[name] == pytest.approx(np.count_nonzero(activation) / activation.size)
    assert stats.relu_fed == {"fc2.weight", "fc3.weight"}
    assert stats.hessians == {}  # asked for only: they cost K² floats per layer


def patches3x3(a):
    """im2col of a 3×3, padding-1 convolution's input, columns ordered (kh, kw, channel)."""
    _, c, h, w = a.shape
    padded = np.pad(a, ((0, 0), (0, 0), (1, 1), (1, 1)))
    taps = np.stack([padded[:, :, i : i + h, j : j + w] for i in range(3) for j in range(3)], axis=-1)
    return taps.transpose(0, 2, 3, 4, 1).reshape(-1, 9 * c).astype(np.float64)


@pytest.mark.parametrize("evaluator", ["onnx", "relax"])
def test_hessians_are_the_gram_matrices_of_the_layer_inputs(x, evaluator):
    p = params("digits-cnn")
    images = x.reshape(-1, 1, 8, 8)
    a1 = relu(conv3x3(images, p["conv1.weight"], p["conv1.bias"]))
    a2 = relu(conv3x3(a1, p["conv2.weight"], p["conv2.bias"]))
    flat = a2.reshape(-1, 32, 4, 2, 4, 2).max(axis=(3, 5)).reshape(len(x), -1).astype(np.float64)
    model = model_path("digits-cnn")
    if evaluator == "relax":
        model = from_onnx(model, {"input": [50, 64]}).mod
    stats = calibrate(model, batches_of(x), progress=False, hessians=True)
    assert set(stats.hessians) == {"conv1.weight", "conv2.weight", "fc.weight"}
    np.testing.assert_allclose(stats.hessians["fc.weight"], flat.T @ flat, rtol=1e-5, atol=1e-6)
    rows = patches3x3(a1)  # a conv's Hessian is its im2col patches' Gram, input channels contiguous
    np.testing.assert_allclose(stats.hessians["conv2.weight"], rows.T @ rows, rtol=1e-5, atol=1e-4)
    # in that column order the patches times the weight (O, kh, kw, C) are the convolution
    weight_rows = p["conv2.weight"].transpose(0, 2, 3, 1).reshape(32, -1)
    out = (rows @ weight_rows.T).reshape(len(x), 8, 8, 32).transpose(0, 3, 1, 2) + p["conv2.bias"][:, None, None]
    np.testing.assert_allclose(relu(out), a2, rtol=1e-4, atol=1e-4)


def test_cnn_norms_pool_batch_and_space(x):
    p = params("digits-cnn")
    images = x.reshape(-1, 1, 8, 8)
    a1 = relu(conv3x3(images, p["conv1.weight"], p["conv1.bias"]))
    a2 = relu(conv3x3(a1, p["conv2.weight"], p["conv2.bias"]))
    flat = a2.reshape(-1, 32, 4, 2, 4, 2).max(axis=(3, 5)).reshape(len(x), -1)
    norms = calibrate(model_path("digits-cnn"), batches_of(x, 64), progress=False).norms
    shapes = {name: v.shape for name, v in norms.items()}
    assert shapes == {"conv1.weight": (1,), "conv2.weight": (16,), "fc.weight": (512,)}
    np.testing.assert_allclose(norms["conv1.weight"], norms_of(images, 1), rtol=1e-5)
    np.testing.assert_allclose(norms["conv2.weight"], norms_of(a1, 1), rtol=1e-5)
    np.testing.assert_allclose(norms["fc.weight"], norms_of(flat, 1), rtol=1e-5)


def test_relu_fed_layers(x):
    assert OnnxWeightFedModel(model_path("digits-mlp"), batches_of(x)).relu_fed == {"fc2.weight", "fc3.weight"}
    # fc reads relu(conv2) through MaxPool and Flatten, which keep its zeros.
    cnn = OnnxWeightFedModel(onnx.load(model_path("digits-cnn")), batches_of(x))
    assert cnn.relu_fed == {"conv2.weight", "fc.weight"}


def edge_case_model():
    """Gemm with transA, a weight shared by two MatMuls, and MatMuls whose activation is constant."""
    rng = np.random.default_rng(0)
    inits = {
        "gemm.weight": rng.standard_normal((3, 4)).astype(np.float32),  # activation (3, M), transA=1
        "shared.weight": rng.standard_normal((4, 2)).astype(np.float32),
        "const.act": rng.standard_normal((5, 4)).astype(np.float32),
        "const.weight": rng.standard_normal((4, 2)).astype(np.float32),
        "derived.weight": rng.standard_normal((5, 2)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Gemm", ["x", "gemm.weight"], ["g"], transA=1),
        helper.make_node("MatMul", ["g", "shared.weight"], ["s1"]),
        helper.make_node("MatMul", ["y", "shared.weight"], ["s2"]),
        helper.make_node("MatMul", ["const.act", "const.weight"], ["c"]),
        helper.make_node("Transpose", ["const.act"], ["const.t"]),
        helper.make_node("MatMul", ["const.t", "derived.weight"], ["d"]),
    ]
    graph = helper.make_graph(
        nodes,
        "edge",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 6]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4]),
        ],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None) for out in ("s1", "s2", "c", "d")],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), inits


def test_transposed_shared_and_constant_activations():
    model, inits = edge_case_model()
    rng = np.random.default_rng(1)
    feeds = [
        {"x": rng.standard_normal((3, 6)).astype(np.float32), "y": rng.standard_normal((2, 4)).astype(np.float32)}
        for _ in range(5)
    ]
    stats = calibrate(model, feeds)  # five batches: the progress bar path runs too
    assert set(stats.norms) == {"gemm.weight", "shared.weight"}  # constant activations have no statistics
    x = np.concatenate([f["x"] for f in feeds], 1)
    np.testing.assert_allclose(stats.norms["gemm.weight"], norms_of(x, 0), rtol=1e-5)
    g = np.concatenate([f["x"].T @ inits["gemm.weight"] for f in feeds])
    y = np.concatenate([f["y"] for f in feeds])
    np.testing.assert_allclose(stats.norms["shared.weight"], norms_of(np.concatenate([g, y]), 1), rtol=1e-5)
    assert stats.nonzero_density["shared.weight"] == 1.0


def test_bad_calibration_sets(x):
    with pytest.raises(ValueError, match="calibration set is empty"):
        calibrate(model_path("digits-mlp"), [])
    with pytest.raises(ValueError, match=r"lacks model input\(s\) \['input'\]"):
        calibrate(model_path("digits-mlp"), [{"input": x}, {"pixels": x}])
    with pytest.raises(ValueError, match="not model inputs"):
        calibrate(model_path("digits-mlp"), [{"input": x, "extra": x}])


@pytest.mark.parametrize("low, high, fed", [(0.0, 6.0, True), (0.0, None, True), (-1.0, 6.0, False), (None, 6.0, False)])
def test_relu6_written_as_clip_counts_as_relu_fed(tmp_path, low, high, fed):
    # MobileNet/EfficientNet-Lite export ReLU6 as Clip(x, 0, 6); a lower bound of 0 makes the zeros
    from onnx import TensorProto, helper, numpy_helper

    from tvm_tasd.frontend import from_onnx
    from tvm_tasd.matcher import find_layers

    bounds = [numpy_helper.from_array(np.array(v, "float32"), name) for v, name in ((low, "lo"), (high, "hi"))
              if v is not None]
    clip_inputs = ["x", "lo" if low is not None else "", "hi" if high is not None else ""]
    nodes = [helper.make_node("Clip", clip_inputs, ["c"]), helper.make_node("Reshape", ["c", "shape"], ["r"]),
             helper.make_node("MatMul", ["r", "W"], ["y"])]
    weight = numpy_helper.from_array(np.ones((16, 8), "float32"), "W")
    shape = numpy_helper.from_array(np.array([4, 16], "int64"), "shape")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], [weight, shape, *bounds])
    path = tmp_path / "clip.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    (layer,) = find_layers(from_onnx(path).mod)
    assert layer.relu_fed is fed


@pytest.mark.parametrize("activation, smooth", [("gelu", True), ("swish", True), ("relu", False), ("none", False)])
def test_gelu_and_swish_fed_layers_take_pseudo_density_series(tmp_path, activation, smooth):
    from tvm_tasd.matcher import find_layers

    nodes = {
        "gelu": [helper.make_node("Gelu", ["x"], ["a"])],
        "swish": [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["a"])],
        "relu": [helper.make_node("Relu", ["x"], ["a"])],
        "none": [helper.make_node("Neg", ["x"], ["a"])],
    }[activation]
    nodes += [helper.make_node("Reshape", ["a", "shape"], ["r"]), helper.make_node("MatMul", ["r", "W"], ["y"])]
    inits = [numpy_helper.from_array(np.ones((16, 8), "float32"), "W"),
             numpy_helper.from_array(np.array([4, 16], "int64"), "shape")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], inits)
    path = tmp_path / f"{activation}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), path)
    (layer,) = find_layers(from_onnx(path).mod)
    assert (layer.smooth_fed, layer.relu_fed) == (smooth, activation == "relu")
    assert layer.activation_fed is (activation != "none")
    groups = OnnxWeightFedModel(path, [{"x": np.ones((2, 2, 16), np.float32)}], activation_fed_groups=8).activation_groups
    assert groups == ({"W": 8} if activation != "none" else {})


_BATCH, _TOKENS, _WIDTH = 3, 6, 8


def _token_model(tmp_path, evaluator, weights, with_mask=True):
    """x (batch, tokens, width) → MatMul W1 → Relu → reshape to (batch·tokens, width) → MatMul W2, the output
    masked by ``attention_mask`` when the model takes one."""
    w1, w2 = weights
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Reshape", ["r", "flat"], ["rows"]), helper.make_node("MatMul", ["rows", "W2"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [_BATCH, _TOKENS, _WIDTH])]
    inits = [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2"),
             numpy_helper.from_array(np.array([-1, _WIDTH], np.int64), "flat")]
    output = "y"
    if with_mask:
        nodes += [helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
                  helper.make_node("Reshape", ["m", "column"], ["mc"]), helper.make_node("Mul", ["y", "mc"], ["out"])]
        inputs.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [_BATCH, _TOKENS]))
        inits.append(numpy_helper.from_array(np.array([-1, 1], np.int64), "column"))
        output = "out"
    graph = helper.make_graph(nodes, "tokens", inputs,
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, [_BATCH * _TOKENS, 4])], inits)
    path = tmp_path / f"tokens_{with_mask}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path if evaluator == "onnx" else from_onnx(path).mod


def _token_weights(rng):
    return rng.standard_normal((_WIDTH, _WIDTH)).astype(np.float32), rng.standard_normal((_WIDTH, 4)).astype(np.float32)


def _layer_inputs(x, weights) -> dict:
    """The rows each layer of :func:`_token_model` multiplies, for input rows ``x``."""
    x = x.astype(np.float64)
    return {"W1": x, "W2": np.maximum(x @ weights[0], 0)}


def _assert_statistics_of(stats, rows_by_layer):
    """Every statistic of every layer is that of exactly these input rows (the sample: the first rows)."""
    from tvm_tasd.evaluation.calibration import SAMPLE_ROWS

    for name, rows in rows_by_layer.items():
        np.testing.assert_allclose(stats.hessians[name], rows.T @ rows, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(stats.norms[name], np.linalg.norm(rows, axis=0), rtol=1e-5)
        assert stats.nonzero_density[name] == pytest.approx(np.count_nonzero(rows) / rows.size, abs=1e-6)
        np.testing.assert_allclose(stats.samples[name], rows[:SAMPLE_ROWS], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("evaluator", ["onnx", "relax"])
def test_padded_token_rows_count_in_no_statistic(tmp_path, evaluator):
    """A model with an ``attention_mask`` input: norms, nonzero density, row sample and Hessian of its
    layers come from the real tokens only (a reshaped 2-D input included); without the input, from all."""
    rng = np.random.default_rng(3)
    weights = _token_weights(rng)
    feeds = []
    for _ in range(2):
        lengths = rng.integers(1, _TOKENS + 1, _BATCH)
        feeds.append({"x": rng.standard_normal((_BATCH, _TOKENS, _WIDTH)).astype(np.float32),
                      "attention_mask": (np.arange(_TOKENS) < lengths[:, None]).astype(np.int64)})

    def rows_by_layer(real_only):
        keep = [f["attention_mask"].reshape(-1) != 0 if real_only else slice(None) for f in feeds]
        return _layer_inputs(np.concatenate([f["x"].reshape(-1, _WIDTH)[k] for f, k in zip(feeds, keep)]), weights)

    _assert_statistics_of(calibrate(_token_model(tmp_path, evaluator, weights), feeds, progress=False, hessians=True),
                          rows_by_layer(real_only=True))
    unmasked = [{"x": f["x"]} for f in feeds]  # the same tokens, no mask input: every row counts
    plain = _token_model(tmp_path, evaluator, weights, with_mask=False)
    _assert_statistics_of(calibrate(plain, unmasked, progress=False, hessians=True), rows_by_layer(real_only=False))


def test_a_mask_that_is_not_one_zero_is_not_trusted(tmp_path):
    """An additive mask (0 at real tokens, a large negative at padding) would select the padding if read as
    1/0: calibration warns and counts every row."""
    from tvm_tasd.policy import TASDWarning

    rng = np.random.default_rng(4)
    weights = _token_weights(rng)
    x = rng.standard_normal((_BATCH, _TOKENS, _WIDTH)).astype(np.float32)
    additive = np.where(np.arange(_TOKENS) < np.array([[2], [4], [6]]), 0, -10000).astype(np.int64)
    with pytest.warns(TASDWarning, match="values other than 1"):
        stats = calibrate(_token_model(tmp_path, "onnx", weights), [{"x": x, "attention_mask": additive}],
                          progress=False, hessians=True)
    _assert_statistics_of(stats, _layer_inputs(x.reshape(-1, _WIDTH), weights))

"""OnnxWeightFedModel: one session, weights fed per run, equal to onnxruntime on the rewritten model."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from tvm_tasd.decompose import approximate
from tvm_tasd.evaluation.onnx import OnnxWeightFedModel
from tvm_tasd.models.digits import load_data, model_path
from tvm_tasd.plan import Plan
from tvm_tasd.policy import Choice
from tvm_tasd.reference import approximate_onnx, weight_axes

MODELS = ["digits-mlp", "digits-cnn"]


@pytest.fixture(scope="module")
def batches():
    x = load_data().test_x
    return [{"input": x[:50]}, {"input": x[50:120]}]


@pytest.fixture(scope="module", params=MODELS)
def fed(request, batches):
    return onnx.load(model_path(request.param)), OnnxWeightFedModel(model_path(request.param), batches)


def ort_outputs(model: onnx.ModelProto, batches):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [session.run(None, batch) for batch in batches]


def assert_close(actual, expected):
    """Equal up to float32 rounding: kernels differ once weights are inputs instead of constants."""
    assert len(actual) == len(expected)
    for got_batch, want_batch in zip(actual, expected):
        for got, want in zip(got_batch, want_batch):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_layers_are_the_weight_initializers(fed):
    proto, model = fed
    axes = weight_axes(proto)
    assert model.layer_names == list(axes)
    inits = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    for name in model.layer_names:
        assert model.axis(name) == axes[name]
        np.testing.assert_array_equal(model.original(name), inits[name])
        assert not model.original(name).flags.writeable


def test_run_without_replacement_equals_the_original_model(fed, batches):
    proto, model = fed
    assert_close(model.run(), ort_outputs(proto, batches))


def test_replaced_weights_equal_approximate_onnx(fed, batches):
    proto, model = fed
    # conv1 (one input channel) is left dense by approximate_onnx, so replace only groupable layers.
    names = [n for n in model.layer_names if model.original(n).shape[model.axis(n)] >= 8]
    rng = np.random.default_rng(0)
    scales = {n: rng.uniform(0.1, 2.0, model.original(n).shape[model.axis(n)]) for n in names}
    plan = Plan([Choice(n, "2:8+1:8", method="activation", s=scales[n]) for n in names])
    weights = {
        n: approximate(model.original(n), "2:8+1:8", axis=model.axis(n), score=np.float32(scales[n]), name=n)
        for n in names
    }
    before = model.evaluations
    out = model.run(weights)
    assert_close(out, ort_outputs(approximate_onnx(proto, plan=plan), batches))
    assert np.abs(out[0][0] - model.run()[0][0]).max() > 1e-3  # the replacement really changed the outputs
    assert model.evaluations == before + 2


def test_single_layer_replacement_matches_a_magnitude_plan(fed, batches):
    proto, model = fed
    name = model.layer_names[-1]
    weights = {name: approximate(model.original(name), "1:4", axis=model.axis(name))}
    assert_close(model.run(weights), ort_outputs(approximate_onnx(proto, plan={name: "1:4"}), batches))


def test_bad_replacements_are_rejected(fed):
    _, model = fed
    name = model.layer_names[0]
    with pytest.raises(ValueError, match="not a replaceable layer weight"):
        model.run({"nope": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="shape"):
        model.run({name: np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="not a replaceable layer weight"):
        model.axis("nope")


def test_calibration_feeds_are_checked():
    with pytest.raises(ValueError, match="calibration set is empty"):
        OnnxWeightFedModel(model_path("digits-mlp"), [])
    with pytest.raises(ValueError, match="'input'"):
        OnnxWeightFedModel(model_path("digits-mlp"), [{"pixels": np.zeros((2, 64), np.float32)}])

"""The Relax evaluation path computes what onnxruntime computes on the same model."""

import numpy as np
import pytest

from tvm_tasd.evaluation import calibrate
from tvm_tasd.evaluation.onnx import OnnxWeightFedModel
from tvm_tasd.evaluation.relax import RelaxWeightFedModel
from tvm_tasd.frontend import from_onnx
from tvm_tasd.models.digits import load_data, model_path


@pytest.fixture(scope="module")
def feeds():
    x = load_data().test_x[:256]
    return [{"input": x[:128]}, {"input": x[128:]}]


def _imported(name, feeds, params_as_inputs=False):
    return from_onnx(model_path(name), {"input": list(feeds[0]["input"].shape)}, keep_params_in_input=params_as_inputs)


@pytest.mark.parametrize("name", ["digits-mlp", "digits-cnn"])
@pytest.mark.parametrize("params_as_inputs", [False, True])
def test_fed_weights_match_onnxruntime(name, params_as_inputs, feeds):
    imported = _imported(name, feeds, params_as_inputs)
    relax_model = RelaxWeightFedModel(imported.mod, feeds, params=imported.params if params_as_inputs else None)
    ort_model = OnnxWeightFedModel(model_path(name), feeds)
    assert relax_model.layer_names == ort_model.layer_names
    rng = np.random.default_rng(0)
    weights = {n: ort_model.original(n) * rng.uniform(0.5, 1.5, ort_model.original(n).shape).astype(np.float32)
               for n in ort_model.layer_names[:2]}
    for fed in (None, weights):
        ours, reference = relax_model.run(fed), ort_model.run(fed)
        assert len(ours) == len(reference) == len(feeds)
        for got, want in zip(ours, reference):
            np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-4)
    assert not np.allclose(relax_model.run(weights)[0][0], relax_model.run()[0][0]), "fed weights must change the output"


@pytest.mark.parametrize("keep", [1, 2, 5])
def test_activation_keep_counts_match_onnxruntime(keep, feeds):
    imported = _imported("digits-mlp", feeds)
    relax_model = RelaxWeightFedModel(imported.mod, feeds, activation_groups={"fc2.weight": 8})
    ort_model = OnnxWeightFedModel(model_path("digits-mlp"), feeds, activation_groups={"fc2.weight": 8})
    got = relax_model.run(keeps={"fc2.weight": keep})[1][0]
    np.testing.assert_allclose(got, ort_model.run(keeps={"fc2.weight": keep})[1][0], rtol=1e-4, atol=1e-4)
    assert not np.allclose(got, relax_model.run()[1][0])


@pytest.mark.parametrize("keep", [1, 3])
def test_conv_activation_keep_counts_match_onnxruntime(keep, feeds):
    groups = {"conv2.weight": 8}  # 16 input channels: two groups at every position
    relax_model = RelaxWeightFedModel(_imported("digits-cnn", feeds).mod, feeds, activation_groups=groups)
    ort_model = OnnxWeightFedModel(model_path("digits-cnn"), feeds, activation_groups=groups)
    got = relax_model.run(keeps={"conv2.weight": keep})[0][0]
    np.testing.assert_allclose(got, ort_model.run(keeps={"conv2.weight": keep})[0][0], rtol=1e-4, atol=1e-4)
    assert not np.allclose(got, relax_model.run()[0][0])


@pytest.mark.parametrize("name", ["digits-mlp", "digits-cnn"])
def test_calibration_statistics_match_the_onnx_path(name, feeds):
    ours = calibrate(_imported(name, feeds).mod, feeds, progress=False, hessians=True)
    reference = calibrate(model_path(name), feeds, progress=False, hessians=True)
    assert set(ours.norms) == set(reference.norms)
    assert set(ours.hessians) == set(reference.hessians) and ours.hessians
    for layer, hessian in reference.hessians.items():
        np.testing.assert_allclose(ours.hessians[layer], hessian, rtol=1e-5, atol=1e-5)
    for layer, norm in reference.norms.items():
        np.testing.assert_allclose(ours.norms[layer], norm, rtol=1e-5)
        assert ours.nonzero_density[layer] == pytest.approx(reference.nonzero_density[layer])
    assert ours.relu_fed == reference.relu_fed and ours.batches == reference.batches == len(feeds)


def test_bad_feeds_and_names_are_reported(feeds):
    imported = _imported("digits-mlp", feeds)
    with pytest.raises(ValueError, match="data inputs are \\['input'\\]"):
        RelaxWeightFedModel(imported.mod, [{"images": feeds[0]["input"]}])
    model = RelaxWeightFedModel(imported.mod, feeds)
    with pytest.raises(ValueError, match="not a replaceable layer weight"):
        model.run({"fc9.weight": np.zeros(3)})
    with pytest.raises(ValueError, match="has shape"):
        model.run({"fc1.weight": np.zeros(3)})
    with pytest.raises(ValueError, match="activation series need eligible matmul or ungrouped conv layers"):
        RelaxWeightFedModel(imported.mod, feeds, activation_groups={"nope": 8})

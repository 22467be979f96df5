"""EfficientNet-Lite0 (ReLU6, depthwise + pointwise convs): export, layers, TVM = onnxruntime with activation series.

The exported graph must compute what the PyTorch network computes and still
name the photographs whose ImageNet class is unambiguous; TVM must find its
layers — the 1×1 projection convs ReLU6-fed, the depthwise convs left dense —
and a TASD build with weight *and* run-time activation series must match
onnxruntime running the same approximated weights and the same keep-top
decomposition (held to ``tvm_tasd.approximate`` in ``test_keep_top``).
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from tvm import relax

from tvm_tasd import build
from tvm_tasd.benchmarks.models import efficientnet
from tvm_tasd.evaluation.onnx import OnnxWeightFedModel
from tvm_tasd.frontend import from_onnx
from tvm_tasd.matcher import find_layers
from tvm_tasd.reference import approximate_onnx

# No skip when the packages are missing: `make setup` installs them, so a missing one is an install bug.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pictures():
    return np.concatenate([efficientnet.center(name) for name in efficientnet.KNOWN_LABELS])


def test_export_matches_torch_and_names_the_unambiguous_photographs(pictures):
    import torch

    path = efficientnet.onnx_path(len(pictures))
    logits = ort.InferenceSession(str(path)).run(None, {"images": pictures})[0]
    with torch.no_grad():
        reference = efficientnet.network()(torch.from_numpy(pictures)).numpy()
    np.testing.assert_allclose(logits, reference, rtol=0, atol=1e-4 * np.abs(reference).max())
    for (name, classes), top in zip(efficientnet.KNOWN_LABELS.items(), logits.argmax(1)):
        assert top in classes, f"{name}: class {top}, expected one of {sorted(classes)}"
    assert efficientnet.top1_agreement(logits, reference) == 1.0
    assert efficientnet.top5_overlap(logits, reference) == 1.0


def test_crops_of_each_split_come_from_its_own_images():
    used = [set(names) for names in efficientnet.SPLITS.values()]
    assert not (used[0] & used[1] or used[0] & used[2] or used[1] & used[2])
    crops = efficientnet.crops("validation", 3, seed=7)
    assert crops.shape == (3, 3, 224, 224) and crops.dtype == np.float32
    np.testing.assert_array_equal(crops, efficientnet.crops("validation", 3, seed=7))
    assert -1.0 <= crops.min() and crops.max() <= 1.0


def test_tasd_build_with_activation_series_matches_onnxruntime(pictures):
    x = pictures[:1]
    path = efficientnet.onnx_path(1)
    mod = from_onnx(str(path), {"images": list(x.shape)}).mod
    layers = find_layers(mod)
    assert len(layers) == 50
    depthwise = [layer.name for layer in layers if layer.ineligible]
    assert len(depthwise) == 16 and all("_depthwise_conv" in name for name in depthwise)
    relu6_fed = {layer.name for layer in layers if layer.relu_fed and not layer.ineligible}
    assert relu6_fed == {f"_blocks.{i}._project_conv.weight" for i in range(16)}
    assert {layer.name for layer in layers if layer.relu_fed and layer.ineligible} == set(depthwise)

    plan = {"layers": [{"name": name, "weight": "dense", "activation": "2:8"} for name in sorted(relu6_fed)]
            + [{"name": "_conv_head.weight", "weight": "4:8"}]}
    ex = build(mod, "ttc-vegeta-m8", plan=plan)
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    reference = OnnxWeightFedModel(approximate_onnx(onnx.load(path), plan=plan), [{"images": x}],
                                   activation_groups=dict.fromkeys(relu6_fed, 8))
    expected = reference.run(keeps=dict.fromkeys(relu6_fed, 2))[0][0]
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
    assert not np.allclose(expected, reference.run()[0][0], atol=1e-3)  # the activation series changed something

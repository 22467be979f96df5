"""PP-OCR models shipped in PyPI rapidocr-onnxruntime: import, layers, TVM = onnxruntime.

The static graph made by ``ppocr.onnx_path`` must compute what the shipped
(dynamic) graph computes and TVM must import it and find its conv/matmul
layers under their Paddle names; for the recognizer, the dense build for the
emulated target must match onnxruntime within 1e-4 and still read the
rendered text.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from tvm import relax

from tvm_tasd import build
from tvm_tasd.frontend import from_onnx
from tvm_tasd.matcher import find_layers
from tvm_tasd.benchmarks.models import ppocr

# No skip when rapidocr-onnxruntime or Pillow is missing: `make setup` installs
# both, so a missing one is an install bug this test must report.
pytestmark = pytest.mark.slow

BATCH = 4


def static_and_imported(kind, images):
    """The static graph's onnxruntime output (checked against the shipped graph) and its TVM import."""
    proto = onnx.load(ppocr.onnx_path(kind, BATCH))
    assert not any(node.op_type in ("Shape", "Constant") for node in proto.graph.node)
    original = ort.InferenceSession(str(ppocr.model_file(kind))).run(None, {"x": images})[0]
    static = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": images})[0]
    np.testing.assert_allclose(static, original, atol=1e-4, rtol=0)
    return static, from_onnx(proto, {"x": list(images.shape)})


def test_rec_imports_matches_onnxruntime_and_reads_text():
    images, labels = ppocr.text_lines(BATCH, seed=5)
    static, imported = static_and_imported("rec", images)
    layers = find_layers(imported.mod)
    ex = build(imported.mod, "cpu-emulated", config="dense")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(images)).numpy()
    np.testing.assert_allclose(out, static, atol=1e-4, rtol=0)
    assert out.shape == (BATCH, 40, 6625)
    names = {layer.name: layer for layer in layers}
    assert len(layers) == 47
    assert {"conv2d_10.w_0", "linear_77.w_0", "linear_85.w_0"} <= set(names)
    assert (names["linear_85.w_0"].k, names["linear_85.w_0"].n) == (120, 6625)  # the CTC head
    assert sum(layer.ineligible is not None for layer in layers) == 14  # depthwise convs
    texts = ppocr.ctc_decode(out)
    assert ppocr.line_accuracy(texts, labels) >= 0.75, list(zip(texts, labels))


def test_cls_imports_and_orients():
    # The TVM build is left to the rec test (each build costs ~20 s here);
    # the cls build matched onnxruntime to 2e-6 when checked by hand.
    images, labels = ppocr.orientation_lines(BATCH, seed=5)
    out, imported = static_and_imported("cls", images)
    assert out.shape == (BATCH, 2)
    layers = find_layers(imported.mod)
    names = {layer.name for layer in layers}
    assert len(layers) == 54 and {"conv1_weights", "conv_last_weights", "fc_0.w_0"} <= names
    assert ppocr.orientation_accuracy(out, labels) == 1.0


@pytest.mark.parametrize("kind, floor", [("rec", 0.9), ("cls", 0.99)])
def test_benchmark_tasks_score_the_dense_model(kind, floor):
    from tvm_tasd.benchmarks.quality_vs_edp import load_task
    from tvm_tasd.evaluation.onnx import OnnxWeightFedModel

    task = load_task(f"ppocr-{kind}", quick=True)
    assert task.calibration[0]["x"].shape[0] == 8
    for feeds, metric in ((task.calibration, task.calibration_metric), (task.validation, task.validation_metric),
                          (task.test, task.test_metric)):
        assert metric(OnnxWeightFedModel(task.model, feeds).run()) >= floor


def test_depthwise_convs_are_priced_as_grouped_and_left_out_of_the_search():
    from tvm_tasd import tasder
    from tvm_tasd.benchmarks.quality_vs_edp import load_task
    from tvm_tasd.cost import layer_cost
    from tvm_tasd.hardware import load_target

    task = load_task("ppocr-cls", quick=True)
    layers = find_layers(from_onnx(task.model, {"x": list(task.calibration[0]["x"].shape)}).mod)
    depthwise = [layer for layer in layers if layer.ineligible and "depthwise" in layer.ineligible]
    assert len(depthwise) == 11
    for layer in depthwise:
        cost = layer_cost(load_target("vegeta-m8"), layer, "dense")
        assert cost.batch == layer.conv["groups"] and cost.batch * cost.m * cost.k * cost.n == layer.dense_macs
    plan = tasder.search(task.model, "vegeta-m8", task.calibration[:4], metric="top1", budget=0.99, progress=False)
    assert plan.info["quality"]["relative"] >= 0.99 and plan.info["edp_vs_dense"] < 1.0
    assert {layer.name for layer in plan.layers}.isdisjoint(layer.name for layer in depthwise)

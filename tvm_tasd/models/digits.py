"""The bundled default models: a digits MLP and a digits CNN, trained reproducibly.

Both are trained from scikit-learn's bundled ``load_digits`` (1,797 8×8
images) with plain numpy — no torch, no download — and saved as ONNX with
their weights as initializers, exactly as a user's exported model would be:
``MatMul`` with a (K, N) constant for fully connected layers and ``Conv``
with an OIHW constant for convolutions.

Regenerate the files with ``python -m tvm_tasd.models.digits``; the same
seed gives the same weights on the same numpy/BLAS.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

SEED = 0
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class DigitsData:
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def load_data() -> DigitsData:
    """load_digits scaled to [0, 1], a fixed 80/20 stratified split."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    train_x, test_x, train_y, test_y = train_test_split(
        x, digits.target, test_size=0.2, random_state=SEED, stratify=digits.target
    )
    return DigitsData(train_x, train_y.astype(np.int64), test_x, test_y.astype(np.int64))


def model_path(name: str) -> Path:
    """Path of a bundled model: ``digits-mlp`` or ``digits-cnn``."""
    path = Path(str(resources.files("tvm_tasd.models").joinpath(f"{name}.onnx")))
    if not path.exists():
        raise FileNotFoundError(f"bundled model {name!r} is missing; regenerate it with `python -m tvm_tasd.models.digits`")
    return path


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((np.argmax(logits, axis=-1) == labels).mean())


# ------------------------------------------------------------------ training


def _adam(params, grads, state, step, lr=2e-3, b1=0.9, b2=0.999, eps=1e-8):
    for key, grad in grads.items():
        m, v = state.setdefault(key, (np.zeros_like(grad), np.zeros_like(grad)))
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad * grad
        state[key] = (m, v)
        params[key] -= lr * (m / (1 - b1**step)) / (np.sqrt(v / (1 - b2**step)) + eps)


def _softmax_xent_grad(logits, labels):
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    probs[np.arange(len(labels)), labels] -= 1.0
    return probs / len(labels)


def _im2col(x, kh=3, kw=3, pad=1):
    """(B, C, H, W) → (B·H·W, C·kh·kw) for a stride-1 'same' convolution."""
    b, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    cols = np.stack([xp[:, :, i : i + h, j : j + w] for i in range(kh) for j in range(kw)], axis=2)
    return cols.reshape(b, c * kh * kw, h * w).transpose(0, 2, 1).reshape(b * h * w, c * kh * kw)


def _col2im(cols, shape, kh=3, kw=3, pad=1):
    b, c, h, w = shape
    cols = cols.reshape(b, h * w, c, kh * kw).transpose(0, 2, 3, 1).reshape(b, c, kh * kw, h, w)
    out = np.zeros((b, c, h + 2 * pad, w + 2 * pad), cols.dtype)
    for idx, (i, j) in enumerate((i, j) for i in range(kh) for j in range(kw)):
        out[:, :, i : i + h, j : j + w] += cols[:, :, idx]
    return out[:, :, pad : pad + h, pad : pad + w]


class _MLP:
    """64 → 128 → 64 → 10, ReLU."""

    sizes = (64, 128, 64, 10)

    def __init__(self, rng):
        self.params = {}
        for i, (k, n) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
            self.params[f"fc{i + 1}.weight"] = (rng.standard_normal((k, n)) * np.sqrt(2.0 / k)).astype(np.float32)
            self.params[f"fc{i + 1}.bias"] = np.zeros(n, np.float32)

    def step(self, x, y):
        p, acts = self.params, [x]
        layers = len(self.sizes) - 1
        for i in range(1, layers + 1):
            z = acts[-1] @ p[f"fc{i}.weight"] + p[f"fc{i}.bias"]
            acts.append(np.maximum(z, 0) if i < layers else z)
        grad, grads = _softmax_xent_grad(acts[-1], y), {}
        for i in range(layers, 0, -1):
            grads[f"fc{i}.weight"] = acts[i - 1].T @ grad
            grads[f"fc{i}.bias"] = grad.sum(0)
            grad = (grad @ p[f"fc{i}.weight"].T) * (acts[i - 1] > 0)
        return grads

    def onnx_nodes(self):
        nodes, current = [], INPUT_NAME
        layers = len(self.sizes) - 1
        for i in range(1, layers + 1):
            out = OUTPUT_NAME if i == layers else f"fc{i}.out"
            nodes.append(helper.make_node("MatMul", [current, f"fc{i}.weight"], [f"fc{i}.mm"], name=f"fc{i}"))
            nodes.append(helper.make_node("Add", [f"fc{i}.mm", f"fc{i}.bias"], [f"fc{i}.add" if i < layers else out]))
            if i < layers:
                nodes.append(helper.make_node("Relu", [f"fc{i}.add"], [out]))
            current = out
        return nodes, [None, 64]


class _CNN:
    """conv 1→16 3×3, ReLU, conv 16→32 3×3, ReLU, 2×2 max-pool, linear 512→10."""

    def __init__(self, rng):
        def he(shape, fan_in):
            return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

        self.params = {
            "conv1.weight": he((16, 1, 3, 3), 9),
            "conv1.bias": np.zeros(16, np.float32),
            "conv2.weight": he((32, 16, 3, 3), 144),
            "conv2.bias": np.zeros(32, np.float32),
            "fc.weight": he((512, 10), 512),
            "fc.bias": np.zeros(10, np.float32),
        }

    def _conv(self, x, name):
        w = self.params[f"{name}.weight"]
        cols = _im2col(x)
        out = cols @ w.reshape(w.shape[0], -1).T + self.params[f"{name}.bias"]
        b, _, h, wd = x.shape
        return cols, out.reshape(b, h, wd, -1).transpose(0, 3, 1, 2)

    def step(self, x, y):
        p = self.params
        x = x.reshape(-1, 1, 8, 8)
        cols1, z1 = self._conv(x, "conv1")
        a1 = np.maximum(z1, 0)
        cols2, z2 = self._conv(a1, "conv2")
        a2 = np.maximum(z2, 0)
        b = a2.shape[0]
        windows = a2.reshape(b, 32, 4, 2, 4, 2)
        pooled = windows.max(axis=(3, 5))
        flat = pooled.reshape(b, -1)
        logits = flat @ p["fc.weight"] + p["fc.bias"]
        grad = _softmax_xent_grad(logits, y)
        grads = {"fc.weight": flat.T @ grad, "fc.bias": grad.sum(0)}
        g_pooled = (grad @ p["fc.weight"].T).reshape(pooled.shape)
        winner = windows == pooled[:, :, :, None, :, None]
        winner &= np.cumsum(np.cumsum(winner, axis=3), axis=5) == 1  # one winner per window
        g_a2 = (winner * g_pooled[:, :, :, None, :, None]).reshape(a2.shape)
        g_a1 = self._conv_backward("conv2", cols2, g_a2 * (z2 > 0), grads, a1.shape)
        self._conv_backward("conv1", cols1, g_a1 * (z1 > 0), grads, None)
        return grads

    def _conv_backward(self, name, cols, g_z, grads, input_shape):
        """Weight/bias gradients of one conv; the input gradient when ``input_shape`` is given."""
        g_flat = g_z.transpose(0, 2, 3, 1).reshape(-1, g_z.shape[1])
        w = self.params[f"{name}.weight"]
        grads[f"{name}.weight"] = (g_flat.T @ cols).reshape(w.shape)
        grads[f"{name}.bias"] = g_flat.sum(0)
        return None if input_shape is None else _col2im(g_flat @ w.reshape(w.shape[0], -1), input_shape)

    def onnx_nodes(self):
        conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
        nodes = [
            helper.make_node("Reshape", [INPUT_NAME, "image_shape"], ["image"]),
            helper.make_node("Conv", ["image", "conv1.weight", "conv1.bias"], ["conv1.out"], name="conv1", **conv),
            helper.make_node("Relu", ["conv1.out"], ["relu1"]),
            helper.make_node("Conv", ["relu1", "conv2.weight", "conv2.bias"], ["conv2.out"], name="conv2", **conv),
            helper.make_node("Relu", ["conv2.out"], ["relu2"]),
            helper.make_node("MaxPool", ["relu2"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
            helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "fc.weight"], ["fc.mm"], name="fc"),
            helper.make_node("Add", ["fc.mm", "fc.bias"], [OUTPUT_NAME]),
        ]
        return nodes, [None, 64]


ARCHITECTURES = {"digits-mlp": _MLP, "digits-cnn": _CNN}


def train(name: str, epochs: int = 40, batch: int = 32) -> tuple[onnx.ModelProto, float]:
    """Train one architecture; returns the ONNX model and its test accuracy."""
    data = load_data()
    rng = np.random.default_rng(SEED)
    net = ARCHITECTURES[name](rng)
    state, step = {}, 0
    for _ in range(epochs):
        order = rng.permutation(len(data.train_x))
        for start in range(0, len(order), batch):
            sel = order[start : start + batch]
            step += 1
            _adam(net.params, net.step(data.train_x[sel], data.train_y[sel]), state, step)
    model = _to_onnx(name, net)
    logits = ReferenceEvaluator(model).run(None, {INPUT_NAME: data.test_x})[0]
    return model, accuracy(logits, data.test_y)


def _to_onnx(name: str, net) -> onnx.ModelProto:
    nodes, input_shape = net.onnx_nodes()
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in net.params.items()]
    if name == "digits-cnn":
        inits.append(numpy_helper.from_array(np.array([-1, 1, 8, 8], np.int64), "image_shape"))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", input_shape[1]])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tvm_tasd")
    onnx.checker.check_model(model)
    return model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Train and save the bundled digits models.")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent)
    args = parser.parse_args(argv)
    for name in ARCHITECTURES:
        model, acc = train(name)
        onnx.save(model, args.out_dir / f"{name}.onnx")
        print(f"{name}: test accuracy {acc:.4f} → {args.out_dir / (name + '.onnx')}")


if __name__ == "__main__":
    main()

"""Run a model many times with different layer weights, from one session.

The search scores many candidate plans on the same calibration data.
Rebuilding an onnxruntime session (or recompiling with TVM) per candidate
would dominate its time, so :class:`WeightFedModel` rewrites a copy of the
graph once so that every layer weight (the initializers of
:func:`~tvm_tasd.reference.weight_axes`) is a graph *input*, builds one
session, and feeds replacement weights at run time. The outputs equal
onnxruntime on :func:`~tvm_tasd.reference.approximate_onnx`'s model.

The loading, session and calibration-checking helpers here are shared with
:mod:`tvm_tasd.calibration`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .reference import weight_axes

Feed = Mapping[str, np.ndarray]


def load_model(model: "onnx.ModelProto | str | os.PathLike") -> onnx.ModelProto:
    """A ModelProto as given, or loaded (with external data) from a path."""
    return model if isinstance(model, onnx.ModelProto) else onnx.load(os.fspath(model))


def inference_session(model: onnx.ModelProto):
    """A CPU onnxruntime session using every core for each operator."""
    import onnxruntime as ort  # optional dependency: only the data-driven search needs it

    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def model_inputs(model: onnx.ModelProto) -> list[str]:
    """Names a feed must provide: graph inputs that are not initializers."""
    initializers = {init.name for init in model.graph.initializer}
    return [value.name for value in model.graph.input if value.name not in initializers]


def check_calibration(model: onnx.ModelProto, calibration: Iterable[Feed]) -> list[Feed]:
    """The calibration batches as a list, each a feed with exactly the model's inputs."""
    feeds = list(calibration)
    if not feeds:
        raise ValueError("calibration set is empty: give at least one feed dict (input name → array)")
    required = model_inputs(model)
    for index, feed in enumerate(feeds):
        if not isinstance(feed, Mapping):
            raise ValueError(f"calibration batch {index} is a {type(feed).__name__}, not a dict (input name → array)")
        missing = [name for name in required if name not in feed]
        if missing:
            raise ValueError(f"calibration batch {index} lacks model input(s) {missing}; model inputs: {required}")
        unknown = sorted(set(feed) - set(required))
        if unknown:
            raise ValueError(f"calibration batch {index} has {unknown}, which are not model inputs {required}")
    return feeds


class WeightFedModel:
    """One onnxruntime session whose layer weights are fed with every run.

    ``calibration`` is a list of feeds, one dict (input name → array) per
    batch; :meth:`run` returns the model's outputs on every batch.
    """

    def __init__(self, model: "onnx.ModelProto | str | os.PathLike", calibration: Iterable[Feed]):
        model = load_model(model)
        self.calibration = check_calibration(model, calibration)
        self._axes = weight_axes(model)
        self._originals: dict[str, np.ndarray] = {}
        fed = onnx.ModelProto()
        fed.CopyFrom(model)
        already_inputs = {value.name for value in fed.graph.input}  # IR < 4 lists initializers as inputs
        kept = []
        for init in fed.graph.initializer:
            if init.name not in self._axes:
                kept.append(init)
                continue
            weight = numpy_helper.to_array(init)
            weight.flags.writeable = False  # handed to callers; the reference must stay intact
            self._originals[init.name] = weight
            if init.name not in already_inputs:
                fed.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, init.dims))
        del fed.graph.initializer[:]
        fed.graph.initializer.extend(kept)
        self._session = inference_session(fed)
        self.output_names = [value.name for value in model.graph.output]
        self.evaluations = 0

    @property
    def layer_names(self) -> list[str]:
        """The layer weights a run can replace, in the order the graph uses them."""
        return list(self._axes)

    def original(self, name: str) -> np.ndarray:
        """The model's own value of a layer weight (read-only)."""
        return self._originals[self._known(name)]

    def axis(self, name: str) -> int:
        """Reduction axis of a layer weight (DESIGN §2)."""
        return self._axes[self._known(name)]

    def run(self, weights: "Mapping[str, np.ndarray] | None" = None, batches: int | None = None) -> list[list[np.ndarray]]:
        """Outputs on the calibration batches (the first ``batches`` of them, default all),
        with ``weights`` replacing the originals they name."""
        fed = dict(self._originals)
        for name, value in (weights or {}).items():
            original = self._originals[self._known(name)]
            value = np.ascontiguousarray(value, dtype=original.dtype)
            if value.shape != original.shape:
                raise ValueError(f"weight {name!r} has shape {value.shape}, the model's is {original.shape}")
            fed[name] = value
        self.evaluations += 1
        return [self._session.run(self.output_names, {**batch, **fed}) for batch in self.calibration[:batches]]

    def _known(self, name: str) -> str:
        if name not in self._originals:
            raise ValueError(f"{name!r} is not a layer weight of this model; layers: {self.layer_names}")
        return name

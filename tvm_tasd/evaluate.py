"""Run a model many times with different layer weights, from one session.

The search scores many candidate plans on the same calibration data.
Rebuilding an onnxruntime session (or recompiling with TVM) per candidate
would dominate its time, so :class:`WeightFedModel` rewrites a copy of the
graph once so that every layer weight (the initializers of
:func:`~tvm_tasd.reference.weight_axes`) is a graph *input*, builds one
session, and feeds replacement weights at run time. The outputs equal
onnxruntime on :func:`~tvm_tasd.reference.approximate_onnx`'s model.

Activation series (run-time decomposition, DESIGN §2) are emulated in the
same session: for each layer named in ``activation_groups`` (layer → M) the
MatMul's activation input passes through a small subgraph that keeps, in
every group of M along the last axis, the ``keep`` best entries (|x|, ties
to the lower index, zeros last) — ``keep`` is fed per run, M means "all".
A greedy series with one M keeps exactly the top ΣN, so one count covers
every series of that M.

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
    if isinstance(model, onnx.ModelProto):
        return model
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(
            f"expected an ONNX model (path or ModelProto), got {type(model).__name__}; for a Relax IRModule "
            "use tasder.search, or evaluate_relax.RelaxWeightFedModel / calibrate_relax"
        )
    from .frontend import load_onnx

    return load_onnx(model)


def inference_session(model: onnx.ModelProto):
    """A CPU onnxruntime session using every core (or ``$TVM_TASD_ORT_THREADS``) for each operator."""
    import onnxruntime as ort  # optional dependency: only the data-driven search needs it

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("TVM_TASD_ORT_THREADS", os.cpu_count() or 1))
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def model_inputs(model: onnx.ModelProto) -> list[str]:
    """Names a feed must provide: graph inputs that are not initializers."""
    initializers = {init.name for init in model.graph.initializer}
    return [value.name for value in model.graph.input if value.name not in initializers]


def check_calibration(model: onnx.ModelProto, calibration: Iterable[Feed]) -> list[Feed]:
    """The calibration batches as a list, each a feed with exactly the model's inputs."""
    return check_feeds(calibration, model_inputs(model))


def check_feeds(calibration: Iterable[Feed], required: list[str], hint: str = "") -> list[Feed]:
    """The calibration batches as a list, each a feed with exactly the ``required`` inputs
    (``hint`` is appended to the errors)."""
    feeds = list(calibration)
    if not feeds:
        raise ValueError("calibration set is empty: give at least one feed dict (input name → array)")
    for index, feed in enumerate(feeds):
        if not isinstance(feed, Mapping):
            raise ValueError(f"calibration batch {index} is a {type(feed).__name__}, not a dict (input name → array)")
        missing = [name for name in required if name not in feed]
        if missing:
            raise ValueError(f"calibration batch {index} lacks model input(s) {missing}; data inputs are {required}{hint}")
        unknown = sorted(set(feed) - set(required))
        if unknown:
            raise ValueError(f"calibration batch {index} has {unknown}, which are not model inputs {required}{hint}")
    return feeds


def keep_input(layer: str) -> str:
    """Name of the graph input that feeds a layer's activation keep count."""
    return f"tasd_keep::{layer}"


def _top_keep_nodes(x: str, layer: str, m: int, elem_type: int) -> tuple[list, list, str]:
    """Nodes computing ``x`` with only the ``keep`` best entries of each group of m (last axis)."""
    p = f"tasd_act::{layer}::"
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
    inits = [
        numpy_helper.from_array(np.array([-1, m], np.int64), p + "groups"),
        numpy_helper.from_array((np.arange(m)[:, None] < np.arange(m)[None, :])[None], p + "lower"),  # [i, j]: i before j
        numpy_helper.from_array(np.array([1], np.int64), p + "axis1"),
        numpy_helper.from_array(np.array([2], np.int64), p + "axis2"),
        numpy_helper.from_array(np.array(0.0, np.float32), p + "zero"),
        numpy_helper.from_array(np.array(-1.0, np.float32), p + "minus_one"),
        numpy_helper.from_array(np.array(0, dtype), p + "zero_x"),
    ]
    node = lambda op, ins, out, **kw: helper.make_node(op, ins, [p + out], **kw)  # noqa: E731
    nodes = [
        node("Shape", [x], "shape"),
        node("Reshape", [x, p + "groups"], "g"),
        node("Cast", [p + "g"], "gf", to=onnx.TensorProto.FLOAT),
        node("Abs", [p + "gf"], "abs"),
        node("Equal", [p + "gf", p + "zero"], "is_zero"),
        node("Where", [p + "is_zero", p + "minus_one", p + "abs"], "key"),  # zeros never beat a nonzero
        node("Unsqueeze", [p + "key", p + "axis2"], "key_i"),  # (groups, m, 1): the rival i
        node("Unsqueeze", [p + "key", p + "axis1"], "key_j"),  # (groups, 1, m): the entry j
        node("Greater", [p + "key_i", p + "key_j"], "gt"),
        node("Equal", [p + "key_i", p + "key_j"], "eq"),
        node("And", [p + "eq", p + "lower"], "tie"),
        node("Or", [p + "gt", p + "tie"], "beats"),
        node("Cast", [p + "beats"], "beats_int", to=onnx.TensorProto.INT64),
        node("ReduceSum", [p + "beats_int", p + "axis1"], "rank", keepdims=0),
        node("Less", [p + "rank", keep_input(layer)], "kept"),
        node("Where", [p + "kept", p + "g", p + "zero_x"], "selected"),
        node("Reshape", [p + "selected", p + "shape"], "out"),
    ]
    return nodes, inits, p + "out"


def _insert_activation_series(graph_model: onnx.ModelProto, groups: Mapping[str, int]) -> None:
    """Route each named MatMul layer's activation through its keep-count subgraph."""
    graph = graph_model.graph
    elem = {v.name: v.type.tensor_type.elem_type for v in graph.input}
    nodes = []
    for node in graph.node:
        layer = node.input[1] if node.op_type == "MatMul" and len(node.input) > 1 else None
        if layer in groups:
            extra, inits, out = _top_keep_nodes(node.input[0], layer, groups[layer], elem[layer])
            nodes += extra
            graph.initializer.extend(inits)
            graph.input.append(helper.make_tensor_value_info(keep_input(layer), onnx.TensorProto.INT64, []))
            node.input[0] = out
        nodes.append(node)
    missing = set(groups) - {n.input[1] for n in graph.node if n.op_type == "MatMul" and len(n.input) > 1}
    if missing:
        raise ValueError(f"activation series need MatMul layers; not MatMul weights: {sorted(missing)}")
    del graph.node[:]
    graph.node.extend(nodes)


class WeightFedModel:
    """One onnxruntime session whose layer weights are fed with every run.

    ``calibration`` is a list of feeds, one dict (input name → array) per
    batch; :meth:`run` returns the model's outputs on every batch.
    ``activation_groups`` (layer → M) adds fed activation keep counts.
    """

    def __init__(
        self,
        model: "onnx.ModelProto | str | os.PathLike",
        calibration: Iterable[Feed],
        activation_groups: Mapping[str, int] | None = None,
    ):
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
        self._keeps = {name: int(m) for name, m in (activation_groups or {}).items()}
        if self._keeps:
            _insert_activation_series(fed, self._keeps)
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

    def run(
        self,
        weights: "Mapping[str, np.ndarray] | None" = None,
        batches: int | None = None,
        keeps: Mapping[str, int] | None = None,
    ) -> list[list[np.ndarray]]:
        """Outputs on the calibration batches (the first ``batches`` of them, default all),
        with ``weights`` replacing the originals they name and ``keeps`` setting the
        activation keep counts (default: M, i.e. the activation untouched)."""
        fed = dict(self._originals)
        for name, value in (weights or {}).items():
            original = self._originals[self._known(name)]
            value = np.ascontiguousarray(value, dtype=original.dtype)
            if value.shape != original.shape:
                raise ValueError(f"weight {name!r} has shape {value.shape}, the model's is {original.shape}")
            fed[name] = value
        unknown = set(keeps or {}) - set(self._keeps)
        if unknown:
            raise ValueError(f"no activation keep count for {sorted(unknown)}; pass them in activation_groups")
        for name, m in self._keeps.items():
            fed[keep_input(name)] = np.array((keeps or {}).get(name, m), np.int64)
        self.evaluations += 1
        return [self._session.run(self.output_names, {**batch, **fed}) for batch in self.calibration[:batches]]

    def _known(self, name: str) -> str:
        if name not in self._originals:
            raise ValueError(f"{name!r} is not a layer weight of this model; layers: {self.layer_names}")
        return name


def run_plan(model: "onnx.ModelProto | str | os.PathLike", plan, feeds: Iterable[Feed]) -> list[list[np.ndarray]]:
    """Outputs of ``model`` with ``plan`` applied — weight series and activation series — on ``feeds``."""
    from .plan import Plan
    from .reference import approximate_onnx

    plan = Plan.coerce(plan)
    with_activation = [layer for layer in plan.layers if layer.activation is not None and not layer.activation.is_dense]
    groups = {layer.name: layer.activation.max_m for layer in with_activation}
    keeps = {layer.name: sum(t.n for t in layer.activation.terms) for layer in with_activation}
    fed = WeightFedModel(approximate_onnx(load_model(model), plan=plan), feeds, activation_groups=groups)
    return fed.run(keeps=keeps)

"""The ONNX evaluator: one onnxruntime session whose layer weights are graph inputs.

:class:`OnnxWeightFedModel` rewrites a copy of the graph once so that every
layer weight (the initializers :func:`~tvm_tasd.reference.weight_axes`
finds) is a graph *input*, builds one session, and feeds replacement
weights at run time; its outputs equal onnxruntime on
:func:`~tvm_tasd.reference.approximate_onnx`'s model. Activation series are
emulated by :func:`~tvm_tasd.evaluation.keep_top.keep_top` written as ONNX
nodes in front of the layer's ``MatMul``.

Layers (their GEMM geometry and which are ReLU-fed) come from the model's
Relax import (:mod:`tvm_tasd.matcher`), so both evaluators and the pass
agree on them. Calibration (:meth:`OnnxWeightFedModel.calibrate`) runs a
second session whose extra outputs are the layers' activation inputs, on
the original weights; a layer whose activation input is a constant
(computed from initializers only) has no statistics.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from ..frontend import check_input_shape, declared_inputs, from_onnx, load_onnx
from ..io import load_npz
from ..matcher import find_layers
from ..plan import Plan
from ..reference import approximate_onnx, weight_axes
from .base import Outputs, WeightFedModel, plan_feeds
from .calibration import CalibrationStats, Feed, StatsAccumulator, check_feeds, hessian_signature, takes_hessian
from .keep_top import keep_top


def inference_session(model: onnx.ModelProto):
    """A CPU onnxruntime session using every core (or ``$TVM_TASD_ORT_THREADS``) for each operator."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("TVM_TASD_ORT_THREADS", os.cpu_count() or 1))
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def keep_input(layer: str) -> str:
    """Name of the graph input that feeds a layer's activation keep count."""
    return f"tasd_keep::{layer}"


class OnnxOps:
    """:func:`~tvm_tasd.evaluation.keep_top.keep_top` as ONNX nodes (values are tensor names)."""

    _DTYPES = {"float32": onnx.TensorProto.FLOAT, "int64": onnx.TensorProto.INT64}

    def __init__(self, prefix: str, dtype: np.dtype):
        self.prefix, self.dtype = prefix, np.dtype(dtype)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names = itertools.count()

    def _name(self) -> str:
        return f"{self.prefix}{next(self._names)}"

    def _node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self._name()
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def constant(self, value) -> str:
        name = self._name()
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def reshape(self, x, shape):
        return self._node("Reshape", [x, self.constant(np.array(shape, np.int64))])

    def reshape_as(self, x, like):
        return self._node("Reshape", [x, self._node("Shape", [like])])

    def cast(self, x, dtype: str):
        return self._node("Cast", [x], to=self._DTYPES[dtype])

    def abs(self, x):
        return self._node("Abs", [x])

    def add(self, a, b):
        return self._node("Add", [a, b])

    def subtract(self, a, b):
        return self._node("Sub", [a, b])

    def transpose(self, x, perm):
        return self._node("Transpose", [x], perm=list(perm))

    def where(self, condition, a, b):
        return self._node("Where", [condition, a, b])

    def equal(self, a, b):
        return self._node("Equal", [a, b])

    def less(self, a, b):
        return self._node("Less", [a, b])

    def descending_order(self, key, m: int):
        """TopK of all M: onnxruntime breaks ties to the lower index, as the rule does."""
        values, order = self._name(), self._name()
        self.nodes.append(helper.make_node("TopK", [key, self.constant(np.array([m], np.int64))], [values, order],
                                           axis=-1, largest=1, sorted=1))
        return order

    def positions(self, order, m: int):
        updates = self._node("Expand", [self.constant(np.arange(m, dtype=np.int64)[None]), self._node("Shape", [order])])
        return self._node("ScatterElements", [order, order, updates], axis=1)


def _insert_activation_series(graph_model: onnx.ModelProto, groups: Mapping[str, int],
                               shifts: Mapping[str, np.ndarray]) -> None:
    """Route each named MatMul, Gemm or Conv layer's activation through its keep-count subgraph (``shifts``:
    the layers' :attr:`~tvm_tasd.layer.Layer.input_shift`)."""
    graph = graph_model.graph
    elem = {v.name: v.type.tensor_type.elem_type for v in graph.input}
    nodes = []
    for node in graph.node:
        layer = node.input[1] if _takes_activation_series(node) else None
        if layer in groups:
            ops = OnnxOps(f"tasd_act::{layer}::", helper.tensor_dtype_to_np_dtype(elem[layer]))
            node.input[0] = keep_top(node.input[0], keep_input(layer), groups[layer], ops,
                                     channels_first=node.op_type == "Conv", shift=shifts.get(layer))
            nodes += ops.nodes
            graph.initializer.extend(ops.initializers)
            graph.input.append(helper.make_tensor_value_info(keep_input(layer), onnx.TensorProto.INT64, []))
        nodes.append(node)
    missing = set(groups) - {n.input[1] for n in graph.node if _takes_activation_series(n)}
    if missing:
        raise ValueError(f"activation series need MatMul, Gemm (transA = 0) or Conv layers; not such weights: "
                         f"{sorted(missing)}")
    del graph.node[:]
    graph.node.extend(nodes)


def _takes_activation_series(node: onnx.NodeProto) -> bool:
    """A layer node whose first input is its activation, channels along the last axis (Conv: axis 1)."""
    if len(node.input) < 2:
        return False
    trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
    return node.op_type in ("MatMul", "Conv") or (node.op_type == "Gemm" and not trans_a)


@dataclass(frozen=True)
class _Site:
    """One use of a layer weight: the activation it multiplies and that activation's channel axis."""

    tensor: str
    channel_axis: int
    elem_type: int  # the weight's, which ONNX requires the activation to share


def _constant_values(graph: onnx.GraphProto) -> set[str]:
    """Values fixed before any input arrives: initializers, Constant nodes and what only they feed.

    ONNX lists nodes in topological order, so one forward sweep suffices.
    """
    constant = {init.name for init in graph.initializer} | {""}  # "" is an omitted optional input
    for node in graph.node:
        if node.op_type == "Constant" or (node.input and all(name in constant for name in node.input)):
            constant.update(node.output)
    return constant


def _activation_sites(model: onnx.ModelProto) -> dict[str, list[_Site]]:
    """Layer weight → the activations it multiplies, for every weight with a non-constant one."""
    axes = weight_axes(model)
    elem_types = {init.name: init.data_type for init in model.graph.initializer}
    constant = _constant_values(model.graph)
    sites: dict[str, list[_Site]] = {}
    for node in model.graph.node:
        if len(node.input) < 2 or node.input[1] not in axes or node.input[0] in constant:
            continue
        if node.op_type == "Conv":
            channel_axis = 1
        else:  # MatMul, Gemm: channels along the activation's K axis
            trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
            channel_axis = 0 if node.op_type == "Gemm" and trans_a else -1
        sites.setdefault(node.input[1], []).append(_Site(node.input[0], channel_axis, elem_types[node.input[1]]))
    return sites


def _with_outputs(model: onnx.ModelProto, sites: Iterable[_Site]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the given activations (type from the weight; shape not needed)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {value.name for value in model.graph.output}
    for site in sites:
        if site.tensor not in present:
            exposed.graph.output.append(helper.make_tensor_value_info(site.tensor, site.elem_type, None))
            present.add(site.tensor)
    return exposed


def _typed_feeds(model: onnx.ModelProto, feeds: list[Feed]) -> list[dict]:
    """The feeds checked against the shapes the model declares, and cast to its input dtypes where that is safe."""
    declared = declared_inputs(model)
    typed = []
    for index, feed in enumerate(feeds):
        batch = {}
        for name, array in feed.items():
            dims, dtype = declared[name]
            array = np.asarray(array)
            if dims is not None:
                check_input_shape(name, dims, array.shape, f"calibration batch {index}")
            if not np.can_cast(array.dtype, dtype, "same_kind"):
                raise ValueError(f"calibration batch {index}: input {name!r} is {array.dtype}; the model takes {dtype}")
            batch[name] = array.astype(dtype, copy=False)
        typed.append(batch)
    return typed


class OnnxWeightFedModel(WeightFedModel):
    """An ONNX model (path or ModelProto) in one onnxruntime session, layer weights fed per run."""

    def __init__(
        self,
        model: "onnx.ModelProto | str | os.PathLike",
        calibration: Iterable[Feed],
        activation_groups: Mapping[str, int] | None = None,
        activation_fed_groups: int | None = None,
    ):
        self.model = load_onnx(model)
        feeds = _typed_feeds(self.model, check_feeds(calibration, list(declared_inputs(self.model))))
        shapes = {name: list(np.shape(value)) for name, value in feeds[0].items()}
        layers = find_layers(from_onnx(self.model, shapes).mod)
        inits = {init.name: init for init in self.model.graph.initializer}
        weights = {name: (numpy_helper.to_array(inits[name]), axis) for name, axis in weight_axes(self.model).items()}
        super().__init__(feeds, layers, weights, activation_groups, activation_fed_groups)

    @property
    def output_names(self) -> list[str]:
        return [value.name for value in self.model.graph.output]

    @cached_property
    def _session(self):
        """The session with layer weights (and keep counts) as inputs; built on the first run."""
        fed = onnx.ModelProto()
        fed.CopyFrom(self.model)
        already_inputs = {value.name for value in fed.graph.input}  # IR < 4 lists initializers as inputs
        kept = [init for init in fed.graph.initializer if init.name not in self._weights]
        for init in fed.graph.initializer:
            if init.name in self._weights and init.name not in already_inputs:
                fed.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, init.dims))
        del fed.graph.initializer[:]
        fed.graph.initializer.extend(kept)
        if self._groups:
            shifts = {layer.name: layer.input_shift for layer in self.layers if layer.input_shift is not None}
            _insert_activation_series(fed, self._groups, shifts)
        return inference_session(fed)

    def _inputs(self, weights, keeps) -> dict[str, np.ndarray]:
        return {**weights, **{keep_input(name): np.array(keep, np.int64) for name, keep in keeps.items()}}

    def _run(self, batch, inputs) -> list[np.ndarray]:
        return self._session.run(self.output_names, {**batch, **inputs})

    def calibrate(self, progress: bool = True, hessians: bool = False,
                  feeds: list[Feed] | None = None) -> CalibrationStats:
        sites = _activation_sites(self.model)
        layers = {layer.name: layer for layer in self.layers if layer.name in sites}
        gram_layers = {}  # site → the layers reading it whose Hessian is gathered
        for name, uses in sites.items():
            if hessians and name in layers and takes_hessian(layers[name]):
                for site in uses:
                    gram_layers.setdefault(site, []).append(layers[name])
        graph_inputs = {value.name for value in self.model.graph.input}
        unique = list(dict.fromkeys(site for uses in sites.values() for site in uses))
        fetched = list(dict.fromkeys(site.tensor for site in unique if site.tensor not in graph_inputs))
        exposed = [site for site in unique if site.tensor in fetched]
        session = inference_session(_with_outputs(self.model, exposed)) if fetched else None
        accumulator = StatsAccumulator()
        for feed in accumulator.over(self.calibration if feeds is None else feeds, progress):
            values = dict(zip(fetched, session.run(fetched, dict(feed)))) if session else {}
            for site in unique:
                x = values.get(site.tensor, feed.get(site.tensor))
                accumulator.add(site, x, site.channel_axis)
                for layer in {hessian_signature(layer): layer for layer in gram_layers.get(site, ())}.values():
                    if layer.op == "conv2d" and tuple(np.shape(x)[1:]) != tuple(layer.activation_shape[1:]):
                        continue  # auto_pad: the import pads before the conv, so this input is not its own
                    accumulator.add_gram(site, layer, x if layer.op == "conv2d" else np.moveaxis(x, site.channel_axis, -1))
        channels = {name: self._weights[name].shape[self._axes[name]] for name in sites}
        return accumulator.stats(sites, channels, self.relu_fed & set(sites), layers)


def calibration_from_npz(path, model: onnx.ModelProto, batch: int | None = None) -> tuple[list[dict], np.ndarray | None]:
    """Calibration batches from an .npz: one array per model input (first axis = samples),
    optional ``labels``; batches of ``batch`` samples (a model with a fixed batch takes
    whole batches of that size only)."""
    if batch is not None and batch < 1:
        raise ValueError(f"the batch size must be at least 1, got {batch}")
    arrays = load_npz(path, "calibration")
    labels = arrays.pop("labels", None)
    declared = declared_inputs(model)
    if set(arrays) != set(declared):
        raise ValueError(f"calibration file {path} has arrays {sorted(arrays)}; it needs one per model input "
                         f"{sorted(declared)} (and optionally 'labels')")
    counts = {name: len(a) for name, a in arrays.items()} | ({"labels": len(labels)} if labels is not None else {})
    if len(set(counts.values())) != 1:
        raise ValueError(f"arrays in {path} disagree on the number of samples (first axis): {counts}")
    samples = next(iter(counts.values()))
    fixed = {dims[0] for dims, _ in declared.values() if dims and dims[0]}
    if len(fixed) > 1:
        raise ValueError(f"the model's inputs fix different batch sizes {sorted(fixed)}; it cannot be calibrated by batches")
    if fixed:
        model_batch = fixed.pop()
        if batch not in (None, model_batch):
            raise ValueError(f"the model's batch size is fixed at {model_batch}: use a batch of {model_batch}")
        batch = model_batch
        samples -= samples % batch
        if samples == 0:
            raise ValueError(f"calibration file {path} has fewer samples than one batch of {batch}")
    for name, (_, dtype) in declared.items():
        if not np.can_cast(arrays[name].dtype, dtype, "same_kind"):
            raise ValueError(f"calibration array {name!r} in {path} is {arrays[name].dtype}; the model takes {dtype}")
    batch = batch or 64
    feeds = [{name: arrays[name][i : i + batch].astype(dtype, copy=False) for name, (_, dtype) in declared.items()}
             for i in range(0, samples, batch)]
    return feeds, None if labels is None else labels[:samples]


def run_plan(model: "onnx.ModelProto | str | os.PathLike", plan, feeds: Iterable[Feed]) -> Outputs:
    """Outputs of ``model`` with ``plan`` applied — weight series and activation series — on ``feeds``."""
    plan = Plan.coerce(plan)
    groups, keeps = plan_feeds(plan)
    return OnnxWeightFedModel(approximate_onnx(load_onnx(model), plan=plan), feeds, groups).run(keeps=keeps)

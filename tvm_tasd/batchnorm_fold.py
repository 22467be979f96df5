"""Fold inference batch norms so that layers see what they compute: a conv's output, a ReLU's zeros.

Where it belongs: ONNX → ONNX normalisations applied when a model is loaded
(:func:`tvm_tasd.reference.canonical`, after computed weights are folded),
so the pass, the evaluators, the search and the ONNX reference all see the
same graph. Two patterns, with ``a = γ/√(σ²+ε)`` and ``b = β − a·μ`` per
channel (``BN(x) = a·x + b``):

* :func:`fold_batchnorm_into_conv` — ``Conv`` → ``BatchNormalization``, the
  conv's output read by the batch norm only: the conv's weight is scaled by
  ``a`` per output channel and its bias becomes ``a·bias + b``, the batch
  norm goes (grouped and depthwise convs too). The weight a plan names is
  then the folded one: its fingerprint is the folded weight's. Exporters
  from PyTorch do this already; Paddle's (PP-OCR) do not, and an unfolded
  batch norm runs as four elementwise ops after every conv. Per output
  channel, the scale moves no N:M group boundary (groups run along input
  channels), so a magnitude series keeps the same mask.
* :func:`fold_batchnorm_after_relu` — ``Relu`` (or ``Clip`` with a lower
  bound of 0) → ``BatchNormalization`` → any ``MaxPool`` and layout ops
  (``Transpose``, ``Reshape``, ``Flatten``, ``Squeeze``, ``Unsqueeze``,
  ``Identity``) → an ungrouped ``Conv``, a ``Gemm`` (``transA = 0``) or a
  2-D ``MatMul`` whose weight is an initializer; every value on the way
  read by the next node only. Models such as CREPE put a batch norm after
  every ReLU: the next layer's input is then ``a·relu(x) + b``, dense, and
  run-time activation series would find no zeros. The batch norm becomes a
  ``Mul`` by ``a`` (which keeps the zeros) and an ``Add`` of ``b`` right
  before the layer (a max-pooling commutes with adding a per-channel
  constant; layout ops carry ``b`` to the layer's input channels or
  features). The layer's input is then ``y + b`` with ``y`` ReLU-fed: an
  activation series decomposes ``y`` and adds ``b`` back
  (:attr:`~tvm_tasd.layer.Layer.input_shift`), which is what a TASD unit
  would run — the sparse ``y`` through the unit, the constant ``W·b``
  precomputed with the layer's (approximated) weight. The layer's weight
  stays as it was. The input counts as ReLU-fed only when every ``a ≥ 0``
  (:mod:`tvm_tasd.matcher` sees through a multiply by a non-negative
  constant).

Both keep the function the model computes (up to float rounding). Not
handled (left as they are): a batch norm whose input has other readers,
a weight or bias shared with another node, grouped convs after a ReLU's
batch norm, average pooling on the way and shapes shape inference cannot
fix.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

LAYOUT_OPS = frozenset({"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})


def fold_batchnorm_into_conv(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every batch norm that directly follows a conv folded into the conv's weight and bias
    (module docstring); ``model`` itself when there is none."""
    index = _GraphIndex.of(model.graph)
    pairs = [(index.producers[bn.input[0]], bn) for bn in model.graph.node if _folds_into_conv(index, bn)]
    if not pairs:
        return model
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    initializers = {init.name: init for init in folded.graph.initializer}
    for conv, bn in pairs:
        scale, shift = _affine(bn, index.values)
        weight = numpy_helper.to_array(index.values[conv.input[1]])
        initializers[conv.input[1]].CopyFrom(numpy_helper.from_array(
            (weight * scale.reshape(-1, *[1] * (weight.ndim - 1))).astype(weight.dtype), conv.input[1]))
        layer, batchnorm = _node(folded.graph, conv.output[0]), _node(folded.graph, bn.output[0])
        if len(conv.input) > 2 and conv.input[2]:
            bias = numpy_helper.to_array(index.values[conv.input[2]])
            initializers[conv.input[2]].CopyFrom(numpy_helper.from_array(
                (scale * bias + shift).astype(weight.dtype), conv.input[2]))
        else:
            name = _unique(folded.graph, conv.input[1] + "_bias")
            folded.graph.initializer.append(numpy_helper.from_array(shift.astype(weight.dtype), name))
            del layer.input[2:]
            layer.input.append(name)
        layer.output[0] = bn.output[0]
        folded.graph.node.remove(batchnorm)
    _drop_unread(folded.graph, {name for _, bn in pairs for name in bn.input[1:5]})
    return folded


def _folds_into_conv(index: "_GraphIndex", bn: onnx.NodeProto) -> bool:
    """Whether ``bn`` is an inference batch norm that :func:`fold_batchnorm_into_conv` folds into its conv."""
    if bn.op_type != "BatchNormalization" or len(bn.output) != 1 or _attr(bn, "training_mode", 0):
        return False
    conv = index.producers.get(bn.input[0])
    if conv is None or conv.op_type != "Conv" or len(conv.output) != 1 or conv.output[0] in index.outputs:
        return False
    parameters = [name for name in conv.input[1:3] if name]
    if len(index.readers[conv.output[0]]) != 1 or any(name not in index.values for name in [*parameters, *bn.input[1:5]]):
        return False
    if any(len(index.readers[name]) != 1 for name in parameters):  # shared with another node: leave it
        return False
    return index.values[conv.input[1]].dims[0] == index.values[bn.input[1]].dims[0]


def fold_batchnorm_after_relu(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every batch norm after a ReLU that the pattern admits split into a scale where it was and
    a shift before the next layer (module docstring); ``model`` itself when there is none."""
    shapes = functools.cache(lambda: _static_shapes(model))  # shape inference only where a pattern starts
    index = _GraphIndex.of(model.graph)
    folds = [fold for fold in (_Fold.find(index, node, shapes) for node in model.graph.node) if fold is not None]
    if not folds:
        return model
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    for fold in folds:
        fold.apply(folded.graph)
    _drop_unread(folded.graph, {name for fold in folds for name in fold.bn.input[1:5]})
    return folded


def _drop_unread(graph: onnx.GraphProto, names: set[str]) -> None:
    """Remove the initializers in ``names`` that no node reads any more (a batch norm's parameters)."""
    read = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in read or init.name not in names]
    del graph.initializer[:]
    graph.initializer.extend(kept)


class _GraphIndex(NamedTuple):
    """Lookups over one graph, built once for every batch norm in it."""

    values: dict  # initializer name → TensorProto
    producers: dict  # value name → the node that writes it
    readers: dict  # value name → the nodes that read it
    outputs: frozenset

    @classmethod
    def of(cls, graph: onnx.GraphProto) -> "_GraphIndex":
        readers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                readers.setdefault(name, []).append(node)
        return cls({init.name: init for init in graph.initializer},
                   {out: node for node in graph.node for out in node.output}, readers,
                   frozenset(out.name for out in graph.output))


class _Fold:
    """One batch norm, the path after it and the layer its shift moves to (nodes of the model it was found in:
    :meth:`apply` edits a copy, finding its nodes by output name)."""

    def __init__(self, bn, path, layer, shapes, values):
        self.bn, self.path, self.layer = bn, path, layer
        self.shapes, self.values = shapes, values

    @classmethod
    def find(cls, index: _GraphIndex, bn: onnx.NodeProto, static_shapes) -> "_Fold | None":
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1 or _attr(bn, "training_mode", 0):
            return None
        values = index.values
        if any(name not in values for name in bn.input[1:5]):
            return None
        if not _relu_output(index.producers.get(bn.input[0]), values):
            return None
        path, value = [], bn.output[0]
        while True:
            nexts = index.readers.get(value, [])
            if value in index.outputs or len(nexts) != 1:
                return None
            node = nexts[0]
            if node.op_type in ("Conv", "Gemm", "MatMul"):
                break
            if (node.op_type not in LAYOUT_OPS | {"MaxPool"} or node.input[0] != value or len(node.output) != 1
                    or any(name and name not in values for name in node.input[1:])):
                return None
            path.append(node)
            value = node.output[0]
        layer = node
        weight = layer.input[1] if len(layer.input) > 1 else ""
        if layer.input[0] != value or weight not in values:
            return None
        shapes = static_shapes()
        if any(name not in shapes for name in [bn.input[0], value, *(n.output[0] for n in path)]):
            return None
        if layer.op_type == "Conv" and _attr(layer, "group", 1) != 1:
            return None
        if layer.op_type == "MatMul" and len(values[weight].dims) != 2:
            return None
        if layer.op_type == "Gemm" and _attr(layer, "transA", 0):
            return None
        return cls(bn, path, layer, shapes, values)

    def apply(self, graph: onnx.GraphProto) -> None:
        scale, per_channel_shift = _affine(self.bn, self.values)
        shift = self._carry(per_channel_shift)
        if shift is None:
            return  # the layout ops mix channels into features unevenly: leave the batch norm
        dtype = helper.tensor_dtype_to_np_dtype(self.values[self.bn.input[1]].data_type)
        rank = len(self.shapes[self.bn.input[0]])
        scale_name = _unique(graph, self.bn.output[0] + "_scale")
        graph.initializer.append(numpy_helper.from_array(scale.reshape(-1, *[1] * (rank - 2)).astype(dtype), scale_name))
        bn = _node(graph, self.bn.output[0])
        bn.CopyFrom(helper.make_node("Mul", [self.bn.input[0], scale_name], list(self.bn.output), name=bn.name))
        layer = _node(graph, self.layer.output[0])
        if layer.op_type == "Conv":  # per input channel, broadcast over the positions
            shift = shift.reshape(-1, *[1] * (len(self.shapes[layer.input[0]]) - 2))
        shift_name = _unique(graph, layer.input[0] + "_shift")
        shifted = _unique(graph, layer.input[0] + "_shifted")
        graph.initializer.append(numpy_helper.from_array(shift.astype(dtype), shift_name))
        graph.node.insert(list(graph.node).index(layer), helper.make_node("Add", [layer.input[0], shift_name], [shifted]))
        layer.input[0] = shifted

    def _carry(self, per_channel: np.ndarray) -> np.ndarray | None:
        """The per-channel vector carried through the path to the layer's input: per input channel of a
        conv, per feature of a matmul; None when positions of one channel or feature disagree."""
        shape = self.shapes[self.bn.input[0]]
        tensor = np.broadcast_to(per_channel.reshape([1, -1] + [1] * (len(shape) - 2)), shape)
        for node in self.path:
            if node.op_type == "MaxPool":  # of a constant per channel: the same constants, pooled shape
                tensor = np.broadcast_to(tensor.reshape(*tensor.shape[:2], -1)[:, :, :1].reshape(
                    tensor.shape[:2] + (1,) * (tensor.ndim - 2)), self.shapes[node.output[0]])
                continue
            feeds = {name: numpy_helper.to_array(self.values[name]) for name in node.input[1:] if name}
            tensor = ReferenceEvaluator(node).run(None, {node.input[0]: np.ascontiguousarray(tensor), **feeds})[0]
        if self.layer.op_type == "Conv":
            rows = np.moveaxis(tensor, 1, -1).reshape(-1, tensor.shape[1])
        else:
            rows = tensor.reshape(-1, tensor.shape[-1])
        return rows[0].astype(np.float64) if (rows == rows[:1]).all() else None


def _affine(bn: onnx.NodeProto, values: dict) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) with BN(x) = a·x + b per channel, in float64."""
    gamma, beta, mean, var = (numpy_helper.to_array(values[name]).astype(np.float64) for name in bn.input[1:5])
    scale = gamma / np.sqrt(var + _attr(bn, "epsilon", 1e-5))
    return scale, beta - scale * mean


def _relu_output(node, values: dict) -> bool:
    """A ReLU, or a Clip whose lower bound is the constant 0 (ReLU6)."""
    if node is None:
        return False
    if node.op_type == "Relu":
        return True
    if node.op_type == "Clip" and len(node.input) > 1 and node.input[1] in values:
        return float(numpy_helper.to_array(values[node.input[1]]).reshape(())) == 0.0
    return False


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Value name → static shape, as ONNX shape inference finds them."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = info.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[info.name] = tuple(int(d.dim_value) for d in dims)
    return shapes


def _node(graph: onnx.GraphProto, output: str) -> onnx.NodeProto:
    return next(node for node in graph.node if output in node.output)


def _attr(node: onnx.NodeProto, name: str, default):
    found = next((a for a in node.attribute if a.name == name), None)
    return default if found is None else helper.get_attribute_value(found)


def _unique(graph: onnx.GraphProto, name: str) -> str:
    taken = {init.name for init in graph.initializer} | {out for node in graph.node for out in node.output}
    candidate, index = name, 1
    while candidate in taken:
        index += 1
        candidate = f"{name}_{index}"
    return candidate

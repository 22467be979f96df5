"""Apply a plan or config to an ONNX model's weights, outside TVM.

This is the independent reference the tests and benchmarks compare the
compiled model against (onnxruntime running the model whose weights are
replaced by the summed TASD terms), and the way to use a plan in any other
toolchain. The reduction axis of each weight follows from the node that
consumes it (``docs/semantics.md`` §1): ``MatMul`` (K, N) → axis 0, ``Gemm``
→ axis 0, or 1 with ``transB=1``, ``Conv`` OIHW → axis 1. A series that
does not fit its weight's grouped axis leaves it dense, as in the pass.

Every path (this one, :func:`tvm_tasd.frontend.load_onnx` and with it the
pass, the evaluators and the search) first puts the model in one
:func:`canonical` form, so all of them name and approximate the same
weights: :func:`fold_weights` turns weights computed from constants
(``Constant`` nodes, a ``Transpose`` of an initializer, …) into initializers,
:func:`~tvm_tasd.batchnorm_fold.fold_batchnorm_into_conv` folds a batch norm
that follows a conv into its weight and bias (so the weight a plan names is
the folded one), and :func:`~tvm_tasd.batchnorm_fold.fold_batchnorm_after_relu`
folds a batch norm that follows a ReLU into the next layer, so it sees the
ReLU's zeros.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from .batchnorm_fold import fold_batchnorm_after_relu, fold_batchnorm_into_conv
from .config import TASDConfig
from .plan import Plan
from .policy import Choice


#: ONNX ops whose second input is the weight a TASD layer decomposes.
LAYER_OPS = ("MatMul", "Gemm", "Conv")


def fold_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every layer weight that is computed from constants (a ``Constant`` node, a
    ``Transpose`` of an initializer, …) replaced by an initializer of the same tensor name.

    Then every path — the pass, the evaluators, the ONNX reference — sees the
    weight as an initializer and names the layer by it. The model is returned
    as it is when nothing needs folding.
    """
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    constant = set(initializers) | {""}  # "" is an omitted optional input
    producers = {}
    for node in graph.node:
        producers.update((out, node) for out in node.output)
        if node.input and all(name in constant for name in node.input) or node.op_type == "Constant":
            constant.update(node.output)
    targets = [node.input[1] for node in graph.node if node.op_type in LAYER_OPS and len(node.input) > 1
               and node.input[1] in constant and node.input[1] not in initializers]
    if not targets:
        return model
    needed, todo = set(), list(dict.fromkeys(targets))
    while todo:
        node = producers[todo.pop()]
        if id(node) not in needed:
            needed.add(id(node))
            todo += [name for name in node.input if name and name not in initializers]
    nodes = [node for node in graph.node if id(node) in needed]
    used = {name for node in nodes for name in node.input}
    subgraph = helper.make_graph(nodes, "weights", [], [helper.make_tensor_value_info(t, 0, None) for t in targets],
                                 [init for init in graph.initializer if init.name in used])
    values = ReferenceEvaluator(helper.make_model(subgraph, opset_imports=model.opset_import)).run(None, {})
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    folded.graph.initializer.extend(numpy_helper.from_array(np.asarray(v), t) for t, v in zip(targets, values))
    kept = [node for node in folded.graph.node if not set(node.output) & set(targets)]
    while True:  # drop what only fed the folded weights
        read = {name for node in kept for name in node.input} | {out.name for out in folded.graph.output}
        alive = [node for node in kept if set(node.output) & read]
        if len(alive) == len(kept):
            break
        kept = alive
    del folded.graph.node[:]
    folded.graph.node.extend(kept)
    return folded


def canonical(model: onnx.ModelProto) -> onnx.ModelProto:
    """The form every path works on: computed weights folded, then batch norms into the convs before them,
    then batch norms after ReLUs."""
    return fold_batchnorm_after_relu(fold_batchnorm_into_conv(fold_weights(model)))


def weight_axes(model: onnx.ModelProto) -> dict[str, int]:
    """Initializer name → reduction axis, for initializers used as layer weights."""
    inits = {i.name for i in model.graph.initializer}
    axes = {}
    for node in model.graph.node:
        if len(node.input) < 2 or node.input[1] not in inits:
            continue
        if node.op_type == "MatMul":
            axes[node.input[1]] = 0
        elif node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axes[node.input[1]] = 1 if trans_b else 0
        elif node.op_type == "Conv":
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            if group == 1:
                axes[node.input[1]] = 1
    return axes


def approximate_onnx(model: onnx.ModelProto, config=None, plan=None) -> onnx.ModelProto:
    """A copy of ``model`` in :func:`canonical` form with each layer weight replaced by its TASD approximation."""
    if (config is None) == (plan is None):
        raise ValueError("give exactly one of config= or plan=")
    choices = Plan.coerce(plan).by_name() if plan is not None else None
    uniform = TASDConfig.parse(config) if config is not None else None
    model = canonical(model)
    axes = weight_axes(model)
    out = copy.deepcopy(model)
    for init in out.graph.initializer:
        if init.name not in axes:
            continue
        weight = numpy_helper.to_array(init)
        choice = choices.get(init.name) if choices is not None else Choice(init.name, uniform)
        if weight.ndim not in (2, 4) or choice is None or choice.weight.is_dense:
            continue
        if not choice.weight.fits(weight.shape[axes[init.name]]):
            continue
        init.CopyFrom(numpy_helper.from_array(choice.approximated(weight, axes[init.name]), init.name))
    return out

"""Apply a plan or config to an ONNX model's weights, outside TVM.

This is the independent reference the tests and benchmarks compare the
compiled model against (onnxruntime running the model whose weights are
replaced by the summed TASD terms), and the way to use a plan in any other
toolchain. The reduction axis of each weight follows from the node that
consumes it (DESIGN §2): ``MatMul`` (K, N) → axis 0, ``Gemm`` → axis 0, or 1
with ``transB=1``, ``Conv`` OIHW → axis 1. Weights with fewer entries on
that axis than the series' largest M stay dense, as in the pass.
"""

from __future__ import annotations

import copy

import onnx
from onnx import numpy_helper

from .config import TASDConfig
from .decompose import approximate
from .plan import Plan


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
    """A copy of ``model`` with each layer weight replaced by its TASD approximation."""
    if (config is None) == (plan is None):
        raise ValueError("give exactly one of config= or plan=")
    choices = Plan.coerce(plan).by_name() if plan is not None else None
    uniform = TASDConfig.parse(config) if config is not None else None
    axes = weight_axes(model)
    out = copy.deepcopy(model)
    for init in out.graph.initializer:
        if init.name not in axes:
            continue
        weight = numpy_helper.to_array(init)
        if weight.ndim not in (2, 4):
            continue
        if choices is not None:
            entry = choices.get(init.name)
            if entry is None:
                continue
            series, score = entry.weight, entry.selection_score
        else:
            series, score = uniform, "magnitude"
        if series.is_dense or weight.shape[axes[init.name]] < series.max_m:
            continue
        approx = approximate(weight, series, axis=axes[init.name], score=score, name=init.name)
        init.CopyFrom(numpy_helper.from_array(approx, init.name))
    return out

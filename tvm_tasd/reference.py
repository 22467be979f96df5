"""Apply a plan or config to an ONNX model's weights, outside TVM.

This is the independent reference the tests and benchmarks compare the
compiled model against (onnxruntime running the model whose weights are
replaced by the summed TASD terms), and the way to use a plan in any other
toolchain. The reduction axis of each weight follows from the node that
consumes it (``docs/semantics.md`` §1): ``MatMul`` (K, N) → axis 0, ``Gemm``
→ axis 0, or 1 with ``transB=1``, ``Conv`` OIHW → axis 1. A series that
does not fit its weight's grouped axis leaves it dense, as in the pass.
"""

from __future__ import annotations

import copy

import onnx
from onnx import numpy_helper

from .config import TASDConfig
from .decompose import approximate
from .plan import Plan
from .policy import Choice


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
        choice = choices.get(init.name) if choices is not None else Choice(init.name, uniform)
        if weight.ndim not in (2, 4) or choice is None or choice.weight.is_dense:
            continue
        if not choice.weight.fits(weight.shape[axes[init.name]]):
            continue
        approx = approximate(weight, choice.weight, axis=axes[init.name], score=choice.selection_score, name=init.name)
        init.CopyFrom(numpy_helper.from_array(approx, init.name))
    return out

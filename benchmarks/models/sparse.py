"""Reproducible unstructured-sparse variants of a model (the paper's sparse inputs).

``prune_onnx(model, 0.7)`` zeroes the 70 % smallest-magnitude entries of
every layer weight (the initializers :func:`~tvm_tasd.reference.weight_axes`
finds), layer by layer; ties at the threshold are broken by position, so the
result is deterministic. The pruned model is the "original" its own search
is judged against, as in the paper: TASD then has to recover structure from
an unstructured-sparse weight, with no fine-tuning.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import numpy_helper

from tvm_tasd.reference import weight_axes


def magnitude_prune(weight: np.ndarray, sparsity: float) -> np.ndarray:
    """``weight`` with its ``sparsity`` share of smallest |values| set to zero."""
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    flat = weight.reshape(-1)
    drop = int(round(sparsity * flat.size))
    order = np.argsort(np.abs(flat), kind="stable")  # equal magnitudes: lower position dropped first
    pruned = flat.copy()
    pruned[order[:drop]] = 0
    return pruned.reshape(weight.shape)


def prune_onnx(model: onnx.ModelProto, sparsity: float) -> onnx.ModelProto:
    """A copy of ``model`` whose layer weights are magnitude-pruned to ``sparsity``."""
    out = copy.deepcopy(model)
    layers = weight_axes(out)
    for init in out.graph.initializer:
        if init.name in layers:
            pruned = magnitude_prune(numpy_helper.to_array(init), sparsity)
            init.CopyFrom(numpy_helper.from_array(pruned, init.name))
    return out

"""Evaluating a model many times with layer weights replaced: the search's measuring instrument.

One contract (:class:`~tvm_tasd.evaluation.base.WeightFedModel`), two
implementations — onnxruntime for ONNX models
(:class:`~tvm_tasd.evaluation.onnx.OnnxWeightFedModel`) and one TVM build
for Relax modules (:class:`~tvm_tasd.evaluation.relax.RelaxWeightFedModel`)
— plus calibration statistics and quality metrics. :func:`open_model`
picks the implementation for a model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import tvm

from .base import Outputs, WeightFedModel
from .calibration import CalibrationStats, Feed
from .metrics import Metric, accuracy_metric, cosine_metric, top1_metric
from .onnx import OnnxWeightFedModel
from .relax import RelaxWeightFedModel


def open_model(model, calibration: Iterable[Feed], *, params: Mapping[str, np.ndarray] | None = None,
               activation_groups: Mapping[str, int] | None = None,
               activation_fed_groups: int | None = None) -> WeightFedModel:
    """The evaluator for ``model``: a Relax ``IRModule`` (weights bound, or named in ``params``)
    or an ONNX model (a path or ``ModelProto``)."""
    if isinstance(model, tvm.IRModule):
        return RelaxWeightFedModel(model, calibration, params, activation_groups, activation_fed_groups)
    if params is not None:
        raise ValueError("params= gives the weights of an IRModule that takes them as inputs; an ONNX model carries its own")
    return OnnxWeightFedModel(model, calibration, activation_groups, activation_fed_groups)


def calibrate(model, calibration: Iterable[Feed], *, params: Mapping[str, np.ndarray] | None = None,
              progress: bool = True, hessians: bool = False) -> CalibrationStats:
    """Channel norms, nonzero density and ReLU feeding of every layer input, in one pass (any model);
    ``hessians`` adds H = XᵀX of the matmul and ungrouped conv layers (``calibration.takes_hessian``)."""
    return open_model(model, calibration, params=params).calibrate(progress, hessians)


__all__ = [
    "CalibrationStats",
    "Feed",
    "Metric",
    "OnnxWeightFedModel",
    "Outputs",
    "RelaxWeightFedModel",
    "WeightFedModel",
    "accuracy_metric",
    "calibrate",
    "cosine_metric",
    "open_model",
    "top1_metric",
]

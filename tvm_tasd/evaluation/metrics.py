"""Quality metrics over a model's outputs on the calibration batches (higher is better).

A metric is ``callable(outputs) -> float`` where ``outputs`` is, per batch,
the list of the model's outputs. The built-in ones score the first output:
``cosine`` and ``top1`` against the original model's outputs, ``accuracy``
against labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .base import Outputs

Metric = Callable[[Outputs], float]
NAMES = ("cosine", "top1", "accuracy")


def _first_output(outputs: Outputs) -> np.ndarray:
    return np.concatenate([batch[0] for batch in outputs])


def cosine_metric(reference: Outputs) -> Metric:
    """Mean cosine similarity of each sample's first output to the original model's."""
    ref = _first_output(reference).reshape(len(_first_output(reference)), -1)

    def metric(outputs: Outputs) -> float:
        out = _first_output(outputs).reshape(ref.shape)
        num = (out * ref).sum(1)
        den = np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1)
        return float(np.mean(num / np.maximum(den, 1e-30)))

    return metric


def top1_metric(reference: Outputs) -> Metric:
    """Share of samples whose arg-max class equals the original model's."""
    ref = _first_output(reference).argmax(-1)
    return lambda outputs: float((_first_output(outputs).argmax(-1) == ref).mean())


def accuracy_metric(labels: np.ndarray) -> Metric:
    """Share of samples whose arg-max class is the label."""
    labels = np.asarray(labels).reshape(-1)
    return lambda outputs: float((_first_output(outputs).argmax(-1) == labels).mean())


def resolve_metric(metric: "str | Metric", labels, reference: Outputs) -> tuple[Metric, str]:
    """(the metric function, its name) for a metric name or callable."""
    if callable(metric):
        return metric, getattr(metric, "__name__", "custom")
    if metric == "cosine":
        return cosine_metric(reference), metric
    if metric == "top1":
        return top1_metric(reference), metric
    if metric == "accuracy":
        return accuracy_metric(labels), metric
    raise ValueError(f"unknown metric {metric!r}: use 'cosine', 'top1', 'accuracy' or a callable(outputs) -> float")


def score(metric: Metric, outputs: Outputs) -> float:
    """The metric's value, which must be a finite number."""
    value = float(metric(outputs))
    if not math.isfinite(value):
        raise ValueError(f"the metric returned {value}: it must be a finite number")
    return value

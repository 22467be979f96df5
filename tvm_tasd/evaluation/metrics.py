"""Quality metrics over a model's outputs on the calibration batches (higher is better).

A metric is ``callable(outputs) -> float`` where ``outputs`` is, per batch,
the list of the outputs it scores. The built-in ones: ``cosine`` (mean
per-sample cosine similarity to the original model, over every scored
output concatenated) and ``top1`` (arg-max agreement with the original) and
``accuracy`` (arg-max against labels), the last two on one output.

Which outputs are scored (:func:`scored_outputs`) is never a silent guess:
an output that is not float, or that no layer weight influences (an input
passed through, a shape), cannot show what TASD does to the model, so it is
refused when named and skipped otherwise; when several remain and the
metric needs one, the user must name it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from .base import Outputs, OutputSpec

Metric = Callable[[Outputs], float]
NAMES = ("cosine", "top1", "accuracy")
_ONE_OUTPUT = ("top1", "accuracy")


def scored_outputs(specs: list[OutputSpec], requested: Sequence[str] | None, metric) -> list[int]:
    """Indices of the outputs ``metric`` scores: those ``requested`` by name, else every float output a
    layer influences (all of them for a callable metric that is given no names)."""
    names = [spec.name for spec in specs]
    if requested is not None:
        if isinstance(requested, str):
            requested = [requested]
        chosen = []
        for name in requested:
            if name not in names:
                raise ValueError(f"the model has no output {name!r}; its outputs are {names}")
            spec = specs[names.index(name)]
            if spec.dtype.kind != "f":
                raise ValueError(f"output {name!r} is {spec.dtype}, not float: a quality metric cannot score it")
            if not spec.influenced:
                raise ValueError(f"no layer weight influences output {name!r} (an input passed through, a shape or "
                                 "a constant): TASD cannot change it, so it cannot measure quality")
            chosen.append(names.index(name))
    elif callable(metric):
        return list(range(len(specs)))
    else:
        chosen = [i for i, spec in enumerate(specs) if spec.dtype.kind == "f" and spec.influenced]
        if not chosen:
            described = ", ".join(f"{s.name} ({s.dtype}{'' if s.influenced else ', no layer reaches it'})" for s in specs)
            raise ValueError(f"no output can show the quality: none is a float output a layer influences ({described})")
    if not chosen:
        raise ValueError("give at least one output to score")
    if metric in _ONE_OUTPUT and len(chosen) > 1:
        raise ValueError(f"metric {metric!r} scores one output and the model has {len(chosen)} that could be it "
                         f"({', '.join(names[i] for i in chosen)}): name one (outputs=[NAME]; tasd search --model-output NAME)")
    return chosen


def _samples(outputs: Outputs) -> np.ndarray:
    """One row per sample: the scored outputs of each batch, flattened after their first axis and concatenated."""
    rows = []
    for batch in outputs:
        sizes = {len(o) for o in batch}
        if len(sizes) != 1:
            raise ValueError(f"the scored outputs disagree on the samples per batch {sorted(sizes)}: score one of them")
        rows.append(np.concatenate([np.reshape(o, (len(o), -1)) for o in batch], axis=1))
    return np.concatenate(rows)


def _first_output(outputs: Outputs) -> np.ndarray:
    return np.concatenate([batch[0] for batch in outputs])


def cosine_metric(reference: Outputs) -> Metric:
    """Mean cosine similarity of each sample's scored outputs to the original model's."""
    ref = _samples(reference)

    def metric(outputs: Outputs) -> float:
        out = _samples(outputs)
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

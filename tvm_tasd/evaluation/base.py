"""The contract every evaluator keeps: one build, run many times with layer weights fed per run.

The search scores many candidate plans on the same calibration data;
rebuilding an onnxruntime session or recompiling with TVM per candidate
would dominate its time. A :class:`WeightFedModel` builds its model once
with every replaceable layer weight as an *input*, and :meth:`run` feeds
the original weights or replacements. It also:

* emulates activation series (``docs/semantics.md`` §6; along K, or a
  conv's input channels): a layer named in
  ``activation_groups`` (layer → M) — or, with ``activation_fed_groups=M``, every
  layer fed by a ReLU, GELU or Swish (``Layer.activation_fed``) that takes
  groups of M — gets a keep-count input
  (:func:`~tvm_tasd.evaluation.keep_top.keep_top` before the layer), fed per
  run; M means "keep everything";
* measures :class:`~tvm_tasd.evaluation.calibration.CalibrationStats` of
  every layer input in one pass (:meth:`calibrate`).

Implementations: :class:`~tvm_tasd.evaluation.onnx.OnnxWeightFedModel`
(onnxruntime) and :class:`~tvm_tasd.evaluation.relax.RelaxWeightFedModel`
(one TVM build).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..layer import Layer
from .calibration import CalibrationStats, Feed

Outputs = list[list[np.ndarray]]  # per calibration batch, the model's outputs


@dataclass(frozen=True)
class OutputSpec:
    """One output of the model: its name, dtype, and whether any layer weight influences it."""

    name: str
    dtype: np.dtype
    influenced: bool  # False: TASD cannot change it (an input passed through, a shape, a constant)


class WeightFedModel(ABC):
    """A model built once, run on its calibration batches with layer weights fed per run.

    A subclass reads its model, then calls this constructor with the checked
    calibration feeds, every matched layer (program order), and the
    replaceable weights (name → (original value, reduction axis)); it
    implements :meth:`_inputs`, :meth:`_run` and :meth:`calibrate`, building
    its executable for :attr:`activation_groups`.
    """

    def __init__(self, calibration: list[Feed], layers: list[Layer], weights: Mapping[str, tuple[np.ndarray, int]],
                 activation_groups: Mapping[str, int] | None, activation_fed_groups: int | None):
        self.calibration = calibration
        self.layers = layers
        self._weights = {name: value for name, (value, _) in weights.items()}
        self._axes = {name: axis for name, (_, axis) in weights.items()}
        for value in self._weights.values():
            value.flags.writeable = False  # handed to callers; the reference must stay intact
        groups = {name: int(m) for name, m in (activation_groups or {}).items()}
        takes = {layer.name for layer in layers if layer.name in self._weights and layer.takes_activation_groups(1)}
        unknown = sorted(set(groups) - takes)
        if unknown:
            raise ValueError(f"activation series need eligible matmul or ungrouped conv layers; not such layers: {unknown}")
        if activation_fed_groups:
            for layer in layers:
                if layer.name in takes and layer.activation_fed and layer.takes_activation_groups(activation_fed_groups):
                    groups.setdefault(layer.name, activation_fed_groups)
        self._groups = groups
        self.evaluations = 0

    @abstractmethod
    def _inputs(self, weights: Mapping[str, np.ndarray], keeps: Mapping[str, int]) -> dict[str, np.ndarray]:
        """What the executable takes, besides a batch, for every replaceable weight and keep count."""

    @abstractmethod
    def _run(self, batch: Feed, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The model's outputs on one batch, given :meth:`_inputs`."""

    @abstractmethod
    def calibrate(self, progress: bool = True, hessians: bool = False,
                  feeds: list[Feed] | None = None) -> CalibrationStats:
        """Statistics of every layer input, original weights, one pass over the calibration batches (or
        ``feeds``, e.g. those :meth:`hold_out` set aside for fitting); ``hessians`` adds H = XᵀX of every
        layer input :func:`~tvm_tasd.evaluation.calibration.takes_hessian` accepts (for OBS reconstruction)."""

    @property
    @abstractmethod
    def output_names(self) -> list[str]:
        """The model's outputs, in the order :meth:`run` returns them."""

    @cached_property
    def outputs(self) -> list[OutputSpec]:
        """Every output with its dtype and whether a layer weight influences it.

        Measured, for both evaluators alike: the first batch runs once as it is
        and once with every replaceable weight perturbed; an output that does
        not move is one no layer reaches.
        """
        reference, perturbed = self.run(batches=1)[0], self.run(self._perturbed(), batches=1)[0]
        return [OutputSpec(name, a.dtype, a.dtype.kind == "f" and not np.array_equal(a, b))
                for name, a, b in zip(self.output_names, reference, perturbed)]

    def _perturbed(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(0)
        return {name: w + (np.abs(w).mean() + 1.0) * rng.standard_normal(w.shape).astype(w.dtype)
                for name, w in self._weights.items()}

    @property
    def layer_names(self) -> list[str]:
        """The layer weights a run can replace, in program order."""
        return list(self._weights)

    @property
    def activation_groups(self) -> dict[str, int]:
        """Layers with an emulated activation series (layer → M)."""
        return dict(self._groups)

    @property
    def relu_fed(self) -> frozenset[str]:
        """Replaceable layers whose input is a ReLU's output."""
        return frozenset(layer.name for layer in self.layers if layer.relu_fed and layer.name in self._weights)

    def original(self, name: str) -> np.ndarray:
        """The model's own value of a layer weight."""
        return self._weights[self._known(name)]

    def axis(self, name: str) -> int:
        """Reduction axis of a layer weight (docs/semantics.md §1)."""
        return self._axes[self._known(name)]

    def run(self, weights: Mapping[str, np.ndarray] | None = None, batches: int | None = None,
            keeps: Mapping[str, int] | None = None, feeds: list[Feed] | None = None) -> Outputs:
        """Outputs on the calibration batches (the first ``batches`` of them, default all; or
        on other ``feeds`` of the same inputs), with ``weights`` replacing the originals they
        name and ``keeps`` setting the activation keep counts (default: M, i.e. the activation
        untouched)."""
        fed = dict(self._weights)
        for name, value in (weights or {}).items():
            original = self._weights[self._known(name)]
            if np.shape(value) != original.shape:
                raise ValueError(f"weight {name!r} has shape {np.shape(value)}, the model's is {original.shape}")
            fed[name] = np.ascontiguousarray(value, dtype=original.dtype)
        unknown = set(keeps or {}) - set(self._groups)
        if unknown:
            raise ValueError(f"no activation keep count for {sorted(unknown)}; pass them in activation_groups")
        inputs = self._inputs(fed, {name: int((keeps or {}).get(name, m)) for name, m in self._groups.items()})
        self.evaluations += 1
        return [self._run(batch, inputs) for batch in (self.calibration if feeds is None else feeds)[:batches]]

    def hold_out(self, count: int, first: bool = False) -> list[Feed]:
        """Keep the last ``count`` calibration batches (the first ones with ``first``) out of :meth:`run` and
        :meth:`calibrate` from now on; returns them, checked like the rest, to run on with ``run(feeds=…)``
        or to calibrate on with ``calibrate(feeds=…)``."""
        if count <= 0:
            return []
        if first:
            held_out, self.calibration = self.calibration[:count], self.calibration[count:]
        else:
            held_out, self.calibration = self.calibration[-count:], self.calibration[:-count]
        return held_out

    def _known(self, name: str) -> str:
        if name not in self._weights:
            raise ValueError(f"{name!r} is not a replaceable layer weight of this model; layers: {self.layer_names}")
        return name


def plan_feeds(plan) -> tuple[dict[str, int], dict[str, int]]:
    """(activation groups, keep counts) that emulate a plan's activation series (one M per series)."""
    with_activation = [c for c in plan.layers if c.activation is not None and not c.activation.is_dense]
    return ({c.name: c.activation.max_m for c in with_activation},
            {c.name: sum(t.n for t in c.activation.terms) for c in with_activation})


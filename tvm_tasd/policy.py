"""Per-layer decisions: which series each layer runs, and why — one :class:`Choice` per layer.

:class:`Policy` is the one place that turns what the user asked for — a
plan (layer name → choice, what TASDER emits), one uniform series, or a
weight-error threshold (the cheapest series whose weight error stays under
it; an explicit, warned choice, since nothing then checks the model's
quality: on compact CNNs it can destroy the model) —
and what the hardware runs into a :class:`Choice` per layer
(:meth:`Policy.decide`). Everything downstream reads those values: the
Relax pass emits kernels for them, the report explains them, the ONNX
reference applies them, and a plan file is their serialisation
(:meth:`Choice.to_json`). Nothing here needs TVM.

A requested series is checked against the layer and the target: it must
fit the layer's grouped axis (``docs/semantics.md`` §1), and every term must
run faster than dense on the target (§5); otherwise the layer stays dense
and the choice's ``reason`` says why (a :class:`TASDWarning` too, when the
user asked for something the target cannot do).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .candidates import cheapest_within_error
from .config import TASDConfig
from .decompose import NMTerm, approximate, decompose, relative_error
from .hardware import HardwareTarget
from .io import fingerprint
from .layer import Layer

if TYPE_CHECKING:
    from .plan import Plan

#: How a layer's series is taken from its weight: the largest |w| (the paper's rule), the largest |w|·s_k
#: (Wanda-style, s the input channel norms), or an OBS reconstruction from the input Hessian (docs/semantics.md §3).
METHODS = ("magnitude", "activation", "obs")


class TASDWarning(UserWarning):
    """A layer was left dense for a reason the user may want to fix."""


@dataclass(frozen=True)
class SearchStats:
    """What TASDER measured for the option it chose for one layer (docs/tasder.md)."""

    proxy_error: float  # relative output error ‖(W − Ŵ)·s‖ / ‖W·s‖
    sensitivity: float  # α: predicted quality loss per unit of proxy error squared
    energy_pj: float  # modelled, this layer with this option
    latency_s: float
    edp_vs_dense: float  # this layer's EDP with this option ÷ the layer run dense

    @property
    def predicted_damage(self) -> float:
        """This layer's share of the search's additive quality-loss model, α·e²."""
        return self.sensitivity * self.proxy_error**2


_STATS_FIELDS = tuple(f.name for f in dataclasses.fields(SearchStats))


@dataclass(frozen=True, eq=False)
class Choice:
    """What one layer runs: its weight series, activation series, method, and why.

    ``method`` says how the series is taken from the weight (:data:`METHODS`):
    ``s`` is the per-channel scale of ``activation``; ``obs`` carries its
    ``terms`` already made (compressed, in the weight's own layout, values
    re-fitted to the calibration Hessian with damping ``damp``), because
    they cannot be remade without that data. ``stats`` are TASDER's numbers
    when a search chose it. ``source`` is the content fingerprint of the
    dense weight the choice was made for (:func:`tvm_tasd.io.fingerprint`;
    searches record it): applying the choice to other weight values is an
    error, since masks, scales and OBS terms were fitted to those values.
    """

    name: str
    weight: TASDConfig = field(default_factory=TASDConfig.dense)
    activation: TASDConfig | None = None
    method: str = "magnitude"
    s: np.ndarray | None = field(default=None, repr=False)
    reason: str = ""
    stats: SearchStats | None = None
    damp: float | None = None
    terms: tuple[NMTerm, ...] | None = field(default=None, repr=False)
    source: str | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a layer name is a non-empty string, got {self.name!r}")
        # frozen: the inputs are normalised once, here
        object.__setattr__(self, "weight", TASDConfig.parse(self.weight))
        if self.activation is not None:
            object.__setattr__(self, "activation", TASDConfig.parse(self.activation))
        if self.method not in METHODS:
            raise ValueError(f"layer {self.name!r}: method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method == "activation" and self.s is None:
            raise ValueError(f"layer {self.name!r}: method 'activation' needs its scale vector 's'")
        if self.s is not None:
            s = np.asarray(self.s, np.float32)
            if s.ndim != 1 or not np.all(np.isfinite(s)) or np.any(s < 0):
                raise ValueError(f"layer {self.name!r}: 's' must be a list of finite, non-negative channel norms")
            object.__setattr__(self, "s", s)
        if self.method == "obs" and (isinstance(self.damp, bool) or not isinstance(self.damp, (int, float))
                                     or not 0 <= self.damp < 1):
            raise ValueError(f"layer {self.name!r}: method 'obs' needs its damping 'damp' in [0, 1), got {self.damp!r}")
        if self.terms is not None:
            if self.method != "obs":
                raise ValueError(f"layer {self.name!r}: only method 'obs' carries its terms")
            object.__setattr__(self, "terms", tuple(self.terms))
            if tuple(t.pattern for t in self.terms) != self.weight.terms:
                raise ValueError(f"layer {self.name!r}: its terms are {'+'.join(str(t.pattern) for t in self.terms)}, "
                                 f"not the series {self.weight}")

    @property
    def selection_score(self):
        """What :func:`tvm_tasd.decompose` takes as ``score`` (magnitude and activation methods)."""
        return self.s if self.method == "activation" else "magnitude"

    @property
    def rewrites(self) -> bool:
        """Whether the layer runs anything but its dense self."""
        return not self.weight.is_dense or self.activation is not None

    def replace(self, **changes) -> "Choice":
        return dataclasses.replace(self, **changes)

    def decomposed(self, weight: np.ndarray, axis: int, *, verify: bool = True) -> list[NMTerm]:
        """The compressed terms this choice runs for ``weight`` (reduction axis ``axis``); ``verify=False``
        skips hashing ``weight`` against :attr:`source` where the caller has checked it."""
        if verify:
            self.check_source(weight)
        if self.method != "obs":
            return decompose(weight, self.weight, axis=axis, score=self.selection_score, name=self.name)
        self.check_applicable()
        if self.terms and (self.terms[0].shape != weight.shape or self.terms[0].axis != axis):
            raise ValueError(f"layer {self.name!r}: the plan's terms are for a weight of shape {self.terms[0].shape} "
                             f"(axis {self.terms[0].axis}), the model's is {weight.shape} (axis {axis}): a plan for "
                             "another model?")
        return list(self.terms)

    def check_applicable(self) -> None:
        """Raise unless the choice carries what applying it needs (an ``obs`` series its terms)."""
        if self.method == "obs" and not self.weight.is_dense and self.terms is None:
            raise ValueError(f"layer {self.name!r}: its OBS-reconstructed terms are not loaded (they are kept beside "
                             "the plan, in the .weights.npz that Plan.save writes; load the plan with Plan.load)")

    def approximated(self, weight: np.ndarray, axis: int, *, verify: bool = True) -> np.ndarray:
        """``weight`` as this choice runs it: the sum of its terms (``verify`` as in :meth:`decomposed`)."""
        if self.weight.is_dense:
            return weight
        if verify:
            self.check_source(weight)
        if self.method == "obs":
            return sum(t.dense() for t in self.decomposed(weight, axis, verify=False)).astype(weight.dtype, copy=False)
        return approximate(weight, self.weight, axis=axis, score=self.selection_score, name=self.name)

    def check_source(self, weight: np.ndarray) -> None:
        """Raise unless ``weight`` has the values the choice was made for (when it records them)."""
        if self.source is not None and fingerprint(weight) != self.source:
            raise ValueError(f"layer {self.name!r}: the plan was made for other weight values (fingerprint "
                             f"{self.source}, the model's is {fingerprint(weight)}): a plan for another model or "
                             "another version of it; search this model again")

    def to_json(self) -> dict:
        """The plan-file form (also each entry of the pass's layer table); OBS terms are not in it (Plan.save
        writes them beside the plan)."""
        out = {
            "name": self.name,
            "weight": str(self.weight),
            "activation": None if self.activation is None else str(self.activation),
            "method": self.method,
            "s": None if self.s is None else [float(v) for v in self.s],
        }
        if self.damp is not None:
            out["damp"] = float(self.damp)
        if self.terms:
            out["shape"], out["axis"] = list(self.terms[0].shape), int(self.terms[0].axis)
        if self.source is not None:
            out["source"] = self.source
        if self.reason:
            out["reason"] = self.reason
        if self.stats is not None:
            out.update(dataclasses.asdict(self.stats))
        return out

    @classmethod
    def from_json(cls, entry: dict, terms: list[NMTerm] | None = None) -> "Choice":
        """Read :meth:`to_json`'s form; keys it does not know (a layer table's measurements) are ignored.
        Plans that predate the ``obs`` method name it ``score``."""
        if not isinstance(entry, dict) or not {"name", "weight"} <= set(entry):
            raise ValueError(f"plan layer entry {entry!r} needs at least 'name' and 'weight'")
        stats = SearchStats(**{k: float(entry[k]) for k in _STATS_FIELDS}) if set(_STATS_FIELDS) <= set(entry) else None
        return cls(entry["name"], entry["weight"], entry.get("activation"),
                   entry.get("method", entry.get("score", "magnitude")), entry.get("s"), entry.get("reason", ""), stats,
                   entry.get("damp"), terms, entry.get("source"))


def weight_error(layer: Layer, choice: Choice) -> float:
    """Relative Frobenius error of the layer's weight under ``choice`` (0 when it stays dense)."""
    if choice.weight.is_dense:
        return 0.0
    return relative_error(layer.weight, choice.approximated(layer.weight, layer.axis))


class Policy:
    """How layers are decided for one target: from ``plan``, else ``config``, else automatically.

    ``activation``: one run-time activation series for every layer that can
    take it (a plan carries its own per layer).
    """

    def __init__(self, target: HardwareTarget, config=None, plan: "Plan | None" = None, activation=None,
                 error_threshold: float | None = None):
        if sum(x is not None for x in (config, plan, error_threshold)) != 1:
            raise ValueError(
                "say which series to run, in one way: config='2:8+1:8' (one series everywhere), plan= (per layer, "
                "from tvm_tasd.tasder.search: checked against a quality budget), or error_threshold=E (per layer, "
                "the cheapest series whose weight error is ≤ E: the model's quality is not checked)")
        if error_threshold is not None and (isinstance(error_threshold, bool) or not isinstance(
                error_threshold, (int, float)) or not 0 <= error_threshold <= 1):
            raise ValueError(f"error_threshold is a relative weight error in [0, 1], got {error_threshold!r}")
        self.target = target
        self.config = None if config is None else TASDConfig.parse(config)
        self.plan = plan
        self.entries = {} if plan is None else plan.by_name()
        for entry in self.entries.values():  # before any rewriting starts
            entry.check_applicable()
        self.activation = None if activation is None else TASDConfig.parse(activation)
        self.error_threshold = error_threshold

    def decide(self, layers: Iterable[Layer]) -> dict[str, Choice]:
        """A :class:`Choice` for every layer, by name."""
        layers = list(layers)
        self._check_plan_names(layers)
        if self.error_threshold is not None:
            warnings.warn(f"series chosen per layer by weight error ≤ {self.error_threshold:.0%} alone: nothing checks "
                          "the model's quality (a plan from tasd search / tasder.search does)", TASDWarning, stacklevel=3)
        return {layer.name: self._decide(layer) for layer in layers}

    def _decide(self, layer: Layer) -> Choice:
        choice = self._weight_choice(layer)
        entry = self.entries.get(layer.name)
        requested = entry.activation if entry is not None else self.activation
        if requested is None or requested.is_dense or layer.ineligible:
            return choice.replace(activation=None)
        return choice.replace(activation=self._checked_activation(layer, requested))

    def _weight_choice(self, layer: Layer) -> Choice:
        if layer.ineligible:
            return Choice(layer.name, reason=layer.ineligible)
        if self.plan is not None:
            entry = self.entries.get(layer.name)
            if entry is None:
                return Choice(layer.name, reason="not in the plan: left dense")
            if not entry.weight.is_dense:
                entry.check_source(layer.weight)
            return self._checked(layer, entry.replace(reason="from the plan"))
        if self.config is not None:
            return self._checked(layer, Choice(layer.name, self.config, reason="uniform config"))
        config, error = cheapest_within_error(layer, self.target, self.error_threshold)
        if config.is_dense:
            return Choice(layer.name, reason=f"no supported series keeps the weight error ≤ {self.error_threshold:.0%}")
        return Choice(layer.name, config,
                      reason=f"cheapest series with weight error {error:.1%} ≤ {self.error_threshold:.0%}")

    def _checked(self, layer: Layer, wanted: Choice) -> Choice:
        """``wanted`` if the layer and the target can run it, else the layer dense with the reason."""
        config = wanted.weight
        if config.is_dense:
            return wanted.replace(method="magnitude", s=None, damp=None, terms=None, reason=f"dense ({wanted.reason})")
        if not layer.fits(config):
            what = "input channels" if layer.op == "conv2d" else "reduction length"
            return Choice(layer.name, reason=f"{layer.op} with {layer.grouped_length} {what} < M={config.max_m}: dense")
        slow = [str(t) for t in config.terms if not self.target.accelerates(t)]
        if slow:
            warnings.warn(
                f"layer {layer.name!r}: {self.target.name} cannot run {', '.join(slow)} faster than dense; "
                f"left dense (supported: {', '.join(map(str, self.target.patterns))})",
                TASDWarning,
                stacklevel=4,
            )
            return Choice(layer.name, reason=f"{'+'.join(slow)} not faster than dense on {self.target.name}: dense")
        return wanted

    def _checked_activation(self, layer: Layer, config: TASDConfig) -> TASDConfig | None:
        """``config`` if the layer (eligible: a matmul or an ungrouped conv) and the target can run it on the
        layer's input, else None with a warning."""
        problem = None
        length = layer.k if layer.op == "matmul" else layer.activation_shape[1]
        if not config.fits(length):
            what = "reduction length" if layer.op == "matmul" else "input channels"
            problem = f"{what} {length} < M={config.max_m}"
        elif not all(self.target.accelerates(t, "activation") for t in config.terms):
            problem = f"{self.target.name} cannot run activation series {config} faster than dense"
        if problem:
            warnings.warn(f"layer {layer.name!r}: {problem}; activation left dense", TASDWarning, stacklevel=5)
            return None
        return config

    def _check_plan_names(self, layers: list[Layer]) -> None:
        if self.plan is None:
            return
        known = {layer.name for layer in layers}
        unknown = [entry.name for entry in self.plan.layers if entry.name not in known]
        if unknown and len(unknown) == len(self.plan.layers):
            raise ValueError(
                f"the plan names no layer of this model (e.g. {unknown[0]!r}); is it a plan for another model? "
                f"this model's layers: {', '.join(sorted(known)[:5])}{'…' if len(known) > 5 else ''}"
            )
        if unknown:
            warnings.warn(f"the plan names layers this model does not have: {', '.join(unknown)}", TASDWarning,
                          stacklevel=4)

"""Each layer's candidates, their modelled cost and proxy error, reduced to a frontier.

Per layer, every candidate series (:func:`tvm_tasd.candidates.candidate_configs`)
× method gets its modelled cost and a proxy error, the relative output
error on the calibration data: ``e² = tr(ΔHΔᵀ) / tr(WHWᵀ)`` with
Δ = W − Ŵ when the layer has its input Hessian H = XᵀX (the ``obs``
method needs it — matmul and ungrouped conv layers — and then every method
of the layer is measured on it),
else ``e = ‖Δ·s‖ / ‖W·s‖`` with s the input channel norms (1 without
data) — H's diagonal alone. A
layer fed by a ReLU (exact zeros) or a GELU/Swish (pseudo-density: the
smallest values dropped) on a target with TASD units also gets activation candidates
(weight dense, input decomposed at run time), whose proxy is the relative
output error on a sample of real inputs. Candidates dominated in both cost
and proxy are dropped, leaving a frontier from dense (proxy 0) to cheapest —
and, where activation candidates exist, a second one of the weight series
alone (:attr:`LayerSearch.routes`): the proxies of the two kinds are
measured differently, so an activation series that dominates a weight
series on its proxy can still cost the model more, and the search walks
both.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from ..candidates import candidate_configs
from ..config import TASDConfig
from ..cost import layer_cost
from ..decompose import NMTerm, approximate, decompose, output_error
from ..hardware import HardwareTarget
from ..io import fingerprint
from ..layer import Layer
from ..policy import Choice, SearchStats


@dataclass(frozen=True)
class Candidate:
    """One option of one layer: series, method, modelled cost and proxy error."""

    config: TASDConfig
    method: str
    energy_pj: float
    latency_s: float
    proxy: float
    activation: TASDConfig | None = None  # run-time series of the layer's input (weight then dense)
    terms: tuple[NMTerm, ...] | None = field(default=None, repr=False)  # ``obs``: made once, from the Hessian

    @property
    def edp(self) -> float:
        return self.energy_pj * self.latency_s

    @property
    def keep(self) -> int | None:
        """Activation entries kept per group: a one-M series keeps exactly the top ΣN."""
        return None if self.activation is None else sum(t.n for t in self.activation.terms)


#: Which options each route of a layer walks: every one, or the weight series alone.
ROUTES = {"all": lambda option: True, "weights": lambda option: option.activation is None}


@dataclass
class LayerSearch:
    """A layer under search: its options (dense first, cheapest last) and measured sensitivity α."""

    layer: Layer
    scale: np.ndarray | None
    options: list[Candidate]
    alpha: float = 0.0
    damp: float | None = None  # of the ``obs`` options

    @property
    def name(self) -> str:
        return self.layer.name

    @functools.cached_property
    def routes(self) -> dict[str, tuple[int, ...]]:
        """Indices of the options on each frontier, dense → cheapest: ``"all"`` over every option,
        ``"weights"`` over the weight series alone (the same where the layer has no activation series)."""
        index = {id(option): i for i, option in enumerate(self.options)}
        return {name: tuple(index[id(o)] for o in frontier([o for o in self.options if keep(o)]))
                for name, keep in ROUTES.items()}

    @functools.cached_property
    def source(self) -> str:
        """The weight's fingerprint, which every choice records."""
        return fingerprint(self.layer.weight)

    def feeds(self, option: Candidate) -> tuple[dict, dict]:
        """(weights, activation keep counts) to run this option with."""
        weights = {} if option.config.is_dense else {self.name: self.choice(option).approximated(
            self.layer.weight, self.layer.axis, verify=False)}  # the choice's source is this weight's
        return weights, ({} if option.keep is None else {self.name: option.keep})

    def choice(self, option: "Candidate | int") -> Choice:
        """An option (or its index) as the layer's :class:`~tvm_tasd.policy.Choice`, with the search's numbers."""
        option, dense = self.options[option] if isinstance(option, int) else option, self.options[0]
        stats = SearchStats(round(option.proxy, 6), round(self.alpha, 6), option.energy_pj, option.latency_s,
                            option.edp / dense.edp if dense.edp else 1.0)
        return Choice(self.name, option.config, option.activation, option.method,
                      self.scale if option.method == "activation" else None, stats=stats,
                      damp=self.damp if option.method == "obs" else None, terms=option.terms,
                      source=self.source)


def activation_series(target: HardwareTarget, max_terms: int) -> list[TASDConfig]:
    """Activation series the search tries: faster than dense, all terms of the target's largest M
    (one M, so a series keeps the top ΣN of each group and one fed count emulates it)."""
    if "activation" not in target.sparse_operands:
        return []
    configs = [c for c in candidate_configs(target, max_terms, operand="activation") if not c.is_dense]
    if not configs:
        return []
    m = max(c.max_m for c in configs)
    return [c for c in configs if all(t.m == m for t in c.terms)]


def _proxy(weight: np.ndarray, approx: np.ndarray, axis: int, scale: np.ndarray | None,
           hessian: np.ndarray | None) -> float:
    """Relative output error of ``approx`` on the calibration data (see the module docstring)."""
    if hessian is not None:
        return output_error(weight, approx, axis, hessian)
    diff = np.moveaxis(weight.astype(np.float64) - approx, axis, -1)
    ref = np.moveaxis(weight.astype(np.float64), axis, -1)
    if scale is not None:
        diff, ref = diff * scale, ref * scale
    norm = np.linalg.norm(ref)
    return float(np.linalg.norm(diff) / norm) if norm else 0.0


def frontier(options: list[Candidate]) -> list[Candidate]:
    """Options not dominated in (EDP, proxy), ordered from dense (proxy 0) to cheapest."""
    ordered = sorted(options, key=lambda o: (o.edp, o.proxy))
    kept: list[Candidate] = []
    for option in ordered:
        if all(option.proxy < other.proxy for other in kept):
            kept.append(option)
    return kept[::-1]


def _activation_options(layer: Layer, target: HardwareTarget, configs, sample: np.ndarray) -> list[Candidate]:
    """Weight dense, the input decomposed at run time; proxy = relative output error on a sample (rows of
    the input's channels; a conv's error counted per kernel tap, as if each were a 1×1 conv)."""
    weight = layer.weight_kn if layer.op == "matmul" else np.moveaxis(layer.weight, 1, 0)  # channels first
    weight_kn = weight.reshape(weight.shape[0], -1)
    norm = np.linalg.norm(sample @ weight_kn)
    if layer.input_shift is not None:  # the series decomposes the ReLU-fed part; the shift's share is exact
        sample = sample - layer.input_shift.reshape(-1)
    options = []
    for config in configs:
        error = sample - approximate(sample, config, axis=-1)
        proxy = float(np.linalg.norm(error @ weight_kn) / norm) if norm else 0.0
        cost = layer_cost(target, layer, TASDConfig.dense(), activation=config)
        options.append(Candidate(TASDConfig.dense(), "magnitude", cost.energy_pj, cost.latency_s, proxy, config))
    return options


def layer_options(layer: Layer, target: HardwareTarget, scale: np.ndarray | None, methods, max_terms: int,
                  activation_configs=(), sample: np.ndarray | None = None, hessian: np.ndarray | None = None,
                  damp: float = 0.01) -> list[Candidate]:
    """The layer's options on either frontier (all options; the weight series alone), dense first, cheapest
    last: every fitting weight series × method, and the activation series given. ``obs`` is tried only
    where the layer has a ``hessian``."""
    measurable = activation_configs and sample is not None and len(sample)  # no rows: no error to estimate
    options = _activation_options(layer, target, activation_configs, sample) if measurable else []
    methods = [m for m in methods if m != "obs" or hessian is not None]
    for config in candidate_configs(target, max_terms):
        if not layer.fits(config):
            continue
        cost = layer_cost(target, layer, config)
        for method in methods if not config.is_dense else ("magnitude",):
            terms = None
            if method == "obs" and not layer.reconstructs(config):
                continue
            if method == "obs":
                terms = tuple(decompose(layer.weight, config, axis=layer.axis, name=layer.name, hessian=hessian,
                                        damp=damp))
                approx = sum(t.dense() for t in terms)
            else:
                approx = approximate(layer.weight, config, axis=layer.axis, name=layer.name,
                                     score=scale if method == "activation" else "magnitude")
            options.append(Candidate(config, method, cost.energy_pj, cost.latency_s,
                                     _proxy(layer.weight, approx, layer.axis, scale, hessian), terms=terms))
    on_either = {id(o): o for keep in ROUTES.values() for o in frontier([o for o in options if keep(o)])}
    return sorted(on_either.values(), key=lambda o: (-o.edp, o.proxy))

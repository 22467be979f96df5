"""Per-layer candidate series for a target, and the automatic choice.

Candidates come from the target (``docs/semantics.md`` §5): single terms are the
N:M patterns (M ∈ 2…16) the unit runs faster than dense
(:meth:`~tvm_tasd.hardware.HardwareTarget.speedup`); of the terms that
run as the same hardware pattern only the one keeping the most values
survives (1:8 and 2:8 both run as 2:4 on ``stc-2of4``, so 2:4 itself is the
term to use there). Series chain up to ``max_terms`` such terms, densest
first, and stay only while their modelled time is below dense's. ``dense``
is always a candidate.
"""

from __future__ import annotations

from itertools import combinations_with_replacement

from .config import NMPattern, TASDConfig
from .cost import layer_cost
from .decompose import approximate, relative_error
from .hardware import HardwareTarget
from .layer import Layer

TERM_MS = (2, 4, 8, 16)


def useful_terms(target: HardwareTarget, operand: str = "weight") -> list[NMPattern]:
    """Terms worth using on ``target``, densest first."""
    best: dict[str, NMPattern] = {}
    for m in TERM_MS:
        for n in range(1, m):
            term = NMPattern(n, m)
            run = target.runs(term, operand)
            if target.speedup(run) <= 1.0:
                continue
            key = str(run.pattern)
            kept = best.get(key)
            if kept is None or (term.density, term.m) > (kept.density, kept.m):
                best[key] = term
    return sorted(best.values(), key=lambda t: (-t.density, t.m, t.n))


def candidate_configs(target: HardwareTarget, max_terms: int = 2, operand: str = "weight") -> list[TASDConfig]:
    """``dense`` plus every series of useful terms (densest first) that runs faster than dense."""
    terms = useful_terms(target, operand)
    out = [TASDConfig.dense()]
    for length in range(1, max_terms + 1):
        for combo in combinations_with_replacement(terms, length):
            time = sum(1 / target.speedup(target.runs(t, operand)) for t in combo)  # share of dense time
            if time < 1.0:
                out.append(TASDConfig(tuple(combo)))
    return out


def cheapest_within_error(layer: Layer, target: HardwareTarget, threshold: float) -> tuple[TASDConfig, float]:
    """The lowest-EDP candidate whose relative weight error is ≤ threshold (else dense)."""
    fitting = [c for c in candidate_configs(target) if layer.fits(c)]
    for config in sorted(fitting, key=lambda c: layer_cost(target, layer, c).edp):
        error = 0.0 if config.is_dense else relative_error(layer.weight, approximate(layer.weight, config, axis=layer.axis))
        if error <= threshold:
            return config, error
    return TASDConfig.dense(), 0.0

"""The search's paths: sequences of full assignments (one option index per layer), dense to cheap.

Quality falls (nearly) monotonically along a path, so the search brackets
the furthest state that keeps the budget with real evaluations
(:mod:`tvm_tasd.tasder.state`). A path walks one route of each layer's
options (:attr:`~tvm_tasd.tasder.frontier.LayerSearch.routes`): the frontier
of them all, or of the weight series alone (walked only where a layer has
activation series). The paths verified, each on every route:

* :func:`uniform_path` — one series for every layer, each candidate series
  in turn: one-shot pruning's sensitivity-blind allocation. It is kept
  because the model's damage is not additive across layers: on MiniLM the
  proxy-optimal mixes lose to uniform configs at equal EDP.
* :func:`greedy_path` from all-dense — repeatedly move the layer whose next
  frontier step buys the most model EDP per unit of predicted damage α·e².
* the greedy path again from the route's cheapest winner so far (refine),
  then again from each new winner with the layer whose step broke the
  budget frozen (:func:`blocking_layer`), a few times: one bad step (an
  activation series a layer cannot take, say) no longer hides the cheaper
  steps of other layers behind it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..config import TASDConfig
from ..cost import layer_cost
from ..hardware import HardwareTarget
from .frontier import LayerSearch

State = tuple[int, ...]
#: (energy pJ, latency s) of the model's layers no search moves (depthwise convs, say): they run dense in every
#: state, and count in its EDP as they do in the model's.
Fixed = tuple[float, float]


def _totals(layers: Sequence[LayerSearch], state: State, fixed: Fixed) -> tuple[float, float]:
    """(Σ energy pJ, Σ latency s) of a state over the layers and the ``fixed`` ones."""
    return (fixed[0] + sum(layer.options[i].energy_pj for layer, i in zip(layers, state)),
            fixed[1] + sum(layer.options[i].latency_s for layer, i in zip(layers, state)))


def model_edp(layers: Sequence[LayerSearch], state: State, fixed: Fixed = (0.0, 0.0)) -> float:
    """Modelled model EDP of a state: (Σ energy) × (Σ latency) over the layers and the ``fixed`` ones (pJ·s)."""
    energy, latency = _totals(layers, state, fixed)
    return energy * latency


def uniform_path(layers: Sequence[LayerSearch], target: HardwareTarget, configs: Sequence[TASDConfig],
                 fixed: Fixed = (0.0, 0.0), route: str = "all") -> list[State]:
    """One series for every layer, each config of ``configs`` in turn, from dense to cheapest.

    A layer takes the first option of its ``route`` (dense → cheapest) costing no more than the config
    would on it: the config itself, or what dominated it."""
    states = set()
    for config in configs:
        state = []
        for layer in layers:
            limit = layer_cost(target, layer.layer, config).edp * (1 + 1e-9)
            steps = layer.routes[route]
            state.append(next((i for i in steps if layer.options[i].edp <= limit), steps[-1]))
        states.add(tuple(state))
    states.add((0,) * len(layers))
    return sorted(states, key=lambda state: (-model_edp(layers, state, fixed), state))  # ties: a fixed order


def greedy_path(layers: Sequence[LayerSearch], start: State | None = None, frozen: frozenset[int] = frozenset(),
                fixed: Fixed = (0.0, 0.0), route: str = "all") -> list[State]:
    """Greedy states from ``start`` (default all-dense) to all-cheapest along each layer's ``route``
    (a start option off the route steps to the route's next cheaper one); layers in ``frozen`` keep their
    start option."""
    state = list(start or (0,) * len(layers))
    energy, latency = _totals(layers, state, fixed)
    path = [tuple(state)]
    while True:
        best, best_gain, best_step = None, -math.inf, None
        for i, layer in enumerate(layers):
            step = None if i in frozen else next((j for j in layer.routes[route] if j > state[i]), None)
            if step is None:
                continue
            now, nxt = layer.options[state[i]], layer.options[step]
            new_edp = (energy - now.energy_pj + nxt.energy_pj) * (latency - now.latency_s + nxt.latency_s)
            gain = energy * latency - new_edp
            cost = layer.alpha * (nxt.proxy**2 - now.proxy**2)
            ratio = gain / cost if cost > 0 else math.inf
            if ratio > best_gain:  # strict: the first layer wins ties, so the path is deterministic
                best, best_gain, best_step = i, ratio, step
        if best is None:
            return path
        now, nxt = layers[best].options[state[best]], layers[best].options[best_step]
        energy += nxt.energy_pj - now.energy_pj
        latency += nxt.latency_s - now.latency_s
        state[best] = best_step
        path.append(tuple(state))


def blocking_layer(path: Sequence[State], winner: State) -> int | None:
    """The layer whose step right after ``winner`` on ``path`` broke the budget (None at the path's end)."""
    index = path.index(winner)
    if index + 1 == len(path):
        return None
    return next(i for i, (a, b) in enumerate(zip(path[index], path[index + 1])) if a != b)

"""TASDER: choose every layer's TASD series for the lowest modelled EDP under a quality budget.

No fine-tuning, ever: the search only picks, per layer, a weight series (or
a run-time activation series) and a method (magnitude, activation-aware, or
OBS reconstruction from the layer's input Hessian) from the candidates
the target runs faster than dense, and checks the whole model on
calibration data. The algorithm (``docs/tasder.md``):

1. **Candidates and a proxy** (:mod:`~tvm_tasd.tasder.frontier`): per layer,
   every candidate × method gets its modelled cost and a proxy error; what
   is dominated in both is dropped, leaving a frontier.
2. **Sensitivity** (:meth:`~tvm_tasd.tasder.state.Search.measure_sensitivities`):
   one real run per layer at its cheapest option gives α, and the predicted
   damage of any assignment is Σ α·e².
3. **Paths, each verified** (:mod:`~tvm_tasd.tasder.paths`,
   :meth:`~tvm_tasd.tasder.state.Search.verified`): uniform and greedy —
   over all options, and again over the weight series alone where layers
   have activation series — then, on each route, greedy again from its
   cheapest winner (refine).
   The plan is the cheapest state any of them measured to keep the budget.
4. **Held out** (:meth:`~tvm_tasd.tasder.state.Search.validated`): the last
   ``holdout`` share of the calibration batches is never searched on (nor
   calibrated on); the plan is the cheapest measured state that keeps the
   budget on them too.

The model is evaluated by :func:`tvm_tasd.evaluation.open_model`:
onnxruntime for an ONNX model, one TVM build for a Relax ``IRModule``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tqdm.auto import tqdm

from ..candidates import candidate_configs
from ..cost import model_cost
from ..evaluation import open_model
from ..evaluation.metrics import (
    Metric,
    accuracy_metric,
    cosine_metric,
    resolve_metric,
    score,
    scored_outputs,
    top1_metric,
)
from ..evaluation.onnx import calibration_from_npz
from ..frontend import load_onnx
from ..hardware import load_target
from ..io import atomic_output, check_not_inputs
from ..plan import Plan, weights_path
from ..policy import METHODS, TASDWarning
from .frontier import LayerSearch, activation_series, layer_options
from .options import STRATEGIES, SearchOptions, is_share, sample_count
from .paths import Fixed, State, blocking_layer, greedy_path, uniform_path
from .state import Search

#: How many times the refine path restarts with one more layer frozen (each costs one bracketing, ~log2 of
#: the path's length in evaluations).
FROZEN_RETRIES = 3


def search(
    model,
    hw,
    calibration: Sequence[dict],
    metric: "str | Metric" = "cosine",
    budget: float = 0.99,
    labels=None,
    max_terms: int = 2,
    methods: Sequence[str] = METHODS,
    strategy: str = "surrogate",
    sensitivity_batches: int = 4,
    seed: int = 0,
    progress: bool = True,
    params=None,
    outputs: Sequence[str] | None = None,
    holdout: float = 0.25,
    validation: "tuple[Sequence[dict], Metric] | None" = None,
    damp: float = 0.01,
    fit: Sequence[dict] | None = None,
) -> Plan:
    """Search a plan for ``model`` on ``hw``.

    ``model``: an ONNX path or ModelProto (evaluated with onnxruntime), or a
    Relax ``IRModule`` (evaluated with one TVM build) whose weights are bound
    constants or, named in ``params``, function inputs.

    ``calibration``: list of feeds (input name → array), one per batch.
    ``metric``: ``"cosine"`` / ``"top1"`` (to the original model's outputs),
    ``"accuracy"`` (needs ``labels``), or ``callable(outputs) -> float``
    (higher is better) where ``outputs`` is, per batch, the output list.
    ``budget``: the share of the original model's metric to keep.
    ``strategy``: how the paths are verified — ``"surrogate"`` (XGBoost
    proposes each probe), ``"bisect"`` (plain bisection) or ``"walk"``
    (plain greedy: every step, until the first failure).
    ``sensitivity_batches``: calibration batches each per-layer sensitivity
    run uses.
    ``methods``: how a layer's series may be taken from its weight —
    ``"magnitude"``, ``"activation"`` (|w|·s, s the input channel norms) and
    ``"obs"`` (mask and values re-fitted to the layer's input Hessian,
    matmul layers and ungrouped convs whose input channels come in whole
    groups, K ≤ 4096 (kh·kw·C for a conv): the calibration pass then also
    gathers XᵀX, K²·8 bytes per layer). Per layer the frontier keeps what is not dominated.
    ``damp``: the OBS damping, a share of the mean Hessian diagonal added to
    it (SparseGPT's 0.01 by default). More damping fits the calibration data
    less closely, which can pay on data of another distribution.
    ``outputs``: the output names the metric scores (a Relax module's are
    ``output_0``, ``output_1``…). By default every float output that a layer
    weight influences; ``top1``/``accuracy`` need exactly one, so a model with
    several must name it. An output that is not float or that no layer
    reaches is refused: scoring it would measure nothing.
    ``holdout``: the share of the calibration batches (the last ones, at
    least one) kept out of the search and its statistics; the plan must keep
    the budget on them too (``info["quality"]["held_out"]``). 0, or a single
    batch, checks nothing beyond the searched data (a warning says so).
    ``validation``: ``(feeds, metric)``, held-out data given explicitly
    instead, with the callable that scores it (a callable ``metric`` is
    written for its own batches, so ``holdout`` cannot split it: without
    ``validation`` a warning says nothing unseen was checked).
    ``fit``: batches (same inputs) the layer statistics — channel norms,
    activation samples, OBS Hessians — are gathered from instead of the
    calibration batches, which the search then only scores on (cross-fitting).
    Scored on the batches their weights were fitted to, OBS states look better
    than they are on any other data; scored on others, the search's numbers
    are honest and its held-out check rejects less (``docs/tasder.md``).
    """
    options = SearchOptions(metric, budget, labels, max_terms, methods if isinstance(methods, str) else tuple(methods),
                            strategy, sensitivity_batches, seed, progress, damp)
    target = load_target(hw)
    options.check(target, calibration)
    held_out_count, labels, held_out_labels, unchecked = _held_out(calibration, labels, holdout, metric, validation)
    act_configs = activation_series(target, max_terms)
    fit = list(fit or ())
    fed = open_model(model, [*fit, *calibration, *(validation[0] if validation else ())], params=params,
                     activation_fed_groups=act_configs[0].max_m if act_configs else None)
    held_out = fed.hold_out(held_out_count)
    fit = fed.hold_out(len(fit), first=True)
    if not fed.layer_names:
        raise _nothing_to_search(fed)
    scored = scored_outputs(fed.outputs, outputs, metric)
    if unchecked:  # said once the model, its feeds and its outputs are known to be right
        warnings.warn(unchecked, TASDWarning, stacklevel=2)
    stats = fed.calibrate(progress, hessians="obs" in options.methods, feeds=fit or None)
    reference = [[batch[i] for i in scored] for batch in fed.run()]
    metric_fn, metric_name = resolve_metric(metric, labels, reference)
    dense_quality = score(metric_fn, reference)
    if dense_quality <= 0:
        raise ValueError(f"the original model scores {dense_quality} on the metric; a positive quality is needed")

    layers = []
    for layer in tqdm([l for l in fed.layers if l.name in stats.norms], desc="candidates", disable=not progress,
                      leave=False):
        scale = stats.norms[layer.name]
        if layer.ineligible:
            frontier = layer_options(layer, target, scale, ("magnitude",), 0)
        else:
            acts = act_configs if layer.name in fed.activation_groups else ()
            frontier = layer_options(layer, target, scale, options.methods, max_terms, acts,
                                     stats.samples.get(layer.name), stats.hessians.get(layer.name), damp)
        layers.append(LayerSearch(layer, scale, frontier, damp=damp))

    if not layers:
        raise _nothing_to_search(fed)
    searched = {layer.layer.name for layer in layers}
    unsearched = model_cost(target, [layer for layer in fed.layers if layer.name not in searched])
    fixed = (unsearched.energy_pj, unsearched.latency_s)
    state = Search(layers, fed, scored, metric_fn, dense_quality, options, fixed)
    state.measure_sensitivities(reference)
    paths = {}
    for route in _routes(layers):
        suffix = "" if route == "all" else f"-{route}"
        paths["uniform" + suffix] = uniform_path(layers, target, candidate_configs(target, max_terms), fixed, route)
        paths["greedy" + suffix] = greedy_path(layers, fixed=fixed, route=route)
        found = [state.verified(paths[name]) for name in ("uniform" + suffix, "greedy" + suffix)]
        paths.update(_refined(state, layers, min(found, key=state.edp_ratio), fixed, route, "refine" + suffix))
    lengths = {name: len(path) for name, path in paths.items()}
    if not held_out:
        return state.plan(state.passing()[0], target, metric_name, calibration, fit, lengths, None)
    held_out_reference = state.run(feeds=held_out)
    held_out_metric = validation[1] if validation else resolve_metric(metric, held_out_labels, held_out_reference)[0]
    held_out_quality = score(held_out_metric, held_out_reference)
    if held_out_quality <= 0:
        raise ValueError(f"the original model scores {held_out_quality} on the held-out data; a positive quality is "
                         "needed to keep a share of it")
    chosen, check = state.validated(held_out, held_out_metric, held_out_quality)
    return state.plan(chosen, target, metric_name, calibration, fit, lengths, check)


def _refined(state: Search, layers: Sequence[LayerSearch], winner: State, fixed: Fixed, route: str,
             name: str) -> dict[str, list[State]]:
    """The refine paths on ``route`` from its cheapest winner: greedy from it, then again from each new winner
    with the layer whose step broke the budget frozen, up to :data:`FROZEN_RETRIES` times."""
    path = greedy_path(layers, winner, fixed=fixed, route=route)
    paths, frozen = {name: path}, frozenset()
    winner = state.verified(path)
    for attempt in range(1, FROZEN_RETRIES + 1):  # go on past the layer whose step broke the budget
        blocked = blocking_layer(path, winner)
        if blocked is None:
            break
        frozen |= {blocked}
        path = paths[f"{name}-{attempt}"] = greedy_path(layers, winner, frozen, fixed, route)
        winner = state.verified(path)
    return paths


def _routes(layers: Sequence[LayerSearch]) -> list[str]:
    """The routes the paths walk: every option's frontier, and the weight series' alone where some layer's
    activation series make it differ (an activation series can dominate a weight series on its proxy and
    still cost the model more, so the weight-only twin's plan stays within reach)."""
    return ["all"] + (["weights"] if any(l.routes["weights"] != l.routes["all"] for l in layers) else [])


def _held_out(calibration: list, labels, holdout: float, metric, validation):
    """(how many batches to hold out, the searched batches' labels, the held-out ones', why nothing is
    held out if nothing is): the ``validation`` feeds, else the last ``holdout`` share of the batches (at
    least one, never all)."""
    if not is_share(holdout):
        raise ValueError(f"holdout is the share of calibration batches kept out of the search, in [0, 1); got "
                         f"{holdout!r} (e.g. 0.25)")
    if validation is not None:
        if not isinstance(validation, (tuple, list)) or len(validation) != 2 or not callable(validation[1]) \
                or not validation[0]:
            raise ValueError("validation is (feeds, metric): a non-empty list of held-out batches and the "
                             "callable(outputs) -> float that scores them")
        return len(validation[0]), labels, None, None
    count = min(len(calibration) - 1, max(1, round(holdout * len(calibration)))) if holdout else 0
    if callable(metric) and count:
        return 0, labels, None, ("nothing held out: a callable metric scores the batches it was written for, so "
                                 "holdout cannot split them; pass validation=(feeds, metric) to check the plan on "
                                 "data the search never sees")
    if count == 0:
        return 0, labels, None, ("no calibration batch is held out (holdout=0 or a single batch): the budget is only "
                                 "checked on the data the search chose on")
    if labels is None:
        return count, None, None, None
    labels = np.asarray(labels).reshape(-1)
    cut = sample_count(calibration[:-count])
    return count, labels[:cut], labels[cut:], None


def _split_fit(feeds: list, labels, share: float):
    """(fit batches, searched batches, their labels): the first ``share`` of the batches, at least one when
    ``share`` is not 0, feed only the layer statistics."""
    if not is_share(share):
        raise ValueError(f"fit share is the share of calibration batches that only feed the layer statistics, in "
                         f"[0, 1); got {share!r} (e.g. 0.5)")
    count = max(1, round(share * len(feeds))) if share else 0
    if count and len(feeds) - count < 2:
        raise ValueError(f"a fit share of {share} leaves {len(feeds) - count} of {len(feeds)} calibration batch(es) to "
                         "search and check on; give more samples, a smaller --batch or a smaller share")
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)[sample_count(feeds[:count]):]
    return feeds[:count], feeds[count:], labels


def _nothing_to_search(fed) -> ValueError:
    return ValueError(f"no layer of this model can be searched: of its {len(fed.layers)} matmul/conv layers, none has "
                      "a constant weight the evaluator can replace and a non-constant input (ONNX weights must be "
                      "initializers)")


def search_file(model, hw, calibration, output, *, metric="cosine", budget=0.99, batch=None, strategy="surrogate",
                max_terms=2, seed=0, outputs: Sequence[str] | None = None, holdout: float = 0.25,
                fit_share: float = 0.0, damp: float = 0.01) -> Plan:
    """TASDER on an ONNX model file with calibration data from an .npz (see
    :func:`~tvm_tasd.evaluation.onnx.calibration_from_npz`); the plan is written to ``output``.

    ``fit_share``: the share of the batches (the first ones) that only feed the
    layer statistics, :func:`search`'s ``fit``; the rest are searched and held
    out as ``holdout`` says.
    The plan also records the model's path and the input shapes searched at
    (``info["model"]``), so a report of the plan finds the model again.
    """
    check_not_inputs([output, weights_path(output)], [model, calibration])  # the plan may write both
    target = load_target(hw)
    proto = load_onnx(model)
    feeds, labels = calibration_from_npz(calibration, proto, batch)
    if metric == "accuracy" and labels is None:
        raise ValueError(f"metric 'accuracy' needs a 'labels' array (one label per sample) in {calibration}")
    fit, feeds, labels = _split_fit(feeds, labels, fit_share)
    with atomic_output(output) as tmp:
        plan = search(proto, target, feeds, metric=metric, budget=budget, labels=labels, max_terms=max_terms,
                      strategy=strategy, seed=seed, outputs=outputs, holdout=holdout, fit=fit, damp=damp)
        plan.info["model"] = {"path": str(Path(model).resolve()),
                              "inputs": {name: list(value.shape) for name, value in feeds[0].items()}}
        plan.save(tmp, beside=output)
    return plan


__all__ = [
    "STRATEGIES",
    "accuracy_metric",
    "activation_series",
    "cosine_metric",
    "search",
    "search_file",
    "top1_metric",
]

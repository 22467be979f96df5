"""TASDER: choose every layer's TASD series for the lowest modelled EDP under a quality budget.

No fine-tuning, ever: the search only picks, per layer, a weight series (or
a run-time activation series) and a selection score from the candidates
the target runs faster than dense, and checks the whole model on
calibration data. The algorithm (``docs/tasder.md``):

1. **Candidates and a proxy** (:mod:`~tvm_tasd.tasder.frontier`): per layer,
   every candidate × score gets its modelled cost and a proxy error; what
   is dominated in both is dropped, leaving a frontier.
2. **Sensitivity** (:meth:`~tvm_tasd.tasder.state.Search.measure_sensitivities`):
   one real run per layer at its cheapest option gives α, and the predicted
   damage of any assignment is Σ α·e².
3. **Three paths, each verified** (:mod:`~tvm_tasd.tasder.paths`,
   :meth:`~tvm_tasd.tasder.state.Search.verified`): uniform, greedy, and
   greedy again from the cheaper winner. The plan is the cheapest state any
   of them measured to keep the budget.

The model is evaluated by :func:`tvm_tasd.evaluation.open_model`:
onnxruntime for an ONNX model, one TVM build for a Relax ``IRModule``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from ..candidates import candidate_configs
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
from ..plan import Plan
from .frontier import LayerSearch, activation_series, layer_options
from .options import STRATEGIES, SearchOptions
from .paths import greedy_path, uniform_path
from .state import Search


def search(
    model,
    hw,
    calibration: Sequence[dict],
    metric: "str | Metric" = "cosine",
    budget: float = 0.99,
    labels=None,
    max_terms: int = 2,
    scores: Sequence[str] = ("magnitude", "activation"),
    strategy: str = "surrogate",
    sensitivity_batches: int = 4,
    seed: int = 0,
    progress: bool = True,
    params=None,
    outputs: Sequence[str] | None = None,
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
    ``outputs``: the output names the metric scores (a Relax module's are
    ``output_0``, ``output_1``…). By default every float output that a layer
    weight influences; ``top1``/``accuracy`` need exactly one, so a model with
    several must name it. An output that is not float or that no layer
    reaches is refused: scoring it would measure nothing.
    """
    options = SearchOptions(metric, budget, labels, max_terms, tuple(scores), strategy, sensitivity_batches, seed,
                            progress)
    target = load_target(hw)
    options.check(target, calibration)
    act_configs = activation_series(target, max_terms)
    fed = open_model(model, calibration, params=params,
                     relu_fed_groups=act_configs[0].max_m if act_configs else None)
    if not fed.layer_names:
        raise _nothing_to_search(fed)
    scored = scored_outputs(fed.outputs, outputs, metric)
    stats = fed.calibrate(progress)
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
            frontier = layer_options(layer, target, scale, options.scores, max_terms, acts,
                                     stats.samples.get(layer.name))
        layers.append(LayerSearch(layer, scale, frontier))

    if not layers:
        raise _nothing_to_search(fed)
    state = Search(layers, fed, scored, metric_fn, dense_quality, options)
    state.measure_sensitivities(reference)
    paths = {"uniform": uniform_path(layers, target, candidate_configs(target, max_terms)), "greedy": greedy_path(layers)}
    winners = [state.verified(path) for path in paths.values()]
    paths["refine"] = greedy_path(layers, min(winners, key=state.edp_ratio))
    state.verified(paths["refine"])
    return state.plan(state.cheapest_passing(), target, metric_name, calibration,
                      {name: len(path) for name, path in paths.items()})


def _nothing_to_search(fed) -> ValueError:
    return ValueError(f"no layer of this model can be searched: of its {len(fed.layers)} matmul/conv layers, none has "
                      "a constant weight the evaluator can replace and a non-constant input (ONNX weights must be "
                      "initializers)")


def search_file(model, hw, calibration, output, *, metric="cosine", budget=0.99, batch=None, strategy="surrogate",
                max_terms=2, seed=0, outputs: Sequence[str] | None = None) -> Plan:
    """TASDER on an ONNX model file with calibration data from an .npz (see
    :func:`~tvm_tasd.evaluation.onnx.calibration_from_npz`); the plan is written to ``output``.

    The plan also records the model's path and the input shapes searched at
    (``info["model"]``), so a report of the plan finds the model again.
    """
    check_not_inputs([output], [model, calibration])
    target = load_target(hw)
    proto = load_onnx(model)
    feeds, labels = calibration_from_npz(calibration, proto, batch)
    if metric == "accuracy" and labels is None:
        raise ValueError(f"metric 'accuracy' needs a 'labels' array (one label per sample) in {calibration}")
    with atomic_output(output) as tmp:
        plan = search(proto, target, feeds, metric=metric, budget=budget, labels=labels, max_terms=max_terms,
                      strategy=strategy, seed=seed, outputs=outputs)
        plan.info["model"] = {"path": str(Path(model).resolve()),
                              "inputs": {name: list(value.shape) for name, value in feeds[0].items()}}
        plan.save(tmp)
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

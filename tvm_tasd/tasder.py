"""TASDER: choose every layer's TASD series for the lowest modelled EDP under a quality budget.

No fine-tuning, ever: the search only picks, per layer, a weight series and
a selection score from the candidates the target runs faster than dense
(:mod:`tvm_tasd.candidates`), and checks the whole model on calibration data.

The algorithm (documented in ``docs/tasder.md``):

1. **Candidates and a proxy.** Per layer, every candidate series × score
   (``magnitude``; ``activation`` when calibration statistics exist) gets its
   modelled cost and a proxy error ``e = ‖(W − Ŵ)·s‖ / ‖W·s‖`` (s the
   activation channel norms, 1 without data) — the relative output error
   for inputs with those channel scales. Options dominated in both cost and
   proxy are dropped, leaving each layer a frontier from dense to cheapest.
2. **Sensitivity.** One real run per layer: the model with only that layer
   at its cheapest option, on the first ``sensitivity_batches`` calibration
   batches. Its output damage (1 − cosine similarity to the original
   outputs; smooth and cheap, where a task metric on a few batches is
   noisy) divided by that option's e² gives the layer's sensitivity α; the
   predicted damage of any assignment is Σ α·e² (layers assumed additive).
   Only ratios of α matter, so the scale of this measure is irrelevant.
3. **Three paths, each verified.** Every state of a path is a full
   assignment; quality falls (nearly) monotonically along it, so the
   furthest state that keeps ``budget`` is bracketed with real evaluations.

   * *uniform*: one series for every layer, each candidate series in turn —
     one-shot pruning's sensitivity-blind allocation. It is kept because the
     model's damage is not additive across layers: on MiniLM the
     proxy-optimal mixes lose to uniform configs at equal EDP.
   * *greedy*: from all-dense, repeatedly move the layer whose next frontier
     step buys the most model EDP per unit of predicted damage.
   * *refine*: the greedy path again, from the cheaper of the two winners.

   The plan is the cheapest state any of them measured to keep the budget.

   An XGBoost surrogate — trained on every evaluation made so far, features
   = per-layer α·e² and the EDP ratio — proposes each probe (the furthest
   state it predicts to pass inside the bracket) instead of the midpoint;
   its proposals are always verified, so a wrong prediction costs one
   evaluation, never quality.

Plain greedy, the baseline the savings are quoted against, evaluates every
step of each path until its first failure (``strategy="walk"``); plain
bisection (``"bisect"``) is the other reference.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import tvm
from tqdm.auto import tqdm

from .calibration import calibrate
from .candidates import candidate_configs, layer_cost, useful_terms
from .config import TASDConfig
from .decompose import approximate
from .evaluate import WeightFedModel, load_model
from .frontend import from_onnx
from .hardware import HardwareTarget, load_target
from .layers import Layer, find_layers
from .plan import LayerPlan, Plan

STRATEGIES = ("surrogate", "bisect", "walk")
Outputs = list[list[np.ndarray]]  # per calibration batch, the model's outputs
Metric = Callable[[Outputs], float]


@dataclass
class _Option:
    """One candidate of one layer: series, score, modelled cost and proxy error."""

    config: TASDConfig
    score: str
    energy_pj: float
    latency_s: float
    proxy: float
    activation: TASDConfig | None = None  # run-time series of the layer's input (weight then dense)

    @property
    def edp(self) -> float:
        return self.energy_pj * self.latency_s

    @property
    def keep(self) -> int | None:
        """Activation entries kept per group: a one-M series keeps exactly the top ΣN."""
        return None if self.activation is None else sum(t.n for t in self.activation.terms)


@dataclass
class _LayerSearch:
    layer: Layer
    scale: np.ndarray | None
    options: list[_Option]  # frontier, dense first, cheapest last
    alpha: float = 0.0

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def weight(self) -> np.ndarray:
        return self.layer.weight

    @property
    def axis(self) -> int:
        return self.layer.axis

    def approximated(self, option: _Option) -> np.ndarray | None:
        """The option's weight (None when it leaves the weight as it is)."""
        if option.config.is_dense:
            return None
        score = self.scale if option.score == "activation" else "magnitude"
        return approximate(self.weight, option.config, axis=self.axis, score=score, name=self.name)

    def feeds(self, option: _Option) -> tuple[dict, dict]:
        """(weights, activation keep counts) to run this option with."""
        weight = self.approximated(option)
        return ({} if weight is None else {self.name: weight}), ({} if option.keep is None else {self.name: option.keep})


# ------------------------------------------------------------------ metrics


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


def _resolve_metric(metric, labels, reference: Outputs) -> tuple[Metric, str]:
    if callable(metric):
        return metric, getattr(metric, "__name__", "custom")
    if metric == "cosine":
        return cosine_metric(reference), metric
    if metric == "top1":
        return top1_metric(reference), metric
    if metric == "accuracy":
        return accuracy_metric(labels), metric
    raise ValueError(f"unknown metric {metric!r}: use 'cosine', 'top1', 'accuracy' or a callable(outputs) -> float")


def _check_arguments(budget, calibration, metric, labels, target: HardwareTarget) -> None:
    """Every mistake the user can make, caught before any expensive work."""
    if not isinstance(budget, (int, float)) or not 0 < budget <= 1:
        raise ValueError(f"budget is the share of the original quality to keep, in (0, 1]; got {budget!r} (e.g. 0.99)")
    if not calibration:
        raise ValueError("calibration set is empty: give a list of input feeds (one dict per batch)")
    if metric == "accuracy" and labels is None:
        raise ValueError("metric 'accuracy' needs labels=: one label per calibration sample")
    if metric == "accuracy":
        samples = sum(len(next(iter(feed.values()))) for feed in calibration)
        if len(np.asarray(labels).reshape(-1)) != samples:
            raise ValueError(f"{len(np.asarray(labels).reshape(-1))} labels for {samples} calibration samples")
    if not useful_terms(target):
        raise ValueError(f"target {target.name!r} runs no N:M pattern faster than dense: nothing to search for")


def _quality(metric: Metric, outputs: Outputs) -> float:
    value = float(metric(outputs))
    if not math.isfinite(value):
        raise ValueError(f"the metric returned {value}: it must be a finite number")
    return value


# ------------------------------------------------------------------ the search


def _proxy(layer_weight, approx, axis, scale) -> float:
    diff = layer_weight.astype(np.float64) - approx
    if scale is not None:
        shape = [1] * diff.ndim
        shape[axis] = -1
        diff = diff * scale.reshape(shape)
        ref = layer_weight * scale.reshape(shape)
    else:
        ref = layer_weight
    norm = np.linalg.norm(ref)
    return float(np.linalg.norm(diff) / norm) if norm else 0.0


def _frontier(options: list[_Option]) -> list[_Option]:
    """Options not dominated in (EDP, proxy), ordered from dense (proxy 0) to cheapest."""
    ordered = sorted(options, key=lambda o: (o.edp, o.proxy))
    frontier: list[_Option] = []
    for option in ordered:
        if all(option.proxy < kept.proxy for kept in frontier):
            frontier.append(option)
    return frontier[::-1]


def activation_series(target: HardwareTarget, max_terms: int) -> list[TASDConfig]:
    """Activation series the search tries: faster than dense, all terms of the target's largest M
    (one M, so a series keeps the top ΣN of each group and one fed count emulates it)."""
    configs = [c for c in candidate_configs(target, max_terms, operand="activation") if not c.is_dense]
    if not configs:
        return []
    m = max(c.max_m for c in configs)
    return [c for c in configs if all(t.m == m for t in c.terms)]


def _activation_options(layer, target, configs, sample) -> list[_Option]:
    """Weight dense, the input decomposed at run time; proxy = relative output error on a sample."""
    reference = sample @ (layer.weight if layer.axis == 0 else layer.weight.T)
    norm = np.linalg.norm(reference)
    options = []
    for config in configs:
        approx = approximate(sample, config, axis=-1)
        error = sample - approx
        proxy = float(np.linalg.norm(error @ (layer.weight if layer.axis == 0 else layer.weight.T)) / norm) if norm else 0.0
        cost = layer_cost(target, layer, TASDConfig.dense(), activation=config)
        options.append(_Option(TASDConfig.dense(), "magnitude", cost.energy_pj, cost.latency_s, proxy, config))
    return options


def _layer_options(layer, target, scale, scores, max_terms, activation_configs=(), sample=None) -> list[_Option]:
    options = _activation_options(layer, target, activation_configs, sample) if activation_configs else []
    for config in candidate_configs(target, max_terms):
        if not config.is_dense and config.max_m > layer.grouped_length:
            continue
        cost = layer_cost(target, layer, config)
        for score in scores if not config.is_dense else ("magnitude",):
            s = scale if score == "activation" else "magnitude"
            approx = approximate(layer.weight, config, axis=layer.axis, score=s, name=layer.name)
            proxy = _proxy(layer.weight, approx, layer.axis, scale)
            options.append(_Option(config, score, cost.energy_pj, cost.latency_s, proxy))
    return _frontier(options)


def _uniform_path(layers: list[_LayerSearch], target: HardwareTarget, configs: list[TASDConfig]) -> list[tuple[int, ...]]:
    """One series for every layer, each config of ``configs`` in turn, from dense to cheapest.

    A layer takes the first frontier option (dense → cheapest) costing no more than the config
    would on it: the config itself, or what dominated it. This is uniform one-shot pruning's
    allocation, blind to sensitivity — and on MiniLM better than the proxy-optimal mixes at equal
    EDP, because layers do not add their damage independently."""
    states = set()
    for config in configs:
        state = []
        for layer in layers:
            limit = layer_cost(target, layer.layer, config).edp * (1 + 1e-9)
            state.append(next((i for i, o in enumerate(layer.options) if o.edp <= limit), len(layer.options) - 1))
        states.add(tuple(state))
    states.add((0,) * len(layers))
    return sorted(states, key=lambda state: (-_features(layers, state, 1.0)[-1], state))  # ties: a fixed order


def _path(layers: list[_LayerSearch], start: tuple[int, ...] | None = None) -> list[tuple[int, ...]]:
    """Greedy states (option index per layer) from ``start`` (default all-dense) to all-cheapest."""
    state = list(start or (0,) * len(layers))
    energy = sum(l.options[i].energy_pj for l, i in zip(layers, state))
    latency = sum(l.options[i].latency_s for l, i in zip(layers, state))
    path = [tuple(state)]
    while True:
        best, best_gain = None, -math.inf
        for i, layer in enumerate(layers):
            if state[i] + 1 >= len(layer.options):
                continue
            now, nxt = layer.options[state[i]], layer.options[state[i] + 1]
            new_edp = (energy - now.energy_pj + nxt.energy_pj) * (latency - now.latency_s + nxt.latency_s)
            gain = energy * latency - new_edp
            cost = layer.alpha * (nxt.proxy**2 - now.proxy**2)
            ratio = gain / cost if cost > 0 else math.inf
            if ratio > best_gain:  # strict: the first layer wins ties, so the path is deterministic
                best, best_gain = i, ratio
        if best is None:
            return path
        now, nxt = layers[best].options[state[best]], layers[best].options[state[best] + 1]
        energy += nxt.energy_pj - now.energy_pj
        latency += nxt.latency_s - now.latency_s
        state[best] += 1
        path.append(tuple(state))


class _Surrogate:
    """XGBoost regressor: relative quality from per-layer α·e² and the EDP ratio."""

    def __init__(self, seed: int):
        self.seed = seed
        self.features: list[np.ndarray] = []
        self.targets: list[float] = []

    def add(self, features: np.ndarray, quality: float) -> None:
        self.features.append(features)
        self.targets.append(quality)

    def predict(self, features: np.ndarray) -> np.ndarray | None:
        if len(self.targets) < 4:
            return None
        import xgboost

        model = xgboost.XGBRegressor(
            n_estimators=60, max_depth=3, learning_rate=0.2, random_state=self.seed, n_jobs=1,
            monotone_constraints="(" + ",".join(["-1"] * (features.shape[1] - 1) + ["1"]) + ")",
        )
        model.fit(np.stack(self.features), np.asarray(self.targets))
        return model.predict(features)


@dataclass
class _Evaluator:
    model: WeightFedModel
    metric: Metric
    dense_quality: float
    layers: list[_LayerSearch]
    cache: dict

    def relative_quality(self, state: tuple[int, ...]) -> float:
        if state not in self.cache:
            weights, keeps = {}, {}
            for layer, index in zip(self.layers, state):
                layer_weights, layer_keeps = layer.feeds(layer.options[index])
                weights.update(layer_weights)
                keeps.update(layer_keeps)
            self.cache[state] = _quality(self.metric, self.model.run(weights, keeps=keeps)) / self.dense_quality
        return self.cache[state]


def _features(layers, state, dense_edp) -> np.ndarray:
    energy = sum(l.options[i].energy_pj for l, i in zip(layers, state))
    latency = sum(l.options[i].latency_s for l, i in zip(layers, state))
    damage = [l.alpha * l.options[i].proxy ** 2 for l, i in zip(layers, state)]
    return np.asarray(damage + [energy * latency / dense_edp])


def _fingerprint(calibration) -> str:
    digest = hashlib.sha1()
    for feed in calibration:
        for name in sorted(feed):
            array = np.ascontiguousarray(feed[name])
            digest.update(name.encode() + str(array.shape).encode() + array.tobytes())
    return digest.hexdigest()[:16]


def _open_model(model, params, calibration, activation_m, progress):
    """(calibration statistics, layers, ``groups -> fed model``) for an ONNX model or a Relax IRModule.

    ``activation_m``: the M of the target's activation series, if it has any; the fed model
    gets keep counts for the ReLU-fed matmul layers whose K it divides."""
    if isinstance(model, tvm.IRModule):
        from .evaluate_relax import RelaxWeightFedModel

        built = RelaxWeightFedModel(model, calibration, params, expose=True, relu_fed_groups=activation_m)

        def fed(groups):  # one build: it was given the same rule for its activation groups
            assert groups == built.activation_groups, (groups, built.activation_groups)
            return built

        return built.calibrate(progress), find_layers(model, params), fed
    if params is not None:
        raise ValueError("params= gives the weights of an IRModule that takes them as inputs; an ONNX model carries its own")
    proto = load_model(model)
    stats = calibrate(proto, calibration, progress=progress)
    shapes = {name: list(np.shape(value)) for name, value in calibration[0].items()}
    layers = find_layers(from_onnx(proto, shapes).mod)
    return stats, layers, lambda groups: WeightFedModel(proto, calibration, activation_groups=groups)


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
) -> Plan:
    """Search a plan for ``model`` on ``hw``.

    ``model``: an ONNX path or ModelProto (evaluated with onnxruntime), or a
    Relax ``IRModule`` (evaluated with one TVM build, :mod:`tvm_tasd.evaluate_relax`)
    whose weights are bound constants or, named in ``params``, function inputs.

    ``calibration``: list of feeds (input name → array), one per batch.
    ``metric``: ``"cosine"`` / ``"top1"`` (to the original model's outputs),
    ``"accuracy"`` (needs ``labels``), or ``callable(outputs) -> float``
    (higher is better) where ``outputs`` is, per batch, the output list.
    ``budget``: the share of the original model's metric to keep.
    ``strategy``: how the greedy path is verified — ``"surrogate"`` (XGBoost
    proposes each probe), ``"bisect"`` (plain bisection) or ``"walk"``
    (plain greedy: every step, until the first failure).
    ``sensitivity_batches``: calibration batches each per-layer sensitivity
    run uses.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    target = load_target(hw)
    _check_arguments(budget, calibration, metric, labels, target)
    act_configs = activation_series(target, max_terms) if "activation" in target.sparse_operands else []
    stats, found, fed_model = _open_model(model, params, calibration, act_configs[0].max_m if act_configs else None,
                                          progress)
    act_layers = {
        l.name: act_configs[0].max_m
        for l in found
        if act_configs and l.name in stats.relu_fed and l.takes_activation_groups(act_configs[0].max_m)
    }
    tvm_layers = [l for l in found if l.name in stats.norms]
    fed = fed_model(act_layers)
    reference = fed.run()
    metric_fn, metric_name = _resolve_metric(metric, labels, reference)
    dense_quality = _quality(metric_fn, reference)
    if dense_quality <= 0:
        raise ValueError(f"the original model scores {dense_quality} on the metric; a positive quality is needed")

    layers = []
    for layer in tqdm(tvm_layers, desc="candidates", disable=not progress, leave=False):
        scale = stats.norms[layer.name]
        if layer.ineligible:
            options = _layer_options(layer, target, scale, ("magnitude",), 0)
        else:
            acts = act_configs if layer.name in act_layers else ()
            options = _layer_options(layer, target, scale, scores, max_terms, acts, stats.samples.get(layer.name))
        layers.append(_LayerSearch(layer, scale, options))

    evaluator = _Evaluator(fed, metric_fn, dense_quality, layers, {})
    dense_state = (0,) * len(layers)
    evaluator.cache[dense_state] = 1.0
    dense_edp = _features(layers, dense_state, 1.0)[-1]
    surrogate = _Surrogate(seed)
    damage = cosine_metric(reference[:sensitivity_batches])
    for layer in tqdm(layers, desc="sensitivity", disable=not progress, leave=False):
        if len(layer.options) < 2:
            continue
        weights, keeps = layer.feeds(layer.options[-1])
        outputs = fed.run(weights, batches=sensitivity_batches, keeps=keeps)
        layer.alpha = max(0.0, 1.0 - damage(outputs)) / max(layer.options[-1].proxy ** 2, 1e-30)

    def verified(path: list[tuple[int, ...]]) -> tuple[int, ...]:
        """The furthest state of ``path`` (whose first state passes) that keeps the budget."""
        if strategy == "walk":
            return path[_walk(path, evaluator, budget, progress)]
        return path[_bracket(path, evaluator, surrogate, layers, dense_edp, budget, strategy == "surrogate", progress)]

    def edp(state):
        return _features(layers, state, dense_edp)[-1]

    paths = {"uniform": _uniform_path(layers, target, candidate_configs(target, max_terms)), "greedy": _path(layers)}
    found = {name: verified(path) for name, path in paths.items()}
    start = min(found.values(), key=edp)
    paths["refine"] = _path(layers, start)
    verified(paths["refine"])
    # Any measured state may beat the refine winner (paths cross); all were verified for real.
    best = min((s for s, q in evaluator.cache.items() if q >= budget), key=lambda s: (edp(s), -evaluator.cache[s]))
    return _plan(target, layers, paths, best, evaluator, budget, metric_name, dense_quality, seed, calibration,
                 dense_edp, strategy)


def _bracket(path, evaluator, surrogate, layers, dense_edp, budget, use_surrogate, progress) -> int:
    """Index of the furthest path state whose measured relative quality ≥ budget."""
    good, bad = 0, len(path)  # invariant: path[good] passes; path[bad:] untried or failed
    bar = tqdm(desc="verify", disable=not progress, leave=False)
    while bad - good > 1:
        probe = (good + bad) // 2
        if use_surrogate:
            predicted = surrogate.predict(np.stack([_features(layers, path[i], dense_edp) for i in range(good + 1, bad)]))
            if predicted is not None:
                passing = [good + 1 + i for i, q in enumerate(predicted) if q >= budget]
                guess = max(passing) if passing else good + 1
                margin = max(1, (bad - good) // 4)  # keep inside the bracket's middle half: a bad guess still shrinks it
                probe = min(max(guess, good + margin), bad - margin)
        quality = evaluator.relative_quality(path[probe])
        surrogate.add(_features(layers, path[probe], dense_edp), quality)
        bar.update()
        if quality >= budget:
            good = probe
        else:
            bad = probe
    bar.close()
    return good


def _walk(path, evaluator, budget, progress) -> int:
    """Plain greedy: verify every step of the path in order, stop at the first failure."""
    good = 0
    for index in tqdm(range(1, len(path)), desc="verify", disable=not progress, leave=False):
        if evaluator.relative_quality(path[index]) < budget:
            break
        good = index
    return good


def _plan(target, layers, paths, state, evaluator, budget, metric_name, dense_quality, seed, calibration, dense_edp,
          strategy) -> Plan:
    entries = []
    for layer, index in zip(layers, state):
        option = layer.options[index]
        dense = layer.options[0]
        entries.append(LayerPlan(
            layer.name, option.config, option.activation, option.score,
            layer.scale if option.score == "activation" else None,
            {
                "proxy_error": round(option.proxy, 6),
                "sensitivity": round(layer.alpha, 6),
                "energy_pj": option.energy_pj,
                "latency_s": option.latency_s,
                "edp_vs_dense": option.edp / dense.edp if dense.edp else 1.0,
            },
        ))
    edp_ratio = float(_features(layers, state, dense_edp)[-1])
    relative = evaluator.relative_quality(state)
    info = {
        "metric": metric_name,
        "quality": {"original": dense_quality, "plan": relative * dense_quality, "relative": relative,
                    "predicted_drop": float(sum(_features(layers, state, dense_edp)[:-1]))},
        "edp_vs_dense": edp_ratio,
        "seed": seed,
        "inputs": {"calibration_batches": len(calibration), "fingerprint": _fingerprint(calibration)},
        "search": {
            "strategy": strategy,
            "full_evaluations": len(evaluator.cache),  # the original model's run included
            "sensitivity_runs": sum(len(layer.options) > 1 for layer in layers),
            "path_lengths": {name: len(path) for name, path in paths.items()},
            "points": [  # every state evaluated for real: the search's quality-vs-EDP curve
                {"edp_vs_dense": float(_features(layers, s, dense_edp)[-1]), "relative_quality": q}
                for s, q in evaluator.cache.items()
            ],
        },
        "note": "EDP is modelled (tvm_tasd.cost) from " + target.source_file.split("/")[-1],
    }
    return Plan(entries, target.name, budget, info)

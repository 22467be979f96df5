"""One search in progress: the layers' frontiers, every real evaluation made, and how paths are verified.

:class:`Search` owns what the steps share — the evaluator, the metric, the
dense quality, the cache of measured states and the XGBoost surrogate — so
the steps are methods, not functions of ten arguments.

Verification (:meth:`Search.verified`): every state of a path is a full
assignment and quality falls (nearly) monotonically along it, so the
furthest state that keeps the budget is bracketed with real evaluations.
An XGBoost surrogate — trained on every evaluation made so far, features =
per-layer α·e² and the EDP ratio — proposes each probe (the furthest state
it predicts to pass inside the bracket) instead of the midpoint; its
proposals are always verified, so a wrong prediction costs one evaluation,
never quality. ``strategy="bisect"`` probes midpoints; ``"walk"`` (plain
greedy, the baseline the savings are quoted against) evaluates every step
until the first failure.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import xgboost
from tqdm.auto import tqdm

from ..evaluation import Outputs, WeightFedModel, cosine_metric
from ..evaluation.metrics import Metric, score
from ..hardware import HardwareTarget
from ..plan import Plan
from .frontier import LayerSearch
from .options import SearchOptions
from .paths import Fixed, State, model_edp


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
        model = xgboost.XGBRegressor(
            n_estimators=60, max_depth=3, learning_rate=0.2, random_state=self.seed, n_jobs=1,
            monotone_constraints="(" + ",".join(["-1"] * (features.shape[1] - 1) + ["1"]) + ")",
        )
        model.fit(np.stack(self.features), np.asarray(self.targets))
        return model.predict(features)


class Search:
    """The state of one search over ``layers`` (each with its frontier) on ``model``."""

    def __init__(self, layers: list[LayerSearch], model: WeightFedModel, scored: list[int], metric: Metric,
                 dense_quality: float, options: SearchOptions, fixed: Fixed = (0.0, 0.0)):
        self.layers = layers
        self.fixed = fixed  # the layers no state moves
        self.model = model
        self.scored = scored  # the outputs the metric reads
        self.metric = metric
        self.dense_quality = dense_quality
        self.options = options
        self.dense_state: State = (0,) * len(layers)
        self.measured: dict[State, float] = {self.dense_state: 1.0}  # relative quality of every state run
        self.dense_edp = model_edp(layers, self.dense_state, fixed)
        self.surrogate = _Surrogate(options.seed)

    # ---------------------------------------------------------------- measuring

    def run(self, weights=None, batches: int | None = None, keeps=None, feeds=None):
        """The scored outputs of the model with these weights and keep counts (on ``feeds``,
        default the search batches)."""
        outputs = self.model.run(weights, batches=batches, keeps=keeps, feeds=feeds)
        return [[batch[i] for i in self.scored] for batch in outputs]

    def _inputs(self, state: State) -> tuple[dict, dict]:
        """(weights, activation keep counts) that run ``state``."""
        weights, keeps = {}, {}
        for layer, index in zip(self.layers, state):
            layer_weights, layer_keeps = layer.feeds(layer.options[index])
            weights.update(layer_weights)
            keeps.update(layer_keeps)
        return weights, keeps

    def edp_ratio(self, state: State) -> float:
        """Modelled EDP of ``state`` ÷ all-dense."""
        return model_edp(self.layers, state, self.fixed) / self.dense_edp

    def features(self, state: State) -> np.ndarray:
        """Per-layer predicted damage α·e², then the EDP ratio: what the surrogate learns from."""
        damage = [layer.alpha * layer.options[i].proxy ** 2 for layer, i in zip(self.layers, state)]
        return np.asarray(damage + [self.edp_ratio(state)])

    def relative_quality(self, state: State) -> float:
        """The metric of ``state`` ÷ the original model's, measured once per state."""
        if state not in self.measured:
            weights, keeps = self._inputs(state)
            self.measured[state] = score(self.metric, self.run(weights, keeps=keeps)) / self.dense_quality
        return self.measured[state]

    def measure_sensitivities(self, reference: Outputs) -> None:
        """α per layer: the output damage of its cheapest option alone, per unit of that option's e².

        Damage is 1 − cosine similarity to the original outputs on the first
        ``sensitivity_batches`` batches: smooth and cheap where a task metric on
        a few batches is noisy; only ratios of α matter.
        """
        batches = self.options.sensitivity_batches
        damage = cosine_metric(reference[:batches])
        for layer in tqdm(self.layers, desc="sensitivity", disable=not self.options.progress, leave=False):
            if len(layer.options) < 2:
                continue
            weights, keeps = layer.feeds(layer.options[-1])
            outputs = self.run(weights, batches=batches, keeps=keeps)
            layer.alpha = max(0.0, 1.0 - damage(outputs)) / max(layer.options[-1].proxy ** 2, 1e-30)

    # ---------------------------------------------------------------- verifying paths

    def verified(self, path: Sequence[State]) -> State:
        """The furthest state of ``path`` (whose first state passes) that keeps the budget."""
        index = self._walk(path) if self.options.strategy == "walk" else self._bracket(path)
        return path[index]

    def _bracket(self, path: Sequence[State]) -> int:
        """Index of the furthest path state whose measured relative quality ≥ budget."""
        budget = self.options.budget
        good, bad = 0, len(path)  # invariant: path[good] passes; path[bad:] untried or failed
        bar = tqdm(desc="verify", disable=not self.options.progress, leave=False)
        while bad - good > 1:
            probe = (good + bad) // 2
            if self.options.strategy == "surrogate":
                predicted = self.surrogate.predict(np.stack([self.features(path[i]) for i in range(good + 1, bad)]))
                if predicted is not None:
                    passing = [good + 1 + i for i, q in enumerate(predicted) if q >= budget]
                    guess = max(passing) if passing else good + 1
                    margin = max(1, (bad - good) // 4)  # keep inside the bracket's middle half: a bad guess still shrinks it
                    probe = min(max(guess, good + margin), bad - margin)
            quality = self.relative_quality(path[probe])
            self.surrogate.add(self.features(path[probe]), quality)
            bar.update()
            if quality >= budget:
                good = probe
            else:
                bad = probe
        bar.close()
        return good

    def _walk(self, path: Sequence[State]) -> int:
        """Plain greedy: verify every step of the path in order, stop at the first failure."""
        good = 0
        for index in tqdm(range(1, len(path)), desc="verify", disable=not self.options.progress, leave=False):
            if self.relative_quality(path[index]) < self.options.budget:
                break
            good = index
        return good

    def passing(self) -> list[State]:
        """Every state measured to keep the budget, lowest EDP first (paths cross: any may beat the last
        winner)."""
        return sorted((s for s, q in self.measured.items() if q >= self.options.budget),
                      key=lambda s: (self.edp_ratio(s), -self.measured[s]))

    def validated(self, feeds: list, metric: Metric, dense_quality: float) -> tuple[State, dict]:
        """The cheapest state that keeps the budget on the search batches *and* on held-out ``feeds``
        (scored by ``metric``, the original model scoring ``dense_quality`` on them).

        The all-dense state keeps any budget, so there is always one. Returns it with what the
        held-out check measured.
        """
        budget = self.options.budget
        for rejected, state in enumerate(self.passing()):
            weights, keeps = self._inputs(state)
            relative = score(metric, self.run(weights, keeps=keeps, feeds=feeds)) / dense_quality
            if relative >= budget or state == self.dense_state:
                return state, {"batches": len(feeds), "original": dense_quality, "plan": relative * dense_quality,
                               "relative": relative, "rejected": rejected}
        raise AssertionError("the dense state is always measured and passing")

    # ---------------------------------------------------------------- the result

    def plan(self, state: State, target: HardwareTarget, metric_name: str, calibration, fit, path_lengths: dict,
             validation: dict | None) -> Plan:
        relative = self.relative_quality(state)
        info = {
            "metric": metric_name,
            "outputs": [self.model.output_names[i] for i in self.scored],
            "quality": {"original": self.dense_quality, "plan": relative * self.dense_quality, "relative": relative,
                        "predicted_drop": float(sum(self.features(state)[:-1])), "held_out": validation},
            "edp_vs_dense": float(self.edp_ratio(state)),
            "seed": self.options.seed,
            "inputs": {"calibration_batches": len(calibration), "fingerprint": _fingerprint(calibration),
                       **({"fit_batches": len(fit), "fit_fingerprint": _fingerprint(fit)} if fit else {})},
            "search": {
                "strategy": self.options.strategy,
                "full_evaluations": len(self.measured),  # the original model's run included
                "sensitivity_runs": sum(len(layer.options) > 1 for layer in self.layers),
                "path_lengths": path_lengths,
                "points": [  # every state evaluated for real: the search's quality-vs-EDP curve
                    {"edp_vs_dense": float(self.edp_ratio(s)), "relative_quality": q} for s, q in self.measured.items()
                ],
            },
            "hardware_digest": target.digest,
            "note": "EDP is modelled (tvm_tasd.cost) from " + target.source_file.split("/")[-1],
        }
        choices = [layer.choice(index) for layer, index in zip(self.layers, state)]
        return Plan(choices, target.name, self.options.budget, info)


def _fingerprint(calibration) -> str:
    digest = hashlib.sha1()
    for feed in calibration:
        for name in sorted(feed):
            array = np.ascontiguousarray(feed[name])
            digest.update(name.encode() + str(array.shape).encode() + array.tobytes())
    return digest.hexdigest()[:16]

"""What a TASDER search is asked for, checked before any expensive work."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..candidates import useful_terms
from ..config import MAX_TERMS
from ..evaluation.metrics import NAMES as METRIC_NAMES
from ..evaluation.metrics import Metric
from ..hardware import HardwareTarget
from ..policy import METHODS

STRATEGIES = ("surrogate", "bisect", "walk")


def sample_count(calibration: Sequence[dict]) -> int:
    """Samples in a list of feeds (the first axis of each batch's inputs)."""
    return sum(len(next(iter(feed.values()))) for feed in calibration)


def is_share(value) -> bool:
    """Whether ``value`` is a number in [0, 1) (a bool is not)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 <= value < 1


@dataclass(frozen=True)
class SearchOptions:
    """The knobs of :func:`tvm_tasd.tasder.search` (its docstring says what each does)."""

    metric: "str | Metric" = "cosine"
    budget: float = 0.99
    labels: np.ndarray | None = None
    max_terms: int = 2
    methods: Sequence[str] = METHODS
    strategy: str = "surrogate"
    sensitivity_batches: int = 4
    seed: int = 0
    progress: bool = True
    damp: float = 0.01

    def check(self, target: HardwareTarget, calibration: Sequence[dict]) -> None:
        """Every mistake the user can make, caught before any expensive work."""
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of {STRATEGIES}")
        if not isinstance(self.budget, (int, float)) or not 0 < self.budget <= 1:
            raise ValueError(f"budget is the share of the original quality to keep, in (0, 1]; got {self.budget!r} "
                             "(e.g. 0.99)")
        if not callable(self.metric) and self.metric not in METRIC_NAMES:
            raise ValueError(f"unknown metric {self.metric!r}: use 'cosine', 'top1', 'accuracy' or a "
                             "callable(outputs) -> float")
        if isinstance(self.max_terms, bool) or not isinstance(self.max_terms, int) or not 1 <= self.max_terms <= MAX_TERMS:
            raise ValueError(f"max_terms is the longest series tried, 1…{MAX_TERMS}; got {self.max_terms!r}")
        if isinstance(self.sensitivity_batches, bool) or not isinstance(self.sensitivity_batches, int) or \
                self.sensitivity_batches < 1:
            raise ValueError(f"sensitivity_batches must be a positive integer, got {self.sensitivity_batches!r}")
        if isinstance(self.methods, str) or not self.methods:
            raise ValueError(f"methods is a non-empty list drawn from {list(METHODS)}, got {self.methods!r}")
        if unknown := [m for m in self.methods if m not in METHODS]:
            raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)}")
        if not is_share(self.damp):
            raise ValueError(f"damp is the OBS damping, a share of the mean Hessian diagonal in [0, 1); got {self.damp!r}")
        if not calibration:
            raise ValueError("calibration set is empty: give a list of input feeds (one dict per batch)")
        if self.metric == "accuracy" and self.labels is None:
            raise ValueError("metric 'accuracy' needs labels=: one label per calibration sample")
        if self.metric == "accuracy":
            samples = sample_count(calibration)
            if len(np.asarray(self.labels).reshape(-1)) != samples:
                raise ValueError(f"{len(np.asarray(self.labels).reshape(-1))} labels for {samples} calibration samples")
        if not useful_terms(target):
            raise ValueError(f"target {target.name!r} runs no N:M pattern faster than dense: nothing to search for")

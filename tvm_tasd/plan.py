"""Plans: per-layer TASD choices, as JSON that tools outside TVM can apply.

A plan is what TASDER emits and what ``TASDRewrite(hw, plan=...)`` applies.
Layers are named by their *source* weight (ONNX initializer or PyTorch
parameter name), so the same file can drive another toolchain. Schema
(``version`` 1)::

    {"version": 1, "hardware": "vegeta-m8", "budget": 0.99,
     "quality": {...}, "edp_vs_dense": 0.42, "seed": 0, "inputs": {...},
     "layers": [{"name": "fc1.weight", "weight": "2:8+1:8",
                 "activation": null, "score": "magnitude", "s": null, ...}]}

``score`` is ``"magnitude"`` or ``"activation"``; for ``activation`` the
per-channel vector ``s`` is stored so applying the plan needs no data.
Unknown extra keys are kept (search statistics, costs).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import TASDConfig

PLAN_VERSION = 1


@dataclass
class LayerPlan:
    name: str
    weight: TASDConfig
    activation: TASDConfig | None = None
    score: str = "magnitude"
    s: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.weight = TASDConfig.parse(self.weight)
        if self.activation is not None:
            self.activation = TASDConfig.parse(self.activation)
        if self.score not in ("magnitude", "activation"):
            raise ValueError(f"layer {self.name!r}: score must be 'magnitude' or 'activation', got {self.score!r}")
        if self.score == "activation" and self.s is None:
            raise ValueError(f"layer {self.name!r}: score 'activation' needs its scale vector 's'")
        if self.s is not None:
            self.s = np.asarray(self.s, np.float32)

    @property
    def selection_score(self):
        """What :func:`tvm_tasd.decompose` takes as ``score``."""
        return self.s if self.score == "activation" else "magnitude"

    def to_json(self) -> dict:
        out = {
            "name": self.name,
            "weight": str(self.weight),
            "activation": None if self.activation is None else str(self.activation),
            "score": self.score,
            "s": None if self.s is None else [float(v) for v in self.s],
        }
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, entry: dict) -> "LayerPlan":
        missing = {"name", "weight"} - set(entry)
        if missing:
            raise ValueError(f"plan layer entry {entry!r} lacks {sorted(missing)}")
        known = {"name", "weight", "activation", "score", "s"}
        return cls(
            entry["name"],
            entry["weight"],
            entry.get("activation"),
            entry.get("score", "magnitude"),
            entry.get("s"),
            {k: v for k, v in entry.items() if k not in known},
        )


@dataclass
class Plan:
    layers: list[LayerPlan]
    hardware: str | None = None
    budget: float | None = None
    info: dict[str, Any] = field(default_factory=dict)  # quality, edp_vs_dense, seed, inputs, search stats

    def by_name(self) -> dict[str, LayerPlan]:
        return {layer.name: layer for layer in self.layers}

    def to_json(self) -> dict:
        out = {"version": PLAN_VERSION, "hardware": self.hardware, "budget": self.budget}
        out.update(self.info)
        out["layers"] = [layer.to_json() for layer in self.layers]
        return out

    @classmethod
    def from_json(cls, data: dict) -> "Plan":
        if not isinstance(data, dict) or "layers" not in data:
            raise ValueError("not a TASD plan: a JSON object with a 'layers' list is expected")
        if data.get("version", PLAN_VERSION) != PLAN_VERSION:
            raise ValueError(f"plan version {data.get('version')} is not supported (this tvm_tasd reads {PLAN_VERSION})")
        info = {k: v for k, v in data.items() if k not in ("version", "hardware", "budget", "layers")}
        return cls([LayerPlan.from_json(e) for e in data["layers"]], data.get("hardware"), data.get("budget"), info)

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (temporary file + rename), sorted keys: byte-stable output."""
        text = json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n"
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".plan-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plan":
        try:
            with open(path) as handle:
                data = json.load(handle)
        except FileNotFoundError:
            raise FileNotFoundError(f"plan file {os.fspath(path)!r} does not exist") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"plan file {os.fspath(path)!r} is not JSON: {err}") from None
        return cls.from_json(data)

    @classmethod
    def coerce(cls, value) -> "Plan":
        """A Plan from a Plan, a path, a JSON dict, or a {name: config} mapping."""
        if isinstance(value, Plan):
            return value
        if isinstance(value, (str, os.PathLike)):
            return cls.load(value)
        if isinstance(value, dict) and "layers" in value:
            return cls.from_json(value)
        if isinstance(value, dict):
            return cls([LayerPlan(name, config) for name, config in value.items()])
        raise TypeError(f"a plan is a Plan, a JSON file path, or a {{layer name: config}} dict, got {type(value).__name__}")

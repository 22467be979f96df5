"""Plans: per-layer TASD choices, as JSON that tools outside TVM can apply.

A plan is what TASDER emits and what ``TASDRewrite(hw, plan=...)`` applies:
a list of :class:`~tvm_tasd.policy.Choice` values, one per layer, plus what
the search knows about them (budget, quality, EDP).
Layers are named by their *source* weight (ONNX initializer or PyTorch
parameter name), so the same file can drive another toolchain. Schema
(``version`` 1)::

    {"version": 1, "hardware": "vegeta-m8", "budget": 0.99,
     "quality": {...}, "edp_vs_dense": 0.42, "seed": 0, "inputs": {...},
     "layers": [{"name": "fc1.weight", "weight": "2:8+1:8",
                 "activation": null, "score": "magnitude", "s": null, ...}]}

``score`` is ``"magnitude"`` or ``"activation"``; for ``activation`` the
per-channel vector ``s`` is stored so applying the plan needs no data. A
searched layer also carries TASDER's statistics (``proxy_error``,
``sensitivity``, ``energy_pj``, ``latency_s``, ``edp_vs_dense``:
:class:`~tvm_tasd.policy.SearchStats`).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .hardware import HardwareTarget, load_target
from .io import parse_json, write_text
from .policy import Choice, TASDWarning

PLAN_VERSION = 1


@dataclass
class Plan:
    layers: list[Choice]
    hardware: str | None = None
    budget: float | None = None
    info: dict[str, Any] = field(default_factory=dict)  # quality, edp_vs_dense, seed, inputs, search stats

    def by_name(self) -> dict[str, Choice]:
        return {layer.name: layer for layer in self.layers}

    def target(self, hw=None, default: str = "cpu-emulated") -> HardwareTarget:
        """The target to apply the plan on: ``hw`` when given, else the one it was searched for, else ``default``.

        A plan records its target's name and content digest. Resolving the
        name to a target with other numbers (the plan was searched with a
        copied file that kept a bundled name) is an error; applying it on
        such a target given explicitly is allowed, with a warning.
        """
        recorded = self.info.get("hardware_digest")
        if hw is not None:
            target = load_target(hw)
            if recorded and target.name == self.hardware and target.digest != recorded:
                warnings.warn(f"the plan was searched for a {self.hardware} with other numbers than "
                              f"{target.source_file}; costing it with this file's", TASDWarning, stacklevel=2)
            return target
        if self.hardware is None:
            return load_target(default)
        target = load_target(self.hardware)
        if recorded and target.digest != recorded:
            raise ValueError(f"the plan was searched for a target named {self.hardware!r} whose numbers differ from "
                             f"{target.source_file} (a copied file that kept the name?); pass that file explicitly "
                             "(--tasd-hw / --hw / hw=)")
        return target

    def to_json(self) -> dict:
        out = {"version": PLAN_VERSION, "hardware": self.hardware, "budget": self.budget}
        out.update(self.info)
        out["layers"] = [layer.to_json() for layer in self.layers]
        return out

    @classmethod
    def from_json(cls, data: dict) -> "Plan":
        if not isinstance(data, dict) or not isinstance(data.get("layers"), list):
            raise ValueError("not a TASD plan: a JSON object with a 'layers' list is expected")
        if data.get("version", PLAN_VERSION) != PLAN_VERSION:
            raise ValueError(f"plan version {data.get('version')} is not supported (this tvm_tasd reads {PLAN_VERSION})")
        if not data["layers"]:
            raise ValueError("the plan's 'layers' list is empty: it chooses nothing")
        if not isinstance(data.get("hardware"), (str, type(None))):
            raise ValueError(f"the plan's 'hardware' must be a target name, got {data['hardware']!r}")
        budget = data.get("budget")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))):
            raise ValueError(f"the plan's 'budget' must be a number, got {budget!r}")
        layers = []
        for index, entry in enumerate(data["layers"]):
            try:
                layers.append(Choice.from_json(entry))
            except (TypeError, ValueError) as err:
                raise ValueError(f"plan layer {index}: {err}") from None
        names = [layer.name for layer in layers]
        if len(set(names)) != len(names):
            raise ValueError(f"the plan names layer {next(n for n in names if names.count(n) > 1)!r} twice")
        info = {k: v for k, v in data.items() if k not in ("version", "hardware", "budget", "layers")}
        return cls(layers, data.get("hardware"), budget, info)

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically, sorted keys: byte-stable output."""
        write_text(path, json.dumps(self.to_json(), indent=1, sort_keys=True, allow_nan=False) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plan":
        try:
            raw = Path(path).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"plan file {os.fspath(path)!r} does not exist") from None
        return cls.from_json(parse_json(raw, f"plan file {os.fspath(path)!r}"))

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
            return cls([Choice(name, config) for name, config in value.items()])
        raise TypeError(f"a plan is a Plan, a JSON file path, or a {{layer name: config}} dict, got {type(value).__name__}")

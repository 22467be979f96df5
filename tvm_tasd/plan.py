"""Plans: per-layer TASD choices, as JSON that tools outside TVM can apply.

A plan is what TASDER emits and what ``TASDRewrite(hw, plan=...)`` applies:
a list of :class:`~tvm_tasd.policy.Choice` values, one per layer, plus what
the search knows about them (budget, quality, EDP).
Layers are named by their *source* weight (ONNX initializer or PyTorch
parameter name), so the same file can drive another toolchain. Schema
(``version`` 2)::

    {"version": 2, "hardware": "vegeta-m8", "budget": 0.99,
     "quality": {...}, "edp_vs_dense": 0.42, "seed": 0, "inputs": {...},
     "weights": {"file": "plan.weights.npz", "sha256": "..."},
     "layers": [{"name": "fc1.weight", "weight": "2:8+1:8",
                 "activation": null, "method": "magnitude", "s": null,
                 "source": "3f2a…", ...}]}

``source`` is the fingerprint of the dense weight the layer's choice was
made for (searches record it; a plan applied to other weight values, e.g.
another version of the model, is refused). ``method`` is ``"magnitude"``, ``"activation"`` or ``"obs"``
(:data:`~tvm_tasd.policy.METHODS`); for ``activation`` the per-channel
vector ``s`` is stored so applying the plan needs no data. An ``obs``
layer's terms were fitted to calibration data the plan does not hold, so
:meth:`Plan.save` writes them beside the plan, compressed
(``plan.weights.npz``: per layer and term ``NAME/termI.values`` and
``.indices``, ``docs/semantics.md`` §4) and records that file's name and
content digest under ``"weights"``; :meth:`Plan.load` reads and checks it.
Applying such a plan then needs neither the data nor the Hessians, and
every path (the pass, :func:`~tvm_tasd.reference.approximate_onnx`,
``tasd apply``) runs the very same weights. A searched layer also carries
TASDER's statistics (``proxy_error``, ``sensitivity``, ``energy_pj``,
``latency_s``, ``edp_vs_dense``: :class:`~tvm_tasd.policy.SearchStats`).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import TASDConfig
from .decompose import NMTerm
from .hardware import HardwareTarget, load_target
from .io import load_npz, parse_json, save_npz, write_text
from .policy import Choice, TASDWarning

PLAN_VERSION = 2  # 2: per-layer ``method`` (obs terms beside the plan); 1 named it ``score``, still read


@dataclass
class Plan:
    layers: list[Choice]
    hardware: str | None = None
    budget: float | None = None
    info: dict[str, Any] = field(default_factory=dict)  # quality, edp_vs_dense, seed, inputs, search stats

    def by_name(self) -> dict[str, Choice]:
        return {layer.name: layer for layer in self.layers}

    def series(self) -> dict[str, tuple]:
        """Layer name → its (weight, activation) series, as :func:`tvm_tasd.cost.model_cost` takes them."""
        return {layer.name: (layer.weight, layer.activation) for layer in self.layers}

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
    def from_json(cls, data: dict, terms: dict[str, list[NMTerm]] | None = None) -> "Plan":
        """The plan of :meth:`to_json`'s form; ``terms`` are the ``obs`` layers' (what :meth:`load` reads)."""
        if not isinstance(data, dict) or not isinstance(data.get("layers"), list):
            raise ValueError("not a TASD plan: a JSON object with a 'layers' list is expected")
        if data.get("version", PLAN_VERSION) not in (1, PLAN_VERSION):
            raise ValueError(f"plan version {data.get('version')} is not supported (this tvm_tasd reads 1 and "
                             f"{PLAN_VERSION})")
        if not data["layers"]:
            raise ValueError("the plan's 'layers' list is empty: it chooses nothing")
        if not isinstance(data.get("hardware"), (str, type(None))):
            raise ValueError(f"the plan's 'hardware' must be a target name, got {data['hardware']!r}")
        budget = data.get("budget")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))):
            raise ValueError(f"the plan's 'budget' must be a number, got {budget!r}")
        terms = terms or {}
        layers = []
        for index, entry in enumerate(data["layers"]):
            try:
                layers.append(Choice.from_json(entry, terms.get(entry.get("name")) if isinstance(entry, dict) else None))
            except (TypeError, ValueError) as err:
                raise ValueError(f"plan layer {index}: {err}") from None
        names = [layer.name for layer in layers]
        if len(set(names)) != len(names):
            raise ValueError(f"the plan names layer {next(n for n in names if names.count(n) > 1)!r} twice")
        info = {k: v for k, v in data.items() if k not in ("version", "hardware", "budget", "layers", "weights")}
        return cls(layers, data.get("hardware"), budget, info)

    def save(self, path: str | os.PathLike, beside: str | os.PathLike | None = None) -> None:
        """Write atomically, sorted keys: byte-stable output. OBS terms go to :func:`weights_path` of
        ``beside`` (default ``path``: give the final name when ``path`` is a temporary one)."""
        data = self.to_json()
        arrays = {f"{layer.name}/term{i}.{part}": getattr(term, part) for layer in self.layers
                  if layer.terms for i, term in enumerate(layer.terms) for part in ("values", "indices")}
        if arrays:
            sidecar = weights_path(beside if beside is not None else path)
            save_npz(sidecar, arrays, compressed=True)  # the uint8 indices compress well (the values hardly)
            data["weights"] = {"file": sidecar.name, "sha256": _digest(arrays)}
        write_text(path, json.dumps(data, indent=1, sort_keys=True, allow_nan=False) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plan":
        try:
            raw = Path(path).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"plan file {os.fspath(path)!r} does not exist") from None
        data = parse_json(raw, f"plan file {os.fspath(path)!r}")
        terms = _load_terms(Path(path), data) if isinstance(data, dict) and "weights" in data else None
        return cls.from_json(data, terms)

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


def weights_path(plan_path: str | os.PathLike) -> Path:
    """Where a plan's OBS terms are kept: ``plan.json`` → ``plan.weights.npz``, beside it."""
    plan_path = Path(plan_path)
    stem = plan_path.stem if plan_path.suffix == ".json" else plan_path.name
    return plan_path.with_name(stem + ".weights.npz")


def _digest(arrays: dict) -> str:
    """Content digest of the terms (file bytes would change with the zip's timestamps)."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        array = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}|{array.dtype.str}|{array.shape}|".encode() + array.tobytes())
    return digest.hexdigest()


def _load_terms(plan_path: Path, data: dict) -> dict[str, list[NMTerm]]:
    """The ``obs`` layers' terms from the plan's weights file, checked against its recorded digest."""
    record = data["weights"]
    if not isinstance(record, dict) or not isinstance(record.get("file"), str) or not isinstance(record.get("sha256"), str):
        raise ValueError(f"plan file {plan_path}: 'weights' must be {{\"file\": NAME, \"sha256\": DIGEST}}")
    file = plan_path.parent / Path(record["file"]).name  # always beside the plan, never a path it names
    if not file.exists():
        raise ValueError(f"plan file {plan_path} keeps its OBS-reconstructed weights in {file}, which is missing; "
                         "copy it along with the plan")
    arrays = load_npz(file, "plan weights")
    if _digest(arrays) != record["sha256"]:
        raise ValueError(f"{file} is not the weights file plan {plan_path} was saved with (its content digest "
                         "differs): a file from another search?")
    terms = {}
    layers = data["layers"] if isinstance(data.get("layers"), list) else []  # from_json says what is wrong
    for entry in layers:
        if not isinstance(entry, dict) or entry.get("method") != "obs":
            continue
        try:
            config = TASDConfig.parse(entry.get("weight"))
            shape, axis = tuple(int(d) for d in entry["shape"]), int(entry["axis"])
            if not 0 <= axis < len(shape):
                raise ValueError(f"axis {axis} of a {len(shape)}-d weight")
            terms[entry["name"]] = [
                NMTerm(pattern, axis, shape, arrays[f"{entry['name']}/term{i}.values"],
                       arrays[f"{entry['name']}/term{i}.indices"]) for i, pattern in enumerate(config.terms)]
            for term in terms[entry["name"]]:  # the compressed form against the pattern and the recorded shape
                if term.dense().shape != shape:
                    raise ValueError(f"a term of shape {term.dense().shape}, the plan says {shape}")
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"plan file {plan_path}: the weights of layer {entry.get('name')!r} in {file.name} are "
                             f"unusable ({err})") from None
    return terms

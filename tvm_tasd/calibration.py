"""Per-channel activation statistics from calibration data (DESIGN §2).

The ``activation`` selection score is |w|·s_k, where s_k is the L2 norm of
input channel k of the layer's activation over all calibration data, k
running along the weight's reduction axis:

* ``MatMul`` (K, N) weight and ``Gemm``: the activation's last axis (its
  first with ``transA=1``), every other axis, token and batch pooled;
* ``Conv`` OIHW: the input's channel axis C, pooled over batch, H and W.

:func:`calibrate` gathers the statistics in one pass: each layer's
activation input becomes an extra output of one onnxruntime session, and
sums of squares accumulate in float64. It also measures the share of exact
nonzeros of each activation, and marks the layers fed by a ReLU, whose
zeros are dynamic — where run-time activation terms pay off most.

Layers are named by their weight initializer, as in
:func:`~tvm_tasd.reference.weight_axes`. A layer whose activation input is
a constant (computed from initializers only) has no statistics.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper
from tqdm import tqdm

from .evaluate import Feed, check_calibration, inference_session, load_model
from .reference import weight_axes

#: Ops that keep a ReLU output's zeros: layout changes, and max over non-negatives.
_ZERO_PRESERVING = frozenset(
    {"Identity", "Dropout", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "MaxPool"}
)

#: Fewer batches than this finish before a progress bar is worth drawing.
_PROGRESS_MIN_BATCHES = 4
#: Activation rows kept per layer to estimate activation-series errors.
SAMPLE_ROWS = 256


@dataclass(frozen=True)
class _Site:
    """One use of a layer weight: the activation it multiplies and that activation's channel axis."""

    tensor: str
    channel_axis: int
    elem_type: int  # the weight's, which ONNX requires the activation to share


@dataclass(frozen=True)
class CalibrationStats:
    """What one pass over the calibration data measured, per layer weight.

    ``norms[name]`` is s (float64, one entry per reduction-axis channel);
    ``nonzero_density[name]`` the share of exact nonzeros of the layer's
    input; ``relu_fed`` the layers whose input comes from a ReLU;
    ``samples[name]`` up to ``SAMPLE_ROWS`` rows of that input from the first
    batch, as (rows, channels) — enough to estimate activation-series errors.
    """

    norms: dict[str, np.ndarray]
    nonzero_density: dict[str, float]
    relu_fed: frozenset[str]
    batches: int
    samples: dict[str, np.ndarray]


def _constant_values(graph: onnx.GraphProto) -> set[str]:
    """Values fixed before any input arrives: initializers, Constant nodes and what only they feed.

    ONNX lists nodes in topological order, so one forward sweep suffices.
    """
    constant = {init.name for init in graph.initializer} | {""}  # "" is an omitted optional input
    for node in graph.node:
        if node.op_type == "Constant" or (node.input and all(name in constant for name in node.input)):
            constant.update(node.output)
    return constant


def _activation_sites(model: onnx.ModelProto) -> dict[str, list[_Site]]:
    """Layer weight → the activations it multiplies, for every weight with a non-constant one."""
    axes = weight_axes(model)
    elem_types = {init.name: init.data_type for init in model.graph.initializer}
    constant = _constant_values(model.graph)
    sites: dict[str, list[_Site]] = {}
    for node in model.graph.node:
        if len(node.input) < 2 or node.input[1] not in axes or node.input[0] in constant:
            continue
        if node.op_type == "Conv":
            channel_axis = 1
        else:  # MatMul, Gemm: channels along the activation's K axis
            trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
            channel_axis = 0 if node.op_type == "Gemm" and trans_a else -1
        sites.setdefault(node.input[1], []).append(_Site(node.input[0], channel_axis, elem_types[node.input[1]]))
    return sites


def _relu_fed(sites: dict[str, list[_Site]], graph: onnx.GraphProto) -> frozenset[str]:
    producers = {out: node for node in graph.node for out in node.output}

    def from_relu(tensor: str) -> bool:
        node = producers.get(tensor)
        while node is not None and node.op_type in _ZERO_PRESERVING:
            node = producers.get(node.input[0])
        return node is not None and node.op_type == "Relu"

    return frozenset(name for name, uses in sites.items() if all(from_relu(site.tensor) for site in uses))


def relu_fed_layers(model: "onnx.ModelProto | str | os.PathLike") -> set[str]:
    """Layer weights whose activation input comes from a ReLU (through layout ops or max-pooling only)."""
    model = load_model(model)
    return set(_relu_fed(_activation_sites(model), model.graph))


def _with_outputs(model: onnx.ModelProto, sites: Iterable[_Site]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the given activations (type from the weight; shape not needed)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {value.name for value in model.graph.output}
    for site in sites:
        if site.tensor not in present:
            exposed.graph.output.append(helper.make_tensor_value_info(site.tensor, site.elem_type, None))
            present.add(site.tensor)
    return exposed


class StatsAccumulator:
    """Per activation: float64 sum of squares per channel, nonzero count and a row sample, batch by batch."""

    def __init__(self):
        self.squares: dict = {}
        self.samples: dict = {}
        self.nonzeros: dict = {}
        self.sizes: dict = {}
        self.batches = 0

    def add(self, key, x: np.ndarray, channel_axis: int) -> None:
        x = np.asarray(x)
        axis = channel_axis % x.ndim
        pooled = tuple(a for a in range(x.ndim) if a != axis)
        self.squares[key] = self.squares.get(key, 0.0) + np.square(x, dtype=np.float64).sum(axis=pooled)
        if key not in self.samples:
            self.samples[key] = np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])[:SAMPLE_ROWS].copy()
        self.nonzeros[key] = self.nonzeros.get(key, 0) + int(np.count_nonzero(x))
        self.sizes[key] = self.sizes.get(key, 0) + x.size

    def stats(self, uses: dict[str, list], channels: dict[str, int], relu_fed: frozenset[str]) -> CalibrationStats:
        """Statistics per layer weight, pooling the activations it multiplies (``uses``: name → keys)."""
        norms, density = {}, {}
        for name, keys in uses.items():
            norm = np.sqrt(sum(self.squares[key] for key in keys))
            if norm.shape != (channels[name],):
                raise ValueError(
                    f"layer {name!r}: its activation has {norm.shape[0]} channels, the weight's reduction axis {channels[name]}"
                )
            norms[name] = norm
            density[name] = sum(self.nonzeros[key] for key in keys) / max(1, sum(self.sizes[key] for key in keys))
        samples = {name: self.samples[keys[0]] for name, keys in uses.items()}
        return CalibrationStats(norms, density, relu_fed, self.batches, samples)


    def over(self, feeds: list, progress: bool):
        """The calibration batches, counted, with a progress bar when there are enough to wait for."""
        show = progress and len(feeds) >= _PROGRESS_MIN_BATCHES
        for feed in tqdm(feeds, desc="calibration", unit="batch", file=sys.stderr, disable=None if show else True):
            yield feed
            self.batches += 1


def calibrate(
    model: "onnx.ModelProto | str | os.PathLike", calibration: Iterable[Feed], progress: bool = True
) -> CalibrationStats:
    """Channel norms, nonzero density and ReLU feeding of every layer, in one pass over ``calibration``.

    ``calibration`` is a list of feeds, one dict (input name → array) per batch.
    """
    model = load_model(model)
    feeds = check_calibration(model, calibration)
    sites = _activation_sites(model)
    graph_inputs = {value.name for value in model.graph.input}
    unique = list(dict.fromkeys(site for uses in sites.values() for site in uses))
    fetched = list(dict.fromkeys(site.tensor for site in unique if site.tensor not in graph_inputs))
    session = inference_session(_with_outputs(model, (s for s in unique if s.tensor in fetched))) if fetched else None

    accumulator = StatsAccumulator()
    for feed in accumulator.over(feeds, progress):
        values = dict(zip(fetched, session.run(fetched, dict(feed)))) if session else {}
        for site in unique:
            accumulator.add(site, values[site.tensor] if site.tensor in values else feed[site.tensor], site.channel_axis)

    axes = weight_axes(model)
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    channels = {name: shapes[name][axes[name]] for name in sites}
    return accumulator.stats(sites, channels, _relu_fed(sites, model.graph))


def channel_norms(model, calibration: Iterable[Feed], progress: bool = True) -> dict[str, np.ndarray]:
    """s per layer weight: the L2 norm of each input channel of its activation (see :func:`calibrate`)."""
    return calibrate(model, calibration, progress).norms


def activation_density(model, calibration: Iterable[Feed], progress: bool = True) -> dict[str, float]:
    """Share of exact nonzeros of each layer's activation input (see :func:`calibrate`)."""
    return calibrate(model, calibration, progress).nonzero_density

"""Per-channel activation statistics from calibration data (``docs/semantics.md`` §3).

The ``activation`` selection score is |w|·s_k, where s_k is the L2 norm of
input channel k of the layer's activation over all calibration data, k
running along the weight's reduction axis: the activation's last axis for
a matmul (token and batch pooled), the channel axis C of a conv input
(pooled over batch, H and W). One pass gathers, per layer, float64 sums of
squares per channel, the share of exact nonzeros of its input, and a sample
of input rows for estimating activation-series errors; every evaluator
(:mod:`tvm_tasd.evaluation`) feeds its layer inputs to one
:class:`StatsAccumulator`. Token rows a model's ``attention_mask`` input
marks as padding count nowhere (:data:`PADDING_MASK_INPUT`).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from ..policy import TASDWarning

Feed = Mapping[str, np.ndarray]

#: Fewer batches than this finish before a progress bar is worth drawing.
_PROGRESS_MIN_BATCHES = 4
#: Activation rows kept per layer to estimate activation-series errors.
SAMPLE_ROWS = 256


def check_feeds(calibration: Iterable[Feed], required: list[str], hint: str = "") -> list[Feed]:
    """The calibration batches as a list, each a feed with exactly the ``required`` inputs
    (``hint`` is appended to the errors)."""
    feeds = list(calibration)
    if not feeds:
        raise ValueError("calibration set is empty: give at least one feed dict (input name → array)")
    for index, feed in enumerate(feeds):
        if not isinstance(feed, Mapping):
            raise ValueError(f"calibration batch {index} is a {type(feed).__name__}, not a dict (input name → array)")
        missing = [name for name in required if name not in feed]
        if missing:
            raise ValueError(f"calibration batch {index} lacks model input(s) {missing}; data inputs are {required}{hint}")
        unknown = sorted(set(feed) - set(required))
        if unknown:
            raise ValueError(f"calibration batch {index} has {unknown}, which are not model inputs {required}{hint}")
    return feeds


@dataclass(frozen=True)
class CalibrationStats:
    """What one pass over the calibration data measured, per layer.

    ``norms[name]`` is s (float64, one entry per reduction-axis channel);
    ``nonzero_density[name]`` the share of exact nonzeros of the layer's
    input; ``relu_fed`` the layers whose input comes from a ReLU;
    ``samples[name]`` the first ``SAMPLE_ROWS`` rows of that input (padded
    token rows left out), as (rows, channels) — enough to estimate
    activation-series errors.
    ``hessians[name]``, when asked for, is H = XᵀX of the layer's input rows
    (:func:`hessian_rows`; K×K, float64: what :func:`tvm_tasd.decompose`
    takes as ``hessian``; K² · 8 bytes per layer, 19 MB at K = 1536).
    """

    norms: dict[str, np.ndarray]
    nonzero_density: dict[str, float]
    relu_fed: frozenset[str]
    batches: int
    samples: dict[str, np.ndarray]
    hessians: dict[str, np.ndarray] = field(default_factory=dict)


#: A model input by this name (the Hugging Face convention: (batch, tokens), 1 at real tokens, 0 at padding)
#: marks token rows that every statistic skips: padded positions are computed but never reach a masked
#: output, and short sentences padded to a fixed length would otherwise fill most rows with them. Layer
#: inputs are matched batch-major, (batch, tokens, …) or those flattened, as Hugging Face models lay them out.
PADDING_MASK_INPUT = "attention_mask"

#: Longest Hessian side gathered (K² · 8 bytes: 134 MB at 4096); longer layers get no ``obs`` option.
MAX_HESSIAN_K = 4096
#: Input rows (im2col patches for a conv) turned into float64 at once while a Gram accumulates.
_GRAM_ROWS = 8192


def takes_hessian(layer) -> bool:
    """Whether calibration gathers the layer's Hessian: an eligible matmul, or an eligible ungrouped
    conv, whose reduction length (kh·kw·C for a conv) is at most :data:`MAX_HESSIAN_K`."""
    if layer.ineligible or layer.k > MAX_HESSIAN_K:
        return False
    return layer.op == "matmul" or layer.conv.get("groups", 1) == 1


def hessian_signature(layer) -> tuple:
    """Layers with the same input and the same signature share one Hessian (q, k, v of attention)."""
    if layer.op == "matmul":
        return ("matmul",)
    return ("conv2d", tuple(layer.weight.shape[2:]),
            *(tuple(layer.conv[key]) for key in ("strides", "padding", "dilation")))


def hessian_rows(layer, x: np.ndarray) -> np.ndarray:
    """The rows X whose XᵀX is the layer's Hessian, columns in the order the OBS sweep visits
    (docs/semantics.md §3): a matmul's input rows; a conv's im2col patches ordered (kh, kw, C),
    C fastest, so that N:M groups of input channels stay contiguous."""
    if layer.op == "matmul":
        return x.reshape(-1, x.shape[-1])
    _, channels, kh, kw = layer.weight.shape
    (sh, sw), (dh, dw) = layer.conv["strides"], layer.conv["dilation"]
    top, left, bottom, right = layer.conv["padding"]
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    patches = windows[:, :, ::sh, ::sw, ::dh, ::dw]  # N, C, OH, OW, kh, kw
    return patches.transpose(0, 2, 3, 4, 5, 1).reshape(-1, kh * kw * channels)


def _real_tokens(mask) -> np.ndarray | None:
    """The real-token positions of a 1/0 padding mask; None (every row counts) without one, or for a mask of
    other values (an additive mask, 0 at real tokens, would otherwise select the padding), with a warning."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    if not np.isin(mask, (0, 1)).all():
        warnings.warn(f"the {PADDING_MASK_INPUT!r} input holds values other than 1 (real token) and 0 (padding); "
                      "calibration counts every token row, padding included", TASDWarning, stacklevel=4)
        return None
    return mask != 0


class StatsAccumulator:
    """Per activation: float64 sum of squares per channel, nonzero count and a row sample, batch by batch;
    token rows the batch's :data:`PADDING_MASK_INPUT` marks as padding are left out."""

    def __init__(self):
        self.grams: dict = {}
        self.squares: dict = {}
        self.samples: dict = {}
        self.nonzeros: dict = {}
        self.sizes: dict = {}
        self.batches = 0
        self._real_tokens: np.ndarray | None = None  # of the current batch

    def add(self, key, x: np.ndarray, channel_axis: int) -> None:
        """One batch of an activation."""
        rows = self._rows(np.asarray(x), channel_axis)
        self.squares[key] = self.squares.get(key, 0.0) + np.square(rows, dtype=np.float64).sum(axis=0)
        sample = self.samples.get(key, rows[:0])
        if len(sample) < SAMPLE_ROWS and len(rows):  # short sentences: the sample spans batches
            self.samples[key] = np.concatenate([sample, rows[: SAMPLE_ROWS - len(sample)]])
        self.nonzeros[key] = self.nonzeros.get(key, 0) + int(np.count_nonzero(rows))
        self.sizes[key] = self.sizes.get(key, 0) + rows.size

    def _rows(self, x: np.ndarray, channel_axis: int) -> np.ndarray:
        """``x`` as (rows, channels), without the current batch's padded token rows: where the positions of
        ``x`` are the mask's (batch, tokens), or those flattened."""
        rows = np.moveaxis(x, channel_axis % x.ndim, -1)
        real = self._real_tokens
        if real is not None and rows.shape[:-1] in (real.shape, (real.size,)):
            return rows[real.reshape(rows.shape[:-1])]
        return rows.reshape(-1, rows.shape[-1])

    def add_gram(self, key, layer, x: np.ndarray) -> None:
        """One batch of XᵀX for ``layer`` on its input ``x``, pooled under ``(key, its signature)``;
        a few samples at a time, so a conv's im2col patches never all exist at once."""
        x = np.asarray(x)
        if layer.op == "matmul":  # its rows are token rows: padding left out as in add
            x = self._rows(x, -1)
        per_sample = max(1, hessian_rows(layer, x[:1]).shape[0])
        step = max(1, _GRAM_ROWS // per_sample)
        key = (key, hessian_signature(layer))
        for start in range(0, x.shape[0], step):
            rows = hessian_rows(layer, x[start : start + step]).astype(np.float64)
            self.grams[key] = self.grams.get(key, 0.0) + rows.T @ rows

    def over(self, feeds: list, progress: bool):
        """The calibration batches, counted, with a progress bar when there are enough to wait for."""
        show = progress and len(feeds) >= _PROGRESS_MIN_BATCHES
        try:
            for feed in tqdm(feeds, desc="calibration", unit="batch", file=sys.stderr, disable=None if show else True):
                self._real_tokens = _real_tokens(feed.get(PADDING_MASK_INPUT))
                yield feed
                self.batches += 1
        finally:  # a batch's mask never outlives it
            self._real_tokens = None

    def stats(self, uses: dict[str, list], channels: dict[str, int], relu_fed: frozenset[str],
              layers: dict | None = None) -> CalibrationStats:
        """Statistics per layer, pooling the activations it multiplies (``uses``: name → keys);
        ``layers`` (name → Layer) to look its Hessian up."""
        norms, density = {}, {}
        for name, keys in uses.items():
            norm = np.sqrt(sum(self.squares[key] for key in keys))
            if norm.shape != (channels[name],):
                raise ValueError(
                    f"layer {name!r}: its activation has {norm.shape[0]} channels, the weight's reduction axis {channels[name]}"
                )
            norms[name] = norm
            density[name] = sum(self.nonzeros[key] for key in keys) / max(1, sum(self.sizes[key] for key in keys))
        samples = {name: self.samples.get(keys[0], np.zeros((0, channels[name]), np.float32))
                   for name, keys in uses.items()}
        hessians = {}
        for name, keys in uses.items():
            grams = [(key, hessian_signature(layers[name])) for key in keys] if layers and name in layers else []
            if grams and all(key in self.grams for key in grams):
                hessians[name] = sum(self.grams[key] for key in grams)
        return CalibrationStats(norms, density, relu_fed, self.batches, samples, hessians)

"""Compressed N:M terms → per-column *entry tables* that the CPU kernels read.

A TASD series Σ_t W_t of compressed terms (``tvm_tasd.NMTerm``: values and
uint8 in-group positions) is, for every output column, just a list of
(row, value) pairs: the kept weights of all terms together.  The fused
kernels walk that list once, so every term shares the activation read and
the accumulator (the paper's Fig. 11 dataflow).

The tables built here are target independent:

* rows are absolute reduction indices (group offset + in-group position),
  so the kernel does no index arithmetic beyond one add;
* positions in the zero padding of the last group (row ≥ K) are clamped to
  row K − 1 with value 0, so a kernel never reads past the activation;
* entries are grouped by *reduction tile* (a run of rows the kernel keeps in
  L1) and sorted by row inside a tile; every tile holds the same number of
  entries per column, padding short tiles with value-0 entries on a row of
  that tile, so the kernel loops over a rectangle.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tvm_tasd import NMPattern, NMTerm, TASDConfig


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def divisor_at_least(extent: int, wanted: int) -> int:
    """The smallest divisor of ``extent`` that is at least ``wanted`` (``extent`` itself where ``wanted`` exceeds
    it): a split of ``extent`` into at least ``wanted`` equal parts."""
    return next(d for d in range(min(wanted, extent), extent + 1) if extent % d == 0)


def pad_to(x: np.ndarray, axis: int, multiple: int, value=0) -> np.ndarray:
    """``x`` with ``value`` appended along ``axis`` up to a multiple of ``multiple`` (``x`` itself if it is one)."""
    pad = (-x.shape[axis]) % multiple
    if not pad:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return np.pad(x, widths, constant_values=value)


def as_patterns(patterns: "str | TASDConfig | Sequence[NMPattern | str]") -> tuple[NMPattern, ...]:
    """Accept a config string ("2:8+1:8"), a TASDConfig, or a list of patterns."""
    if isinstance(patterns, (str, TASDConfig)):
        result = TASDConfig.parse(patterns).terms
    else:
        result = tuple(p if isinstance(p, NMPattern) else NMPattern.parse(p) for p in patterns)
    if not result:
        raise ValueError("an N:M kernel needs at least one N:M term (use dense_matmul for 'dense')")
    return result


def group_lcm(patterns: Sequence[NMPattern]) -> int:
    """Smallest reduction tile that holds whole groups of every term."""
    return math.lcm(*(p.m for p in patterns))


def entries_per_unit(patterns: Sequence[NMPattern]) -> int:
    """Entries one column holds per ``group_lcm`` rows of the reduction axis."""
    unit = group_lcm(patterns)
    return sum(unit // p.m * p.n for p in patterns)


def reduction_tile(k: int, unit: int, target_rows: int) -> int:
    """A tile of whole ``unit``s (lcm of the M's), close to ``target_rows``, that wastes little padding.

    Prefers a tile that divides the (group-padded) reduction axis exactly, so
    no padding entries are executed; falls back to ``target_rows`` rounded to
    whole units when the only exact divisors are much smaller.
    """
    units = ceil_div(k, unit)
    want = max(1, min(units, target_rows // unit))
    exact = max(t for t in range(1, want + 1) if units % t == 0)
    return unit * (exact if 2 * exact >= want else want)


def check_terms(terms: Sequence[NMTerm], patterns: Sequence[NMPattern], axis: int, shape: tuple[int, ...]) -> None:
    """The terms must be the series the kernel was built for, on a weight of ``shape``."""
    got = tuple(t.pattern for t in terms)
    if got != tuple(patterns):
        raise ValueError(f"kernel was built for {'+'.join(map(str, patterns))}, terms are {'+'.join(map(str, got))}")
    for t in terms:
        if t.axis != axis or tuple(t.shape) != tuple(shape):
            raise ValueError(f"term of shape {t.shape} grouped on axis {t.axis}; the kernel wants {shape} on axis {axis}")


def absolute_rows(term: NMTerm) -> np.ndarray:
    """Row of every kept value along the term's reduction axis (group offset + position)."""
    n, m = term.n, term.m
    groups = term.values.shape[term.axis] // n
    offsets = (np.arange(groups, dtype=np.int64) * m).repeat(n)
    shape = [1] * term.values.ndim
    shape[term.axis] = -1
    return offsets.reshape(shape) + term.indices.astype(np.int64)


def tiled_table(tile: np.ndarray, key: np.ndarray, values: np.ndarray, n_tiles: int, per_tile: int = 0):
    """Entries (E, N) → rectangle (n_tiles·per_tile, N) sorted by (tile, key) per column.

    ``tile`` says which reduction tile each entry belongs to, ``key`` is what
    the kernel will read (an address); both (E, N) like ``values``. Short
    tiles are padded with value 0 and the key of that tile's last entry, up
    to the fullest tile or ``per_tile``, whichever is larger (a last tile
    can be short when the terms' M differ and K is no multiple of their lcm).
    Returns (keys int64, values, per_tile).
    """
    order = np.lexsort((key, tile), axis=0)
    tile = np.take_along_axis(tile, order, 0)
    key = np.take_along_axis(key, order, 0)
    values = np.take_along_axis(values, order, 0)
    if np.any(tile != tile[:, :1]):
        raise AssertionError("every column must hold the same number of entries per tile")
    counts = np.bincount(tile[:, 0], minlength=n_tiles)
    per_tile = max(int(counts.max()), per_tile)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    # slot s of tile t reads entry starts[t] + min(s, count−1); slots past the count get value 0
    slot = np.arange(per_tile)
    source = starts[:, None] + np.minimum(slot[None, :], counts[:, None] - 1)
    real = (slot[None, :] < counts[:, None]).reshape(-1)
    source = source.reshape(-1)
    out_key = key[source]
    out_values = values[source] * real[:, None].astype(values.dtype)
    return out_key, out_values, per_tile


def column_tiles(table: np.ndarray, cols: int, n_col_tiles: int) -> np.ndarray:
    """(E, N) → (n_col_tiles, E, cols): ``cols`` adjacent output columns side by side, zero padded."""
    e, n = table.shape
    padded = np.zeros((e, n_col_tiles * cols), table.dtype)
    padded[:, :n] = table
    return np.ascontiguousarray(padded.reshape(e, n_col_tiles, cols).transpose(1, 0, 2))

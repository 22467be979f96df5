"""The run-time activation decomposition kernel (the paper's "TASD units"), emulated on the CPU.

``nm_activation(shape, patterns)`` computes ``Σ_t T_t`` of the greedy series
of an activation along its last axis — or, ``channels_first``, along the
channels of a conv's NCHW input — exactly as
``tvm_tasd.approximate(x, cfg, axis=-1)`` (``axis=1``) does (docs/semantics.md §2): per group of M,
an entry's rank is the number of entries that beat it — a larger |value|,
or an equal one at a lower index, a zero never beating a nonzero — and a
term keeps ranks below N. Each term works on the residual of the previous
ones, and the output is ``x − residual`` (exact: kept entries are copies).

A hardware TASD unit streams this next to the PE array; here it is one
parallel, vectorised pass per term over the activation, O(K·M) compares.
A grouped axis that is not a multiple of M is handled as zero padding,
which never wins a slot.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tvm
from tvm import te

from tvm_tasd import NMPattern

from .llvm_common import CPUShape, NMKernel, float_dtype, parallel
from .nm_pack import as_patterns


def _kept(residual, shape: tuple[int, ...], axis: int, pattern: NMPattern, dtype: str):
    """Boolean-as-int stage: 1 where the term keeps residual[idx], groups of M along ``axis``."""
    m, n, k = pattern.m, pattern.n, shape[axis]
    other = te.reduce_axis((0, m), name="other")
    zero = tvm.tirx.const(0, dtype)

    def key(idx):  # |r|, or −1 for zeros so any nonzero beats them
        value = residual[idx]
        return te.if_then_else(value != zero, te.abs(value), tvm.tirx.const(-1, dtype))

    def beats(idx, p):  # the entry at position p of idx's group beats idx
        rival, j = (*idx[:axis], p, *idx[axis + 1 :]), idx[axis]
        return tvm.tirx.all(
            p < k,
            tvm.tirx.any(key(rival) > key(idx), tvm.tirx.all(key(rival) == key(idx), p < j)),
        )

    rank = te.compute(
        shape,
        lambda *idx: te.sum(te.if_then_else(beats(idx, idx[axis] // m * m + other), 1, 0), axis=other),
        name=f"rank_{n}of{m}",
    )
    return rank, n


def nm_activation(shape: Sequence[int], patterns, dtype: str = "float32", channels_first: bool = False,
                  target: tvm.target.Target | None = None) -> NMKernel:
    """Kernel ``func(x, out)``: out = the series' approximation of x along its last axis
    (``channels_first``: along the channels of an NCHW tensor, at every position — a conv's input);
    vectorised for ``target`` (default: the host)."""
    patterns = as_patterns(patterns)
    dtype = float_dtype(dtype)
    shape = tuple(int(d) for d in shape)
    if channels_first:
        if len(shape) != 4:
            raise ValueError(f"channels_first takes an NCHW activation; got shape {shape}")
        axis = 1
    else:
        shape, axis = (int(np.prod(shape[:-1], dtype=np.int64)), shape[-1]), 1
    x = te.placeholder(shape, dtype, name="x")
    residual = x
    for index, pattern in enumerate(patterns):
        rank, n = _kept(residual, shape, axis, pattern, dtype)
        previous = residual
        residual = te.compute(
            shape,
            lambda *idx: te.if_then_else(rank[idx] < n, tvm.tirx.const(0, dtype), previous[idx]),
            name=f"residual{index}",
        )
    out = te.compute(shape, lambda *idx: x[idx] - residual[idx], name="out")
    s = tvm.s_tir.Schedule(te.create_prim_func([x, out]).with_attr("tirx.noalias", True))
    _schedule(s, len(shape), CPUShape.of(target).lanes(dtype))
    layout = "NCHW, groups along C" if channels_first else "row-major (rows, k)"
    return NMKernel(s.mod["main"], lambda _terms: [], 0, layout, shape, {"patterns": list(map(str, patterns))})


def _schedule(s, rank: int, lanes: int) -> None:
    """Parallel over all but the innermost spatial axis for every stage; that axis vectorised in the
    elementwise stages (the rank stages reduce over the group innermost)."""
    for block in s.get_child_blocks(s.get_sblock("root")):
        loops = s.get_loops(block)
        parallel(s, s.fuse(*loops[: rank - 1]) if rank > 2 else loops[0])
        if len(loops) == rank:
            _, inner = s.split(loops[rank - 1], [None, lanes])
            s.vectorize(inner)

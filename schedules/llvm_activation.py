"""The run-time activation decomposition kernel (the paper's "TASD units"), emulated on the CPU.

``nm_activation(shape, patterns)`` computes ``Σ_t T_t`` of the greedy series
of an activation along its last axis, exactly as
``tvm_tasd.approximate(x, cfg, axis=-1)`` does (docs/semantics.md §2): per group of M,
an entry's rank is the number of entries that beat it — a larger |value|,
or an equal one at a lower index, a zero never beating a nonzero — and a
term keeps ranks below N. Each term works on the residual of the previous
ones, and the output is ``x − residual`` (exact: kept entries are copies).

A hardware TASD unit streams this next to the PE array; here it is one
parallel, vectorised pass per term over the activation, O(K·M) compares.
A last axis that is not a multiple of M is handled as zero padding, which
never wins a slot.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tvm
from tvm import te

from tvm_tasd import NMPattern

from .llvm_common import CPUShape, NMKernel, float_dtype
from .nm_pack import as_patterns


def _kept(residual, rows: int, k: int, pattern: NMPattern, dtype: str):
    """Boolean-as-int stage: 1 where the term keeps residual[i, j]."""
    m, n = pattern.m, pattern.n
    other = te.reduce_axis((0, m), name="other")
    zero = tvm.tirx.const(0, dtype)

    def key(i, j):  # |r|, or −1 for zeros so any nonzero beats them
        value = residual[i, j]
        return te.if_then_else(value != zero, te.abs(value), tvm.tirx.const(-1, dtype))

    def beats(i, p, j):
        return tvm.tirx.all(
            p < k,
            tvm.tirx.any(key(i, p) > key(i, j), tvm.tirx.all(key(i, p) == key(i, j), p < j)),
        )

    rank = te.compute(
        (rows, k),
        lambda i, j: te.sum(
            te.if_then_else(beats(i, j // m * m + other, j), 1, 0), axis=other
        ),
        name=f"rank_{n}of{m}",
    )
    return rank, n


def nm_activation(shape: Sequence[int], patterns, dtype: str = "float32") -> NMKernel:
    """Kernel ``func(x, out)``: out = the series' approximation of x along its last axis."""
    patterns = as_patterns(patterns)
    dtype = float_dtype(dtype)
    shape = tuple(int(d) for d in shape)
    k = shape[-1]
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    x = te.placeholder((rows, k), dtype, name="x")
    residual = x
    for index, pattern in enumerate(patterns):
        rank, n = _kept(residual, rows, k, pattern, dtype)
        previous = residual
        residual = te.compute(
            (rows, k),
            lambda i, j: te.if_then_else(rank[i, j] < n, tvm.tirx.const(0, dtype), previous[i, j]),
            name=f"residual{index}",
        )
    out = te.compute((rows, k), lambda i, j: x[i, j] - residual[i, j], name="out")
    s = tvm.s_tir.Schedule(te.create_prim_func([x, out]).with_attr("tirx.noalias", True))
    _schedule(s, CPUShape.of().lanes(dtype))
    return NMKernel(s.mod["main"], lambda _terms: [], 0, "row-major (rows, k)", (rows, k), {"patterns": list(map(str, patterns))})


def _schedule(s, lanes: int) -> None:
    """Parallel over rows for every stage; the innermost column loop vectorised where it is spatial."""
    for block in s.get_child_blocks(s.get_sblock("root")):
        loops = s.get_loops(block)
        s.parallel(loops[0])
        if len(loops) == 2:
            _, inner = s.split(loops[1], [None, lanes])
            s.vectorize(inner)

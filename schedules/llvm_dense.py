"""Dense CPU matmul baseline: ``out(m, n) = x(m, k) · W(k, n) (+ bias(n))``.

The yardstick the N:M kernels are compared against, scheduled as carefully:
W (a compile-time constant, like the N:M terms) is packed into column panels
``Wp[n // NC, k, NC]`` (NC = two vectors; one where n fits in one: a
classifier head), and a register tile of MR rows ×
NC columns accumulates over a reduction tile that keeps the W panel in L1:
per reduction step, two vector loads of W and MR broadcasts of x feed 2·MR
FMAs. Loop order: (row chunk, column panel) parallel → reduction tile →
row tile → k → rows (unrolled) → vectors (unrolled) → lanes (vectorised).
Rows past m (when no good tile divides m) are read as zeros from a padded
copy of x; columns past n live only in the padded accumulator.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import te

from .llvm_common import (
    L2_BYTES,
    CPUShape,
    NMKernel,
    accumulator_dtype,
    float_dtype,
    output_stage,
    parallel,
    parallel_chunks,
)
from .nm_pack import ceil_div, divisor_at_least

#: Reduction rows per tile: a 256×32 fp32 W panel is 32 KiB (L1).
K_TILE = 256


def _row_tile(m: int, registers: int) -> tuple[int, bool]:
    """Rows per register tile (up to two accumulator vectors each) and whether x needs padding."""
    best = registers // 2 - 2  # leave room for the W vectors and a broadcast
    for rows in range(min(best, 8), 3, -1):
        if m % rows == 0:
            return rows, False
    return (min(best, 6), True) if m > 3 else (m, False)


def _k_tile(k: int) -> int:
    for tile in range(min(k, K_TILE), K_TILE // 4 - 1, -1):
        if k % tile == 0:
            return tile
    return k if k <= 2 * K_TILE else K_TILE


def _row_chunks(row_tiles: int, wanted: int) -> int:
    """Parallel row chunks: ``wanted``, or up to twice as many where that divides the row tiles (15 tiles in 15
    chunks, not 16 of which one reads a padded copy of x)."""
    dividing = divisor_at_least(row_tiles, wanted)
    return dividing if dividing <= 2 * wanted else wanted


def dense_matmul(
    m: int, k: int, n: int, dtype: str = "float32", bias: bool = False, target: tvm.target.Target | None = None,
    output_activation: str | None = None,
) -> NMKernel:
    """Scheduled dense GEMM. ``func(x, w_packed, [bias], out)``; ``pack(W)`` takes the (k, n) weight;
    ``output_activation`` (:data:`~.llvm_common.OUTPUT_ACTIVATIONS`) applies to the output after the bias."""
    dtype = float_dtype(dtype)
    acc = accumulator_dtype(dtype)
    cpu = CPUShape.of(target)
    lanes = cpu.lanes(acc)
    vectors = 1 if n <= lanes else 2  # a narrow output (a classifier head) would waste the second vector
    nc = vectors * lanes
    mr, pad_rows = _row_tile(m, cpu.registers)
    kt = _k_tile(k)
    panels = ceil_div(n, nc)
    m_tiles = ceil_div(m, mr)
    # Row chunks outermost, so each task's x rows stay in L2 while every column panel passes over them.
    x_bytes = m * k * tvm.runtime.DataType(dtype).bits // 8
    chunks = _row_chunks(m_tiles, max(parallel_chunks(panels, m_tiles), ceil_div(x_bytes, L2_BYTES)))
    m_tiles = ceil_div(m_tiles, chunks) * chunks
    mp, np_ = m_tiles * mr, panels * nc

    x = te.placeholder((m, k), dtype, name="x")
    wp = te.placeholder((panels, k, nc), acc, name="w_packed")
    if pad_rows or mp != m:
        xs = te.compute(
            (mp, k),
            lambda i, kk: te.if_then_else(i < m, x[te.min(i, m - 1), kk].astype(acc), tvm.tirx.const(0, acc)),
            name="x_padded",
        )
    else:
        xs = x
    r = te.reduce_axis((0, k), name="k")
    direct = not bias and output_activation is None and (mp, np_) == (m, n) and acc == dtype
    shape = (m, n) if direct else (mp, np_)
    acc_t = te.compute(shape, lambda i, j: te.sum(xs[i, r].astype(acc) * wp[j // nc, r, j % nc], axis=r), name="acc")
    out, extra = (acc_t, []) if direct else output_stage((m, n), lambda i, j: acc_t[i, j], 1, dtype, acc, bias, output_activation)

    s = tvm.s_tir.Schedule(te.create_prim_func([x, wp, *extra, out]))
    block = s.get_sblock("acc")
    i, j, kk = s.get_loops(block)
    ic, io, ii = s.split(i, [chunks, None, mr])
    jo, jv, jl = s.split(j, [None, vectors, lanes])
    ko, ki = s.split(kk, [None, kt])
    s.reorder(ic, jo, ko, io, ki, ii, jv, jl)
    task = s.fuse(ic, jo)
    parallel(s, task)
    if not direct:
        s.reverse_compute_at(s.get_sblock("out"), task)
        s.vectorize(s.get_loops(s.get_sblock("out"))[-1])
    s.vectorize(jl)
    s.unroll(jv)
    s.unroll(ii)
    init = s.decompose_reduction(block, ko)
    s.vectorize(s.get_loops(init)[-1])
    if xs is not x:
        xp = s.get_sblock("x_padded")
        rows, cols = s.get_loops(xp)
        parallel(s, rows)
        s.vectorize(s.split(cols, [None, lanes])[1])

    def pack(w: np.ndarray) -> list[np.ndarray]:
        if w.shape != (k, n):
            raise ValueError(f"dense kernel built for a ({k}, {n}) weight, got {w.shape}")
        padded = np.zeros((k, np_), acc)
        padded[:, :n] = w
        return [np.ascontiguousarray(padded.reshape(k, panels, nc).transpose(1, 0, 2))]

    # weight_k_axis: w_packed's axis along k; permuting it as x's columns are permuted leaves out unchanged
    params = dict(rows_per_tile=mr, cols_per_panel=nc, k_tile=kt, row_chunks=chunks, lanes=lanes, weight_k_axis=1)
    return NMKernel(s.mod["main"], pack, m * k * n, "x (m, k) row-major", (m, n), params)

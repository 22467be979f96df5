"""Fused TASD matmul on the CPU: ``out(m, n) = x(m, k) · Σ_t W_t(k, n) (+ bias(n))``.

One kernel runs every N:M term of the series over the compressed weights:
for each output column the terms' kept (row, value) pairs form one list
(``nm_pack``), walked once, so the terms share the activation read and the
accumulator (the paper's Fig. 11).

Why this layout. Vectorising over output columns would need a gather of x
(every column keeps different rows) — that made a 2:4 kernel slower than
dense. Instead the kernel vectorises over the activation rows ``m``: with xᵀ
laid out (k, m), a kept weight ``W[row, j]`` multiplies the contiguous
vector ``xᵀ[row, m0:m0+MT]`` (a gather of whole rows, not of elements), the
value is a scalar broadcast, and a register tile holds ``cols`` output
columns × ``MT`` rows of accumulators. Stages, all in one PrimFunc:

1. ``xT[mo, k, MT]`` — x transposed into slabs of MT rows (16×16 shuffled
   tiles; rows past m are zero);
2. ``accT[j, i] = Σ_e vals[j, e] · xT[i // MT, row(j, e), i % MT]`` — the
   reduction, tiled so the slab rows of one reduction tile stay in L1 and
   the accumulators stay in registers; ``row`` is pre-multiplied by MT in
   ``pack`` so the address is one add;
3. ``out[i, j] = accT[j, i] (+ bias[j])`` — transposed back per task, again
   by shuffled tiles.

The activation may have leading batch dims: the caller reshapes it to
(m, k) (a free view of a row-major array) and the output back.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tvm
from tvm import te

from tvm_tasd import NMPattern, NMTerm

from .llvm_common import (
    L1_BYTES,
    CPUShape,
    NMKernel,
    NMTiles,
    accumulator_dtype,
    finish_nm_reduction,
    float_dtype,
    output_stage,
    parallel,
    parallel_chunks,
    position_vectors,
    schedule_transpose,
    tile_nm_reduction,
)
from .nm_pack import (
    absolute_rows,
    as_patterns,
    ceil_div,
    check_terms,
    column_tiles,
    entries_per_unit,
    group_lcm,
    reduction_tile,
    tiled_table,
)


def nm_matmul(
    m: int,
    k: int,
    n: int,
    patterns: "str | Sequence[NMPattern | str]",
    dtype: str = "float32",
    bias: bool = False,
    target: tvm.target.Target | None = None,
    output_activation: str | None = None,
    *,
    rows_per_task: int | None = None,
    cols: int | None = None,
    k_tile: int | None = None,
) -> NMKernel:
    """Fused kernel for ``x(m, k) · Σ_t W_t(k, n) (+ bias)``, W_t the series' N:M terms.

    ``func(x, vals, rows, [bias], out)``: ``x`` (m, k) and ``out`` (m, n) in
    ``dtype``; ``pack(terms)`` takes the ``NMTerm``s of
    ``decompose(W, cfg, axis=0)`` and returns ``[vals, rows]``, both
    (n_col_tiles, entries, cols): the entry list of each output column
    (values in the accumulator dtype, rows as int32 offsets ``row·MT`` into an
    xᵀ slab), ``cols`` adjacent columns interleaved.

    Tile sizes default to what measured best on AVX-512/AVX2 (``rows_per_task``
    = 4 vectors, ``cols`` filling half the vector registers with
    accumulators, ``k_tile`` ≈ an L1 of slab rows); pass them to override.
    """
    patterns = as_patterns(patterns)
    dtype = float_dtype(dtype)
    acc = accumulator_dtype(dtype)
    cpu = CPUShape.of(target)
    lanes = cpu.lanes(acc)
    vectors = ceil_div(rows_per_task, lanes) if rows_per_task else position_vectors(m, lanes, 4)
    mt = vectors * lanes
    cols = cols or max(1, cpu.registers // 2 // vectors)  # half the registers hold accumulators
    itemsize = tvm.runtime.DataType(acc).bits // 8
    k_tile = reduction_tile(k, group_lcm(patterns), k_tile or L1_BYTES // (mt * itemsize))
    per_tile = k_tile // group_lcm(patterns) * entries_per_unit(patterns)
    k_tiles = ceil_div(k, k_tile)
    entries = k_tiles * per_tile
    m_tiles = ceil_div(m, mt)
    chunks = parallel_chunks(m_tiles, ceil_div(n, cols))
    col_tiles = ceil_div(ceil_div(n, cols), chunks) * chunks

    x = te.placeholder((m, k), dtype, name="x")
    vals = te.placeholder((col_tiles, entries, cols), acc, name="vals")
    rows = te.placeholder((col_tiles, entries, cols), "int32", name="rows")
    xt = te.compute(
        (m_tiles, k, mt),
        lambda mo, kk, mi: te.if_then_else(
            mo * mt + mi < m, x[te.min(mo * mt + mi, m - 1), kk].astype(acc), tvm.tirx.const(0, acc)
        ),
        name="xT",
    )
    r = te.reduce_axis((0, entries), name="e")

    def slab(i, offset):  # xT[i // mt] viewed flat: offset = row·mt + lane
        return xt[i // mt, offset // mt, offset % mt]

    acc_t = te.compute(
        (col_tiles * cols, m_tiles * mt),
        lambda j, i: te.sum(vals[j // cols, r, j % cols] * slab(i, rows[j // cols, r, j % cols] + i % mt), axis=r),
        name="accT",
    )
    out, extra = output_stage((m, n), lambda i, j: acc_t[j, i], 1, dtype, acc, bias, output_activation)

    s = tvm.s_tir.Schedule(te.create_prim_func([x, vals, rows, *extra, out]))
    block = s.get_sblock("accT")
    j, i, e = s.get_loops(block)
    tiles = NMTiles(cols=cols, positions=mt, lanes=lanes, entries=per_tile, chunks=chunks)
    task, inner = tile_nm_reduction(s, block, [], j, i, e, tiles)
    out_block = s.get_sblock("out")
    s.reverse_compute_at(out_block, task, preserve_unit_loops=True)  # transpose each task's tile while it is in cache
    schedule_transpose(s, out_block, "accT", lanes)
    finish_nm_reduction(s, block, inner)
    x_loops = schedule_transpose(s, s.get_sblock("xT"), "x", lanes)
    parallel(s, s.fuse(*x_loops[:-1]))

    def pack(terms: Sequence[NMTerm]) -> list[np.ndarray]:
        check_terms(terms, patterns, 0, (k, n))
        row = np.concatenate([absolute_rows(t) for t in terms])
        value = np.concatenate([t.values for t in terms]).astype(acc)
        value[row >= k] = 0  # zero padding of the last group: read row k-1 instead, times 0
        row = np.minimum(row, k - 1)
        key, value, got = tiled_table(row // k_tile, row * mt, value, k_tiles, per_tile)
        assert got == per_tile, (got, per_tile)
        return [column_tiles(value, cols, col_tiles), column_tiles(key.astype(np.int32), cols, col_tiles)]

    params = dict(rows_per_task=mt, cols=cols, k_tile=k_tile, entries_per_tile=per_tile, col_chunks=chunks, lanes=lanes)
    return NMKernel(s.mod["main"], pack, m * entries * n, "x (m, k) row-major", (m, n), params)

"""Emulated N:M kernels that tensorize onto the ``nm_emulated`` group intrinsic.

Where ``llvm_matmul`` / ``llvm_conv2d`` hand-schedule one fused entry loop,
these kernels are written the way an N:M accelerator is programmed: the
reduction is cut into the groups of each term, and every (column tile,
group, position tile) is one issue of the unit's intrinsic
(``intrin_nm.nm_group``) — ``Schedule.tensorize`` replaces the tile by the
target's implementation (for ``llvm``: a vectorised body). The run therefore
executes the instruction stream the N:M hardware would, and counts it:
``params["calls"]`` (per term), ``["issued_macs"]`` and ``["metadata_bits"]``
(calls × what one call issues, padded tile lanes included), next to
``executed_macs`` (real outputs × entries walked, the ``NMKernel`` convention).

Layer → GEMM via ``implicit_gemm.GemmView`` (matmul, or conv2d by implicit
GEMM). Loop nest, all in one PrimFunc:

1. ``xT[pt, row, p]`` — X in slabs of ``positions`` activation positions
   (x transposed for matmul, an im2col gather for conv; zero padded);
2. per task (position tile × chunk of column tiles, parallel), per term t,
   per reduction tile (the groups whose xT rows fit L1), per column tile,
   per group: one intrinsic issue into ``acc_t`` — the accumulator tile of
   ``cols`` × ``positions`` stays in registers across the reduction tile;
3. ``acc = Σ_t acc_t`` within the task (a series' terms share the
   activation slab; each has its own accumulator, added once per tile —
   the unit's shared accumulator costs one add per output here), then
   ``out`` — written back in the layer's layout.

``target`` only sizes the tiles (vector lanes and registers of the CPU).
``tensorize=False`` keeps the description's one-hot loops instead (same
loop nest and summation order, M× the work): the untensorized reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tvm
from tvm import te

from tvm_tasd import NMPattern, NMTerm

from .implicit_gemm import GemmView
from .intrin_nm import nm_group, nm_group_term
from .llvm_common import (
    L1_BYTES,
    CPUShape,
    NMKernel,
    accumulator_dtype,
    float_dtype,
    parallel,
    parallel_chunks,
    schedule_transpose,
)
from .nm_pack import as_patterns, ceil_div, check_terms, group_lcm

#: Output columns per intrinsic tile (each a scalar value/index stream).
DEFAULT_COLS = 4


def nm_matmul_tensorized(
    m: int,
    k: int,
    n: int,
    patterns: str | Sequence[NMPattern | str],
    dtype: str = "float32",
    target: tvm.target.Target | None = None,
    *,
    cols: int | None = None,
    positions: int | None = None,
    tensorize: bool = True,
) -> NMKernel:
    """``x(m, k) · Σ_t W_t(k, n)``: ``func(x, vals_0, idx_0, vals_1, idx_1, …, out)``.

    ``pack(terms)`` takes the ``NMTerm``s of ``decompose(W, cfg, axis=0)``.
    """
    patterns = as_patterns(patterns)
    view = GemmView.matmul(m, k, n, group_lcm(patterns))
    return _kernel(view, patterns, 0, (k, n), dtype, target, cols, positions, tensorize)


def nm_conv2d_tensorized(
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    patterns: str | Sequence[NMPattern | str],
    dtype: str = "float32",
    strides=(1, 1),
    padding=(0, 0, 0, 0),
    dilation=(1, 1),
    target: tvm.target.Target | None = None,
    *,
    cols: int | None = None,
    positions: int | None = None,
    tensorize: bool = True,
) -> NMKernel:
    """NCHW/OIHW conv2d by implicit GEMM over the terms of ``decompose(W, cfg, axis=1)``."""
    patterns = as_patterns(patterns)
    view = GemmView.conv2d(x_shape, w_shape, group_lcm(patterns), strides, padding, dilation)
    return _kernel(view, patterns, 1, tuple(int(d) for d in w_shape), dtype, target, cols, positions, tensorize)


def _kernel(view: GemmView, patterns, axis, w_shape, dtype, target, cols, positions, tensorize) -> NMKernel:
    dtype = float_dtype(dtype)
    acc = accumulator_dtype(dtype)
    cpu = CPUShape.of(target)
    lanes = cpu.lanes(acc)
    cols = cols or DEFAULT_COLS
    # positions: as many vectors as keep half the registers for accumulators (fewer for short activations)
    positions = positions or lanes * min(ceil_div(view.positions, lanes), max(1, cpu.registers // 2 // cols))
    pos_tiles = ceil_div(view.positions, positions)
    chunks = parallel_chunks(pos_tiles, ceil_div(view.cols, cols))
    col_tiles = ceil_div(ceil_div(view.cols, cols), chunks) * chunks
    intrinsics = [nm_group(p, cols, positions, acc) for p in patterns]

    x = te.placeholder(view.x_shape, dtype, name="x")
    xt = te.compute(
        (pos_tiles, view.rows, positions), lambda o, r, p: view.x_value(x, r, o * positions + p, acc), name="xT"
    )
    inputs, accs = [x], []
    for t, pattern in enumerate(patterns):
        groups = view.rows // pattern.m
        vals = te.placeholder((col_tiles, groups, cols, pattern.n), acc, name=f"vals{t}")
        idx = te.placeholder((col_tiles, groups, cols, pattern.n), "uint8", name=f"idx{t}")
        accs.append(te.compute((col_tiles, pos_tiles, cols, positions), _term_sum(vals, idx, xt, pattern, acc), name=f"acc{t}"))
        inputs += [vals, idx]
    total = accs[0] if len(accs) == 1 else te.compute(accs[0].shape, lambda *i: sum(a[i] for a in accs), name="acc")
    out = view.output(lambda j, i: total[j // cols, i // positions, j % cols, i % positions], dtype)

    s = tvm.s_tir.Schedule(te.create_prim_func([*inputs, out]))
    ct, pt, *_ = s.get_loops(s.get_sblock(total.op.name))
    chunk, ct_in = s.split(ct, [chunks, None])
    s.reorder(pt, chunk, ct_in)
    task = s.fuse(pt, chunk)
    parallel(s, task)
    if len(accs) > 1:
        s.vectorize(s.get_loops(s.get_sblock("acc"))[-1])
    tile_rows = L1_BYTES // (positions * tvm.runtime.DataType(acc).bits // 8)
    for t, (pattern, intrinsic) in enumerate(zip(patterns, intrinsics)):
        block = s.get_sblock(f"acc{t}")
        if len(accs) > 1:
            s.compute_at(block, task, preserve_unit_loops=True)  # loops: ct_in, pt (unit), c, p, g, q
        loops = s.get_loops(block)
        ct_in, (c, p, g) = loops[-6 if len(accs) > 1 else -5], loops[-4:-1]
        go, gi = s.split(g, [None, _divisor(view.rows // pattern.m, tile_rows // pattern.m)])
        s.reorder(go, ct_in, gi, c, p)
        init = s.decompose_reduction(block, go)
        s.vectorize(s.get_loops(init)[-1])
        if tensorize:
            s.tensorize(c, intrinsic.name("llvm"))
    _schedule_copies(s, view, lanes)

    calls = [col_tiles * pos_tiles * (view.rows // p.m) for p in patterns]
    params = {
        "cols": cols,
        "positions": positions,
        "intrinsics": [i.name("llvm") for i in intrinsics],
        "calls": calls,
        "issued_macs": sum(c * i.macs for c, i in zip(calls, intrinsics)),
        "metadata_bits": sum(c * i.metadata_bits for c, i in zip(calls, intrinsics)),
    }
    executed = view.cols * view.positions * sum(view.rows // p.m * p.n for p in patterns)

    def pack(terms: Sequence[NMTerm]) -> list[np.ndarray]:
        check_terms(terms, patterns, axis, w_shape)
        arrays = []
        for term in terms:
            for array, kind in zip(view.compressed(term), (acc, "uint8")):
                padded = np.zeros((col_tiles * cols, *array.shape[1:]), kind)
                padded[: view.cols] = array
                arrays.append(np.ascontiguousarray(padded.reshape(col_tiles, cols, *array.shape[1:]).transpose(0, 2, 1, 3)))
        return arrays

    layout = "x (m, k) row-major" if view.op == "matmul" else "x (B, C, H, W)"
    return NMKernel(s.mod["main"], pack, executed, layout, view.out_shape, params)


def _divisor(n: int, at_most: int) -> int:
    """The largest divisor of n that is ≤ at_most (≥ 1)."""
    return max(d for d in range(1, max(1, min(n, at_most)) + 1) if n % d == 0)


def _term_sum(vals, idx, xt, pattern: NMPattern, acc: str):
    """``acc_t[ct, pt, c, p]``: the term's one-hot sum over its groups (the intrinsic's description)."""
    g = te.reduce_axis((0, vals.shape[1]), "g")
    q = te.reduce_axis((0, pattern.n * pattern.m), "q")

    def update(ct, pt, c, p):
        term = nm_group_term(
            lambda e: vals[ct, g, c, e], lambda e: idx[ct, g, c, e], lambda r: xt[pt, g * pattern.m + r, p], q, pattern.m, acc
        )
        return te.sum(term, axis=[g, q])

    return update


def _schedule_copies(s: tvm.s_tir.Schedule, view: GemmView, lanes: int) -> None:
    """Parallelise the X slab copy (shuffled transpose for matmul) and the write-back."""
    xt = s.get_sblock("xT")
    if view.op == "matmul":
        loops = schedule_transpose(s, xt, "x", lanes)
        parallel(s, s.fuse(*loops[:-1]))
    else:
        o, r, p = s.get_loops(xt)
        parallel(s, s.fuse(o, r))
        s.vectorize(p)
    out_loops = s.get_loops(s.get_sblock("out"))
    parallel(s, s.fuse(*out_loops[:2]) if view.op == "conv2d" else out_loops[0])

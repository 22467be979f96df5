"""TASD on NVIDIA's 2:4 sparse tensor core: kernels that tensorize onto ``mma.sp``.

The weight is the sparse operand A of ``mma.sp.m16n8k16`` (fp16 operands,
fp32 accumulation), so a layer computes ``outᵀ = W_c · Xᵀ``: rows of A are
output columns, B is the activation (matmul, or conv2d by implicit GEMM via
``implicit_gemm.GemmView``). Every term of the series must be a valid 2:4
tensor (2:4, 1:4, 1:8, 2:8, …; docs/semantics.md §5); the terms are converted to
NVIDIA's format (``nvidia_metadata``) and concatenated along K, so one
accumulator runs through all of them (the paper's Fig. 11: extra terms cost
mma.sp issues and metadata, and re-read only cached activation tiles).

One PrimFunc, three stages:

1. ``xtile[mt, c, j, kk]`` — B in fp16 tiles of 8 positions × 16·steps
   k-columns (zero padded; an im2col gather for conv);
2. ``acc[nt, mt, i, j]`` — one warp per 16×8 output tile (``warps`` tiles
   per thread block share the A tile), K in chunks of ``steps`` k16 steps;
   each chunk is one call of the ``mma_sp_m16n8k16`` intrinsic
   (``intrin_nm.mma_sp``), whose ``cuda`` implementation loads the
   lane's fragments, issues ``steps`` × PTX ``mma.sp`` and writes the
   accumulator tile back (it stays in global memory/L1 between chunks: the
   kernel is simple, not tuned);
3. ``out`` — the accumulator in the layer's layout and dtype.

The same compute also schedules for ``llvm``, where tensorize picks the
intrinsic's CPU implementation: the host then runs the GPU kernel's exact
instruction stream (fragments, metadata words), which is how its packing is
tested without a GPU. :func:`cuda_source` returns the generated CUDA C.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import tvm
from tvm import te

from tvm_tasd import NMPattern, NMTerm
from tvm_tasd.config import worst_case_nonzeros

from .implicit_gemm import GemmView
from .intrin_nm import frag_col, frag_lane, frag_reg, frag_row, mma_sp, mma_sp_term
from .llvm_common import NMKernel, float_dtype, parallel
from .nm_pack import as_patterns, ceil_div, check_terms, group_lcm
from .nvidia_metadata import mma_sp_operands, to_2of4

#: Default target: Ampere, the first architecture with 2:4 sparse tensor cores.
DEFAULT_TARGET = {"kind": "cuda", "arch": "sm_80"}
THREADS = 256  # per block, for the copy stages
MAX_WARPS = 4  # per block of the mma.sp stage (fewer when there are fewer 8-position tiles)


def runs_on_2of4(pattern: NMPattern) -> bool:
    """True when every N:M tensor of this pattern is a valid 2:4 tensor (docs/semantics.md §5)."""
    return worst_case_nonzeros(pattern, 4) <= 2


def mma_sp_matmul(
    m: int,
    k: int,
    n: int,
    patterns: str | Sequence[NMPattern | str],
    dtype: str = "float16",
    target=None,
    *,
    warps: int | None = None,
    steps: int | None = None,
) -> NMKernel:
    """``x(m, k) · Σ_t W_t(k, n)`` on mma.sp: ``func(x, a, e, out)``.

    ``pack(terms)`` takes the ``NMTerm``s of ``decompose(W, cfg, axis=0)``
    and returns ``[a, e]``: A fragments (n/16, chunks, steps, 32, 4) fp16 and
    metadata words (n/16, chunks, steps, 8) uint32, terms concatenated along
    the chunks. ``target``: a CUDA target (default sm_80) or ``llvm`` (the
    host runs the same tiles through the intrinsic's CPU implementation).
    """
    patterns = _checked(patterns)
    view = GemmView.matmul(m, k, n, math.lcm(4, group_lcm(patterns)))
    return _kernel(view, patterns, 0, (k, n), dtype, target, warps, steps)


def mma_sp_conv2d(
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    patterns: str | Sequence[NMPattern | str],
    dtype: str = "float16",
    strides=(1, 1),
    padding=(0, 0, 0, 0),
    dilation=(1, 1),
    target=None,
    *,
    warps: int | None = None,
    steps: int | None = None,
) -> NMKernel:
    """NCHW/OIHW conv2d by implicit GEMM on mma.sp, terms of ``decompose(W, cfg, axis=1)``."""
    patterns = _checked(patterns)
    view = GemmView.conv2d(x_shape, w_shape, math.lcm(4, group_lcm(patterns)), strides, padding, dilation)
    return _kernel(view, patterns, 1, tuple(int(d) for d in w_shape), dtype, target, warps, steps)


def _checked(patterns) -> tuple[NMPattern, ...]:
    patterns = as_patterns(patterns)
    bad = [str(p) for p in patterns if not runs_on_2of4(p)]
    if bad:
        raise ValueError(f"{', '.join(bad)} is not a valid 2:4 tensor; the 2:4 sparse tensor core cannot run it")
    return patterns


def _target(target) -> tvm.target.Target:
    if target is None:
        target = DEFAULT_TARGET
    return target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)


def _kernel(view: GemmView, patterns, axis, w_shape, dtype, target, warps, steps) -> NMKernel:
    dtype = float_dtype(dtype)
    target = _target(target)
    steps = steps or min(4, ceil_div(view.rows, 16))
    warps = warps or min(MAX_WARPS, ceil_div(view.positions, 8))
    kc = 16 * steps
    chunks = ceil_div(view.rows, kc)  # per term
    total = chunks * len(patterns)
    n_tiles, m_tiles = ceil_div(view.cols, 16), ceil_div(ceil_div(view.positions, 8), warps) * warps
    tile = mma_sp(steps)

    x = te.placeholder(view.x_shape, dtype, name="x")
    a_shape, e_shape = (n_tiles, total, steps, 32, 4), (n_tiles, total, steps, 8)
    a = te.placeholder(a_shape, "float16", name="a")
    e = te.placeholder(e_shape, "uint32", name="e")
    xtile = te.compute(
        (m_tiles, chunks, 8, kc),
        lambda mt, c, j, kk: view.x_value(x, c * kc + kk, mt * 8 + j, "float16"),
        name="xtile",
    )
    c, q, r = te.reduce_axis((0, total), "c"), te.reduce_axis((0, 8 * steps), "q"), te.reduce_axis((0, 4), "r")
    acc = te.compute(  # accumulator tiles in register order: (lane, v) is element (frag_row, frag_col)
        (n_tiles, m_tiles, 32, 4),
        lambda nt, mt, lane, v: te.sum(
            mma_sp_term(
                lambda s, lane_, half: a[nt, c, s, lane_, half],
                lambda s, quad: e[nt, c, s, quad],
                lambda j, col: xtile[mt, c % chunks, j, col],
                frag_row(lane, v), frag_col(lane, v), q, r,
            ),
            axis=[c, q, r],
        ),
        name="acc",
    )
    out = view.output(
        lambda col, pos: acc[col // 16, pos // 8, frag_lane(col % 16, pos % 8), frag_reg(col % 16, pos % 8)], dtype
    )

    s = tvm.s_tir.Schedule(te.create_prim_func([x, a, e, out]))
    block = s.get_sblock("acc")
    nt, mt, lane, v, cl, _, _ = s.get_loops(block)
    s.reorder(cl, lane, v)
    if target.kind.name == "cuda":
        _bind_warps(s, nt, mt, warps)
    else:
        parallel(s, s.fuse(nt, mt))
    init = s.decompose_reduction(block, cl)
    if target.kind.name == "cuda":  # every lane zero-fills its own accumulator fragment
        s.bind(s.get_loops(init)[-2], "threadIdx.x")
    s.tensorize(lane, tile.name(target.kind.name))
    _schedule_copies(s, target)

    calls = n_tiles * m_tiles * total
    params = {"steps": steps, "warps": warps, "intrinsic": tile.name(target.kind.name), "calls": calls,
                  "issued_macs": calls * tile.macs, "metadata_bits": calls * tile.metadata_bits}

    def pack(terms: Sequence[NMTerm]) -> list[np.ndarray]:
        check_terms(terms, patterns, axis, w_shape)
        frags = []
        for term in terms:
            rows = np.zeros((view.cols, chunks * kc), np.float32)
            rows[:, : view.rows] = view.dense(term)
            frags.append(mma_sp_operands(*to_2of4(rows.astype(np.float16))))
        fragments = [np.concatenate([f[w] for f in frags], axis=1) for w in (0, 1)]
        return [fragments[0].reshape(a_shape), fragments[1].reshape(e_shape)]

    func = s.mod["main"].with_attr("tirx.is_scheduled", True)
    layout = "x (m, k) row-major" if view.op == "matmul" else "x (B, C, H, W)"
    executed = view.cols * view.positions * total * kc // 2  # real outputs × kept entries walked
    return NMKernel(func, pack, executed, layout, view.out_shape, params)


def _bind_warps(s, nt, mt, warps: int) -> None:
    """Thread blocks of ``warps`` warps along the positions; each warp owns one 16×8 tile."""
    mo, w = s.split(mt, [None, warps])
    s.reorder(mo, nt)
    s.bind(mo, "blockIdx.x")
    s.bind(nt, "blockIdx.y")
    s.bind(w, "threadIdx.y")


def _schedule_copies(s, target: tvm.target.Target) -> None:
    """The xtile gather and the output write: flat loops, threads on GPU, parallel on CPU."""
    for name in ("xtile", "out"):
        fused = s.fuse(*s.get_loops(s.get_sblock(name)))
        if target.kind.name == "cuda":
            bx, tx = s.split(fused, [None, THREADS])
            s.bind(bx, "blockIdx.x")
            s.bind(tx, "threadIdx.x")
        else:
            parallel(s, fused)


def cuda_source(kernel: NMKernel, target=None) -> str:
    """The CUDA C that TVM generates for ``kernel`` (no GPU needed)."""
    module = tvm.tirx.build(kernel.func, target=_target(target))
    return module.imports[0].inspect_source()

"""N:M tensor intrinsics: the N:M unit as a TIR primitive, one implementation per target.

TVM models dot-product and MMA units as ``TensorIntrin``s
(``tvm.s_tir.tensor_intrin``): a *description* — a PrimFunc stating what one
tile computes, which ``Schedule.tensorize`` matches against a block — and an
*implementation* that replaces the matched tile. This module does the same
for N:M units and keeps a registry of them (:func:`registered`).

Two families (a hardware target names its family in ``[tvm] intrinsic``):

* ``nm_emulated`` — one group tile of an N:M operand, :func:`nm_group`:
  ``acc[c, p] += Σ_{e<N} vals[c, e] · X[idx[c, e], p]`` for ``cols`` output
  columns, the M reduction rows of one group, and ``positions`` activation
  positions; ``idx`` are the project's uint8 in-group positions. The tile a
  VEGETA-like engine issues per group. Implementation ``llvm``: a
  vectorised CPU body (value broadcast × the contiguous row of X it picks).
* ``mma_sp_m16n8k16`` — NVIDIA's 2:4 sparse tensor-core tile, :func:`mma_sp`:
  ``C(16×8) += A(16×16, 2:4) · B(16×8)`` over ``steps`` consecutive k16
  steps, A and the fp32 accumulator C in ``mma.sp``'s register-fragment
  order (every lane owns its fragment), NVIDIA metadata words
  (``nvidia_metadata``), B stored (8, 16·steps) (row-major activation
  rows). Implementations, beside the description: ``cuda`` (one warp, PTX
  ``mma.sp``) and ``llvm`` (the same tile on the CPU: it decodes the
  metadata exactly as the tensor core does, so the host runs — and tests —
  the instruction stream of the GPU kernel).

Descriptions are written in one-hot form, ``Σ_r [idx == r] · X[r]``, not as
the gather ``X[idx]``: tensorize needs the description's buffer indices to
be affine in its loop variables, and only the one-hot form has that (its
extra terms are zero; no implementation executes them). The kernels that
tensorize (``llvm_tensorized``, ``cuda_mma_sp``) write their blocks with the
same expression builders (:func:`nm_group_term`, :func:`mma_sp_term`), so
block and description match by construction.

Each :class:`NMIntrinsic` also states what one call issues (``macs``,
``metadata_bits``): a kernel multiplies them by its call count to report its
own MAC and metadata traffic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache

import tvm
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from tvm_tasd import NMPattern

NM_EMULATED = "nm_emulated"
MMA_SP = "mma_sp_m16n8k16"
#: ``mma.sp`` variant: our metadata is ascending, so the ordered form (ptxas advises it from sm_90 on) is exact.
SPARSE_VARIANT = "sp::ordered_metadata"
#: Patterns of the VEGETA-like targets (M = 4, M = 8) and the NVIDIA 2:4 unit.
STANDARD_PATTERNS = ("1:4", "2:4", "1:8", "2:8", "4:8")


@dataclass
class NMIntrinsic:
    """One registered tile: its description and the TensorIntrin name per target kind."""

    family: str
    pattern: NMPattern
    tile: dict  # named tile sizes
    dtype: str  # operand dtype
    macs: int  # multiply-accumulates one call issues (kept entries × outputs)
    metadata_bits: int  # index bits one call reads
    desc: tvm.tirx.PrimFunc = field(repr=False)
    names: dict[str, str] = field(default_factory=dict)  # target kind → TensorIntrin name

    @property
    def key(self) -> str:
        sizes = "x".join(f"{k}{v}" for k, v in self.tile.items())
        return f"tasd_{self.family}_{self.pattern.n}of{self.pattern.m}_{sizes}_{self.dtype}"

    def add_implementation(self, kind: str, impl: tvm.tirx.PrimFunc) -> str:
        """Register ``impl`` for target kind ``kind``; returns the TensorIntrin name."""
        name = f"{self.key}_{kind}"
        if kind not in self.names:
            TensorIntrin.register(name, self.desc, impl)
            self.names[kind] = name
        return name

    def name(self, kind: str) -> str:
        """The TensorIntrin name for target kind ``kind`` (``llvm``, ``cuda``)."""
        if kind not in self.names:
            raise KeyError(f"{self.key} has no {kind} implementation (has: {', '.join(self.names)})")
        return self.names[kind]


_REGISTRY: dict[str, NMIntrinsic] = {}


def registered() -> list[NMIntrinsic]:
    """Every intrinsic registered so far in this process."""
    return list(_REGISTRY.values())


def _add(intrinsic: NMIntrinsic, llvm_impl: tvm.tirx.PrimFunc) -> NMIntrinsic:
    intrinsic.add_implementation("llvm", llvm_impl)
    _REGISTRY[intrinsic.key] = intrinsic
    return intrinsic


# ---------------------------------------------------------------- nm_emulated


def nm_group_term(vals, idx, x, q, m: int, dtype: str):
    """One-hot product of the N:M group tile at reduction step q = e·M + r.

    ``vals(e)`` / ``idx(e)`` load entry e's kept value and uint8 position,
    ``x(r)`` X at in-group row r: ``vals(e) · (idx(e) == r ? x(r) : 0)``.
    Entries and rows share one reduction axis so that no loop has extent 1
    for N = 1 (TVM drops such loops, and tensorize would then not match).
    """
    e, r = q // m, q % m
    picked = tvm.tirx.Cast("int32", idx(e)) == r
    return vals(e) * tvm.tirx.if_then_else(picked, x(r), tvm.tirx.const(0, dtype))


def nm_group(pattern: NMPattern | str, cols: int, positions: int, dtype: str = "float32") -> NMIntrinsic:
    """The emulated N:M group tile (module docstring), registered with its llvm body."""
    return _nm_group(NMPattern.parse(pattern) if isinstance(pattern, str) else pattern, cols, positions, dtype)


@cache
def _nm_group(pattern: NMPattern, cols: int, positions: int, dtype: str) -> NMIntrinsic:
    n, m = pattern.n, pattern.m

    @T.prim_func(s_tir=True)
    def desc(v: T.handle, i: T.handle, x: T.handle, c: T.handle):
        V = T.match_buffer(v, (cols, n), dtype, offset_factor=1)
        I = T.match_buffer(i, (cols, n), "uint8", offset_factor=1)
        X = T.match_buffer(x, (m, positions), dtype, offset_factor=1)
        C = T.match_buffer(c, (cols, positions), dtype, offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:cols, 0:positions], V[0:cols, 0:n], I[0:cols, 0:n], X[0:m, 0:positions])
            T.writes(C[0:cols, 0:positions])
            for cc, p, q in T.grid(cols, positions, n * m):
                with T.sblock("nm_group"):
                    vc, vp, vq = T.axis.remap("SSR", [cc, p, q])
                    C[vc, vp] = C[vc, vp] + nm_group_term(  # the lambdas run at parse time
                        lambda e: V[vc, e], lambda e: I[vc, e], lambda r: X[r, vp], vq, m, dtype  # noqa: B023
                    )

    @T.prim_func(s_tir=True)
    def llvm_impl(v: T.handle, i: T.handle, x: T.handle, c: T.handle):
        sv = T.int32()
        si = T.int32()
        sx = T.int32()
        sc = T.int32()
        V = T.match_buffer(v, (cols, n), dtype, strides=[sv, 1], offset_factor=1)
        I = T.match_buffer(i, (cols, n), "uint8", strides=[si, 1], offset_factor=1)
        X = T.match_buffer(x, (m, positions), dtype, strides=[sx, 1], offset_factor=1)
        C = T.match_buffer(c, (cols, positions), dtype, strides=[sc, 1], offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:cols, 0:positions], V[0:cols, 0:n], I[0:cols, 0:n], X[0:m, 0:positions])
            T.writes(C[0:cols, 0:positions])
            for e in T.unroll(n):
                for cc in T.unroll(cols):
                    for p in T.vectorized(positions):
                        C[cc, p] = C[cc, p] + V[cc, e] * X[T.Cast("int32", I[cc, e]), p]

    tile = {"c": cols, "p": positions}
    bits = cols * n * math.ceil(math.log2(m))
    return _add(NMIntrinsic(NM_EMULATED, pattern, tile, dtype, cols * positions * n, bits, desc), llvm_impl)


# ---------------------------------------------------------------- mma.sp m16n8k16


def frag_lane(i, j):
    """Lane holding element (i, j) of a 16×8 mma fragment (compressed A, or C/D)."""
    return i % 8 * 4 + j // 2


def frag_reg(i, j):
    """Which of the lane's four registers (A: fp16 halves) holds element (i, j)."""
    return i // 8 * 2 + j % 2


def frag_row(lane, v):
    """Row of register v (0…3) of ``lane`` in a 16×8 fragment (inverse of the two above)."""
    return lane // 4 + v // 2 * 8


def frag_col(lane, v):
    """Column of register v of ``lane`` in a 16×8 fragment."""
    return lane % 4 * 2 + v % 2


def mma_sp_term(a, e, b, i, j, q, r):
    """One-hot product of the mma.sp tile at output (i, j), reduction step q = s·8 + k, position r.

    ``a(s, lane, half)`` loads A of step s in register order (entry k of row
    i: lane :func:`frag_lane`, half :func:`frag_reg`); ``e(s, quad)`` the metadata
    word of quad i % 8, whose bits 16·(i // 8) + 2k hold entry k's position;
    ``b(j, column)`` B at dense k-column s·16 + 4·(k // 2) + r. Steps and
    entries share one reduction axis so that no loop has extent 1.
    """
    s, k = q // 8, q % 8
    shift = tvm.tirx.Cast("uint32", i // 8 * 16 + k * 2)
    position = tvm.tirx.bitwise_and(tvm.tirx.shift_right(e(s, i % 8), shift), tvm.tirx.const(3, "uint32"))
    picked = tvm.tirx.if_then_else(tvm.tirx.Cast("int32", position) == r, b(j, s * 16 + k // 2 * 4 + r), tvm.tirx.const(0, "float16"))
    return tvm.tirx.Cast("float32", a(s, frag_lane(i, k), frag_reg(i, k))) * tvm.tirx.Cast("float32", picked)


def _mma_sp_cuda(steps: int) -> tvm.tirx.PrimFunc:
    """The ``cuda`` implementation of :func:`mma_sp`: one warp loads its fragments and issues PTX mma.sp."""
    kdim = 16 * steps

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, e: T.handle, b: T.handle, c: T.handle):
        sa = T.int32()
        se = T.int32()
        sb = T.int32()
        sc = T.int32()
        A = T.match_buffer(a, (steps, 32, 4), "float16", strides=[sa, 4, 1], offset_factor=2)
        E = T.match_buffer(e, (steps, 8), "uint32", strides=[se, 1], offset_factor=1)
        B = T.match_buffer(b, (8, kdim), "float16", strides=[sb, 1], offset_factor=2)
        C = T.match_buffer(c, (32, 4), "float32", strides=[sc, 1], offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:32, 0:4], A[0:steps, 0:32, 0:4], E[0:steps, 0:8], B[0:8, 0:kdim])
            T.writes(C[0:32, 0:4])
            for lane in T.thread_binding(32, thread="threadIdx.x"):
                d = T.alloc_local((4,), "float32")
                for v in T.unroll(4):
                    d[v] = C[lane, v]
                for s in T.unroll(steps):
                    T.ptx[f"mma.{SPARSE_VARIANT}.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32"](
                        d[0], d[1], d[2], d[3],
                        T.reinterpret("uint32", A.vload([s, lane, 0], "float16x2")),
                        T.reinterpret("uint32", A.vload([s, lane, 2], "float16x2")),
                        T.reinterpret("uint32", B.vload([lane // 4, s * 16 + lane % 4 * 2], "float16x2")),
                        T.reinterpret("uint32", B.vload([lane // 4, s * 16 + lane % 4 * 2 + 8], "float16x2")),
                        d[0], d[1], d[2], d[3],
                        E[s, lane // 4],
                        0,  # sparsity selector: lane 4g of each quad supplies the metadata
                    )
                for v in T.unroll(4):
                    C[lane, v] = d[v]

    return impl


@cache
def mma_sp(steps: int = 1) -> NMIntrinsic:
    """The 2:4 m16n8k16 tile over ``steps`` k16 steps (fp16 in, fp32 accumulate).

    Operands: A (steps, 32, 4) fp16 and E (steps, 8) uint32 in register order
    (``nvidia_metadata.mma_sp_operands``), B (8, 16·steps) fp16 — B[j, kk] is
    activation position j at k-column kk — and the accumulator C (32, 4)
    fp32 in register order: register v of lane l is tile element
    (:func:`frag_row`, :func:`frag_col`), so every lane owns exactly its fragment.
    """
    kdim = 16 * steps

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, e: T.handle, b: T.handle, c: T.handle):
        A = T.match_buffer(a, (steps, 32, 4), "float16", offset_factor=1)
        E = T.match_buffer(e, (steps, 8), "uint32", offset_factor=1)
        B = T.match_buffer(b, (8, kdim), "float16", offset_factor=1)
        C = T.match_buffer(c, (32, 4), "float32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:32, 0:4], A[0:steps, 0:32, 0:4], E[0:steps, 0:8], B[0:8, 0:kdim])
            T.writes(C[0:32, 0:4])
            for lane, v, q, r in T.grid(32, 4, 8 * steps, 4):
                with T.sblock("mma_sp"):
                    vl, vv, vq, vr = T.axis.remap("SSRR", [lane, v, q, r])
                    C[vl, vv] = C[vl, vv] + mma_sp_term(
                        lambda s, lane_, half: A[s, lane_, half], lambda s, quad: E[s, quad], lambda j, col: B[j, col],
                        frag_row(vl, vv), frag_col(vl, vv), vq, vr,
                    )

    @T.prim_func(s_tir=True)
    def llvm_impl(a: T.handle, e: T.handle, b: T.handle, c: T.handle):
        sa = T.int32()
        se = T.int32()
        sb = T.int32()
        sc = T.int32()
        A = T.match_buffer(a, (steps, 32, 4), "float16", strides=[sa, 4, 1], offset_factor=1)
        E = T.match_buffer(e, (steps, 8), "uint32", strides=[se, 1], offset_factor=1)
        B = T.match_buffer(b, (8, kdim), "float16", strides=[sb, 1], offset_factor=1)
        C = T.match_buffer(c, (32, 4), "float32", strides=[sc, 1], offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:32, 0:4], A[0:steps, 0:32, 0:4], E[0:steps, 0:8], B[0:8, 0:kdim])
            T.writes(C[0:32, 0:4])
            for s, lane, v, k in T.grid(steps, 32, 4, 8):
                i = T.meta_var(frag_row(lane, v))
                position = T.Cast("int32", T.shift_right(E[s, i % 8], T.Cast("uint32", i // 8 * 16 + k * 2)) & T.uint32(3))
                C[lane, v] = C[lane, v] + T.Cast("float32", A[s, frag_lane(i, k), frag_reg(i, k)]) * T.Cast(
                    "float32", B[frag_col(lane, v), s * 16 + k // 2 * 4 + position]
                )

    tile = {"s": steps}
    intrinsic = _add(NMIntrinsic(MMA_SP, NMPattern(2, 4), tile, "float16", 16 * 8 * 8 * steps, 16 * 8 * 2 * steps, desc),
                     llvm_impl)
    intrinsic.add_implementation("cuda", _mma_sp_cuda(steps))
    return intrinsic

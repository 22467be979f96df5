"""TASD conv2d on the CPU (NCHW input, OIHW weight, groups = 1), as an implicit GEMM.

``out[b, o, oh, ow] = Σ_{c,kh,kw} x_pad[b, c, oh·sh + kh·dh, ow·sw + kw·dw] · W[o, c, kh, kw]``
with W = Σ_t W_t, the series' N:M terms grouped along input channels.

No im2col is materialised. The input is copied once into a *phase buffer*:
zero padded and, for stride s, split into s_h·s_w phase planes, each of row
pitch W2 = ceil(W_pad / s_w). In it, every kernel tap (c, kh, kw) of output
position (oh, ow) sits at ``offset(c, kh, kw) + oh·W2 + ow``, so

    acc[b, o, p] = Σ_e vals[o, e] · xph[b, offset(o, e) + p],   p = oh·W2 + ow

is exactly the matmul kernel's reduction (``llvm_matmul``) with the output
positions p as the vectorised axis: consecutive p are consecutive addresses,
a kept weight is a scalar broadcast times a contiguous vector, and the
output comes out in NCHW (the W2 − OW columns per row that fall in the
padding are computed and dropped; where there are none and a tile stays in
one row, each task writes its own output tile). ``pack`` turns each
(c, kh, kw) a term keeps into that offset, grouped by channel tiles that
stay in L1. A 1×1 conv without stride or padding, whose tiles end with
the plane, reads the input itself (its buffer would be a plain copy). A
1×1 conv of several small images (7×7, 14×14: planes no
vector width divides) folds the batch into the positions: its buffer holds
each channel's planes of every image in one run, so tiles pass from one
image into the next instead of computing lanes past each plane.

:func:`dense_conv2d` runs the same loop nest over every tap — all output
channels of a register tile then share each activation vector, which makes
it the usual register-blocked direct convolution (the fair dense baseline).
On small planes, where position vectors would mostly hold the phase rows'
padding columns or lanes past the plane (8×8 planes, an SE block's 1×1),
it vectorises over output channels instead: a tile of a few output positions
(running on across rows where rows carry no padding) × channel vectors, each
tap one broadcast per position and one weight vector.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import tvm
from tvm import te
from tvm.script import tirx as T

from tvm_tasd import NMPattern, NMTerm

from .llvm_common import (
    CACHE_LINE,
    L1_BYTES,
    L1_WAYS,
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
    tile_nm_reduction,
    vectorize_run,
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


def _pair(value, name: str) -> tuple[int, int]:
    value = [int(v) for v in np.atleast_1d(value)]
    if len(value) == 1:
        value = value * 2
    if len(value) != 2 or min(value) < 1:
        raise ValueError(f"{name} must be one or two positive ints, got {value}")
    return value[0], value[1]


def _padding(value) -> tuple[int, int, int, int]:
    """int, (h, w) or (top, left, bottom, right) — Relax's order."""
    value = [int(v) for v in np.atleast_1d(value)]
    if len(value) == 1:
        value = value * 4
    elif len(value) == 2:
        value = value * 2
    if len(value) != 4 or min(value) < 0:
        raise ValueError(f"padding must be 1, 2 or 4 non-negative ints (top, left, bottom, right), got {value}")
    return value[0], value[1], value[2], value[3]


class _Geometry:
    """Sizes of the phase buffer and the output plane of one convolution."""

    def __init__(self, x_shape, w_shape, strides, padding, dilation):
        self.batch, self.c, self.h, self.w = (int(d) for d in x_shape)
        self.o, c, self.kh, self.kw = (int(d) for d in w_shape)
        if c != self.c:
            raise ValueError(f"weight has {c} input channels, input has {self.c} (groups ≠ 1 is not supported)")
        self.sh, self.sw = _pair(strides, "strides")
        self.dh, self.dw = _pair(dilation, "dilation")
        self.pt, self.pl, self.pb, self.pr = _padding(padding)
        hp, wp = self.h + self.pt + self.pb, self.w + self.pl + self.pr
        self.oh = (hp - self.dh * (self.kh - 1) - 1) // self.sh + 1
        self.ow = (wp - self.dw * (self.kw - 1) - 1) // self.sw + 1
        if self.oh < 1 or self.ow < 1:
            raise ValueError(f"kernel {self.kh}×{self.kw} (dilated) does not fit the padded {hp}×{wp} input")
        self.h2, self.w2 = ceil_div(hp, self.sh), ceil_div(wp, self.sw)  # one phase plane
        self.plane = self.oh * self.w2  # output positions per image, pitch W2

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        return self.batch, self.o, self.oh, self.ow

    def offsets(self, c, kh, kw):
        """Flat phase-buffer offset of tap (c, kh, kw) for output position 0 (numpy, broadcasting)."""
        ph, qh = (kh * self.dh) % self.sh, (kh * self.dh) // self.sh
        pw, qw = (kw * self.dw) % self.sw, (kw * self.dw) // self.sw
        return ((c * self.sh + ph) * self.sw + pw) * self.h2 * self.w2 + qh * self.w2 + qw

    def rows(self, positions: int) -> int:
        """Rows of pitch W2 the phase buffer needs so that every read of a tile stays inside."""
        last = int(self.offsets(np.int64(self.c - 1), np.arange(self.kh), np.arange(self.kw)[:, None]).max())
        return max(self.c * self.sh * self.sw * self.h2, ceil_div(last + positions, self.w2))

    def channel_bytes(self, positions: int, itemsize: int) -> int:
        """Phase-buffer bytes one channel contributes to a task's reduction tile (convs other than pointwise)."""
        rows = ceil_div(positions, self.w2) + (self.kh - 1) * self.dh // self.sh + 1
        return itemsize * self.sh * self.sw * rows * self.w2

    def tile_channels(self, positions: int, itemsize: int) -> int:
        """Input channels of one reduction tile, whose phase-buffer rows a task keeps in L1.

        Strided convs fill the L1 with them. A pointwise conv's tile reads one run of ``positions`` per channel,
        at the channel pitch: it takes half the L1 (the weights stream through the rest), and no more than half
        of what the L1 sets those runs map to can hold — a pitch with a large power-of-two factor maps every
        channel to a few sets (14 × 14 planes of 16 images: 12544 bytes, 16 of 64 sets, 128 runs in all).
        Measured alone (AVX2, 16 images, batch-folded, 16-position tiles): 672 → 112 on 14 × 14 planes 74.5 → 85.6
        GMAC/s at 56 channels instead of 336, 1152 → 192 on 7 × 7 88 → 100 at 192 instead of 384, 1152 → 320
        77 → 86; 112 → 672, 480 → 80, 320 → 1280 within 3 %. In the models (A/B in one process): EfficientNet-Lite0
        dense 1.03× at 16 images, 4:8 1.04×; PP-OCR rec at 1 dense 1.02×, 4:8 1.11×; the rest even.
        """
        if not self.pointwise:
            return max(1, L1_BYTES // self.channel_bytes(positions, itemsize))
        run = itemsize * positions
        pitch = itemsize * self.h2 * self.w2
        sets = L1_BYTES // L1_WAYS // CACHE_LINE
        run_lines = ceil_div(run, CACHE_LINE)
        channel_sets = min(sets, sets * CACHE_LINE // math.gcd(pitch, sets * CACHE_LINE))  # sets the runs start in
        held = min(sets, channel_sets * run_lines) * L1_WAYS // run_lines  # runs the sets they map to hold
        return max(1, min(L1_BYTES // 2 // run, held // 2))

    @property
    def pointwise(self) -> bool:
        """A 1×1 conv, stride 1, no padding: a matmul of the weight and each image's (C, H·W) plane."""
        return (self.kh, self.kw, self.sh, self.sw, self.pt, self.pl, self.pb, self.pr) == (1, 1, 1, 1, 0, 0, 0, 0)

    def batch_folded(self, lanes: int) -> "_Geometry | None":
        """For a pointwise conv of several images whose planes no vector width divides (7×7, 14×14, 28×28):
        the geometry of one image holding every plane in a row, so that position tiles run on from one
        image into the next instead of computing lanes past each plane. None where that gains nothing."""
        if not self.pointwise or self.batch == 1 or self.plane % lanes == 0:
            return None
        return _Geometry((1, self.c, 1, self.batch * self.plane), (self.o, self.c, 1, 1), 1, 0, 1)


def _phase_func(g: _Geometry, rows: int, dtype: str, acc: str):
    """Zero-padded, stride-phase-split copy of x, in TVMScript; returns it and its zeroing blocks.

    Zeros and the interior copy are separate blocks on one buffer: a single TE
    compute would need a per-lane bounds test, which TVM does not vectorise.
    With stride 1 only the padding is zeroed (top/bottom rows and
    left/right columns of each channel, plus the tail rows the last tile may
    read); with a larger stride the whole buffer is. Also returns the
    per-channel zeroing blocks ("run": its two loops are one contiguous run,
    or "band") and the buffer-wide ones, for :func:`_schedule_phase`.
    """
    b_, c_, h_, w_, h2, w2 = g.batch, g.c, g.h, g.w, g.h2, g.w2
    sh, sw, pt, pl = g.sh, g.sw, g.pt, g.pl
    stride1 = (sh, sw) == (1, 1)
    bottom, right, tail = h2 - pt - h_, w2 - pl - w_, rows - c_ * h2  # pad rows/cols below/right (stride 1)

    @T.prim_func(s_tir=True)
    def phase(x: T.Buffer((b_, c_, h_, w_), dtype), xph: T.Buffer((b_, rows, w2), acc)):
        if not stride1:
            for b, r, w in T.grid(b_, rows, w2):
                with T.sblock("xph_zero"):
                    vb, vr, vw = T.axis.remap("SSS", [b, r, w])
                    xph[vb, vr, vw] = T.cast(0, acc)
        if stride1 and tail > 0:
            for b, r, w in T.grid(b_, tail, w2):
                with T.sblock("xph_tail"):
                    vb, vr, vw = T.axis.remap("SSS", [b, r, w])
                    xph[vb, c_ * h2 + vr, vw] = T.cast(0, acc)
        for b, c in T.grid(b_, c_):  # one parallel loop for a channel's padding and copy
            if stride1 and pt > 0:
                for r, w in T.grid(pt, w2):
                    with T.sblock("xph_top"):
                        vb, vc, vr, vw = T.axis.remap("SSSS", [b, c, r, w])
                        xph[vb, vc * h2 + vr, vw] = T.cast(0, acc)
            if stride1 and bottom > 0:
                for r, w in T.grid(bottom, w2):
                    with T.sblock("xph_bottom"):
                        vb, vc, vr, vw = T.axis.remap("SSSS", [b, c, r, w])
                        xph[vb, vc * h2 + pt + h_ + vr, vw] = T.cast(0, acc)
            if stride1 and pl > 0:
                for r, w in T.grid(h_, pl):
                    with T.sblock("xph_left"):
                        vb, vc, vr, vw = T.axis.remap("SSSS", [b, c, r, w])
                        xph[vb, vc * h2 + pt + vr, vw] = T.cast(0, acc)
            if stride1 and right > 0:
                for r, w in T.grid(h_, right):
                    with T.sblock("xph_right"):
                        vb, vc, vr, vw = T.axis.remap("SSSS", [b, c, r, w])
                        xph[vb, vc * h2 + pt + vr, pl + w_ + vw] = T.cast(0, acc)
            for h, w in T.grid(h_, w_):
                with T.sblock("xph_copy"):
                    vb, vc, vh, vw = T.axis.remap("SSSS", [b, c, h, w])
                    xph[vb, ((vc * sh + (vh + pt) % sh) * sw + (vw + pl) % sw) * h2 + (vh + pt) // sh, (vw + pl) // sw] = T.cast(
                        x[vb, vc, vh, vw], acc
                    )

    extents = {"xph_top": pt, "xph_bottom": bottom, "xph_left": pl, "xph_right": right}
    per_channel = {name: "band" if name in ("xph_left", "xph_right") else "run" for name, n in extents.items() if n > 0}
    whole = {"xph_zero": rows} if not stride1 else {"xph_tail": tail}
    return phase, (per_channel if stride1 else {}), {name: n for name, n in whole.items() if n > 0}


def _folded_phase_func(g: _Geometry, folded: _Geometry, rows: int, dtype: str, acc: str):
    """The phase buffer of a batch-folded pointwise conv: channel-major, each channel every image's plane
    in a row (``xph[0, c, b·H·W + p] = x[b, c, p]``), and zero tail rows for the last tile's reads."""
    b_, c_, h_, w_, plane = g.batch, g.c, g.h, g.w, g.h * g.w

    @T.prim_func(s_tir=True)
    def phase(x: T.Buffer((b_, c_, h_, w_), dtype), xph: T.Buffer((1, rows, folded.w2), acc)):
        if rows > c_:
            for r, q in T.grid(rows - c_, folded.w2):
                with T.sblock("xph_tail"):
                    vr, vq = T.axis.remap("SS", [r, q])
                    xph[0, c_ + vr, vq] = T.cast(0, acc)
        for c, b, p in T.grid(c_, b_, plane):
            with T.sblock("xph_copy"):
                vc, vb, vp = T.axis.remap("SSS", [c, b, p])
                xph[0, vc, vb * plane + vp] = T.cast(x[vb, vc, vp // w_, vp % w_], acc)

    return phase


def _schedule_folded_phase(s, rows: int, g: _Geometry, lanes: int) -> None:
    if rows > g.c:
        parallel(s, s.fuse(*s.get_loops(s.get_sblock("xph_tail"))))
    c, b, p = s.get_loops(s.get_sblock("xph_copy"))
    vectorize_run(s, p, lanes)
    parallel(s, s.fuse(c, b))


def _schedule_phase(s, per_channel: dict, whole: dict, g: _Geometry, lanes: int) -> None:
    """One parallel loop over (image, channel) zeroes its padding and copies it with vector stores.

    Runs of whole rows are vectorised as one contiguous run; the thin pad
    columns stay scalar. Buffer-wide zeroing (strides > 1, tail rows) is its
    own parallel vector loop.
    """
    for name in whole:
        flat = s.fuse(*s.get_loops(s.get_sblock(name)))
        outer, inner = s.split(flat, [None, lanes])
        parallel(s, outer)
        s.vectorize(inner)
    for name, kind in per_channel.items():
        if kind == "run":
            r, w = s.get_loops(s.get_sblock(name))[2:]
            vectorize_run(s, s.fuse(r, w), lanes)
    b, c, h, w = s.get_loops(s.get_sblock("xph_copy"))
    # contiguous in both buffers: along w, or along (h, w) when rows are unpadded
    run = s.fuse(h, w) if (g.sh, g.sw, g.w2) == (1, 1, g.w) else w
    if g.sw == 1:
        vectorize_run(s, run, lanes)
    parallel(s, s.fuse(b, c))


#: Per-tap cost of a dense register tile beyond its loads and FMAs (the offset load, address arithmetic, loop).
TAP_OVERHEAD = 2


def _tap_cost(tiles: int, fmas: int, loads: int) -> int:
    """Cycles (×2) for ``tiles`` register tiles to take one tap: two load and two FMA ports, the busier sets it."""
    return tiles * (max(fmas, loads) + TAP_OVERHEAD)


def _fits(accumulators: int, vectors: int, registers: int) -> bool:
    # the accumulators, the vectors they share, a broadcast and one register to spare: with all 16 AVX2
    # registers taken (5 × 2, 3 × 4) LLVM spilled, 2.4× slower
    return accumulators + vectors + 2 <= registers


#: Largest per-task buffer LLVM gets on the stack: TVM takes a bigger one from its workspace pool on every task
#: (``kMaxStackAlloca``), which made tasks writing their own output tile slower than a separate output pass.
STACK_BYTES = 1024


def _writes_output_in_task(g: _Geometry, positions: int, cols: int, itemsize: int, across_rows: bool = True) -> bool:
    """Whether each task of the position layout can write its own tile of the output while it is in cache:
    rows carry no pitch padding (1×1 and valid convs: positions are the plane's own order), a tile's
    positions stay within one row or, ``across_rows``, tiles end with the plane (rows of 56 or 28 positions
    with 16-lane vectors; CREPE's 1-D convs: H × 1 planes), and its accumulators fit the stack. Otherwise the
    output is a separate pass over the accumulator buffer — a pass through memory that cost EfficientNet-Lite0's
    1 × 1 convs on 56 × 56 and 112 × 112 planes (outputs of 29–77 MB at 16 images) a fifth to two fifths of
    their time."""
    tiled = g.ow % positions == 0 or (across_rows and g.plane % positions == 0)
    return g.w2 == g.ow and tiled and positions * cols * itemsize <= STACK_BYTES


#: Most output channels a pointwise conv may have to read its input in place (:func:`_reads_input`): the copy
#: it skips costs about as much as a few channels' FMAs per element, so it weighs less the more channels share
#: it. Measured alone (AVX2, 2 threads; copy → in place): EfficientNet-Lite0 at 16 images 32 → 16 on 112 × 112
#: planes 2.82 → 1.53 ms, 144 → 24 on 56 × 56 3.09 → 2.52, 16 → 96 on 112 × 112 7.17 → 5.92, 24 → 144 and
#: 40 → 240 1.02–1.03×; PP-OCR rec at 1 image 16 → 32 1.49×, 64 → 64 1.11×, 128 → 240 1.03×, but 240 → 480
#: and 480 → 480 (6 × 80, 3 × 80 planes) 0.96–0.99×.
READS_INPUT_MAX_CHANNELS = 128


def _reads_input(g: _Geometry, positions: int, same_dtype: bool) -> bool:
    """Whether the position layout reads x itself instead of a phase buffer: a pointwise conv (its buffer would
    be a plain copy) whose ``positions`` (the tiles' span) end with each plane, in x's own dtype, with at most
    :data:`READS_INPUT_MAX_CHANNELS` output channels."""
    return g.pointwise and positions == g.plane and same_dtype and g.o <= READS_INPUT_MAX_CHANNELS


def _position_tile(g: _Geometry, lanes: int, registers: int, itemsize: int) -> tuple[int, tuple[int, int]]:
    """Cost and (activation vectors, output channels) of the best register tile vectorised over positions.

    Every tap loads ``vectors`` activation vectors and broadcasts ``cols``
    weights for ``vectors·cols`` FMAs, and positions past the plane and
    channels past the layer are computed too. The
    digits CNN's 16→32 conv on 8×8 planes (80 positions at pitch 10),
    measured alone at batch 120: with AVX2, 2 × 6 computes 80 × 36
    (0.47 ms), 2 × 4 exactly 80 × 32 (0.44 ms); with AVX-512, 2 × 14
    computes 96 × 42 (0.70 ms), 5 × 4 exactly 80 × 32 (0.45 ms). A tile
    whose task can write its own output (:func:`_writes_output_in_task`)
    is preferred over any that cannot: on 56 × 56 planes 1 × 12 beat 2 × 6
    by 1.2–1.9×. Tiles within one row come first: where they exist, tiles
    spanning rows (:func:`_writes_output_in_task`'s ``across_rows``) were
    slower (AVX2 24 → 144 on 56 × 56, 16 images: 2 × 6 across rows 4.9 ms,
    1 × 12 within rows 2.9 ms); where none does (AVX-512, 16-lane vectors on
    56- or 28-wide rows) they beat the separate output pass (24 → 144: 2.0
    against 3.5 ms; 40 → 240 on 28 × 28: 0.95 against 1.7 ms; Xeon, alone).
    """
    def cost(tile):
        vectors, cols = tile
        tiles = g.batch * ceil_div(g.plane, vectors * lanes) * ceil_div(g.o, cols)
        return _tap_cost(tiles, vectors * cols, vectors + cols + 1)

    tiles = [(v, c) for v in range(1, 9) for c in range(1, registers) if _fits(v * c, v, registers)]
    in_row, in_plane = ([(v, c) for v, c in tiles if _writes_output_in_task(g, v * lanes, c, itemsize, across)]
                        for across in (False, True))
    tile = min(in_row or in_plane or tiles, key=cost)
    return cost(tile), tile


#: Most output positions one task of the channel layout computes (its accumulators, a few KB, stay in L1).
CHANNEL_TASK_POSITIONS = 256


def _row_groups(g: _Geometry) -> list[int]:
    """Output rows one task of the channel layout may take together: where rows have no pitch padding
    (W2 = OW: 1 × 1 convs, valid convs) consecutive rows are one run of positions, so a register tile of
    positions need not restart at every short row (a 7 × 7 plane: 49 positions, not 7 rows of 7)."""
    if g.w2 != g.ow:
        return [1]
    return [r for r in range(1, g.oh + 1) if g.oh % r == 0 and r * g.ow <= max(CHANNEL_TASK_POSITIONS, g.ow)]


def _channel_tile(g: _Geometry, lanes: int, registers: int) -> tuple[int, tuple[int, int, int]]:
    """Cost and (output positions, channel vectors, rows per task) of the best register tile vectorised over
    output channels: every tap loads ``vectors`` weight vectors and broadcasts ``positions`` activations;
    no pitch padding, positions past a task's rows computed too."""
    def cost(tile):
        positions, vectors, rows = tile
        tiles = g.batch * g.oh // rows * ceil_div(rows * g.ow, positions) * ceil_div(g.o, vectors * lanes)
        return _tap_cost(tiles, positions * vectors, positions + vectors + 1)

    widest = ceil_div(g.o, lanes)
    tile = min(((p, v, r) for p in range(1, 9) for v in range(1, widest + 1) for r in _row_groups(g)
                if _fits(p * v, v, registers)), key=cost)
    return cost(tile), tile


def _conv_kernel(conv: _Geometry, g: _Geometry, dtype, bias, output_activation, target, entries_per_channel,
                 shared_rows, tile_unit, overrides):
    """The kernel both convolutions share.

    ``conv`` — the convolution; ``g`` — the geometry the reduction runs in:
    ``conv`` itself, or its :meth:`~_Geometry.batch_folded` form.
    ``entries_per_channel(ct)`` — entries per column in a tile of ct input
    channels; ``shared_rows`` — one offset table for all output channels
    (dense) instead of one per channel; ``tile_unit(want)`` — the channel
    tile to use near ``want``. Returns (func, tiling, accumulator dtype,
    column tiles) for the caller's ``pack``.
    """
    dtype = float_dtype(dtype)
    acc = accumulator_dtype(dtype)
    cpu = CPUShape.of(target)
    lanes = cpu.lanes(acc)
    itemsize = tvm.runtime.DataType(acc).bits // 8
    folded = g is not conv
    rows_per_task = overrides.get("rows_per_task")
    if shared_rows:
        vectors, cols = _position_tile(g, lanes, cpu.registers, itemsize)[1]
        vectors = ceil_div(rows_per_task, lanes) if rows_per_task else vectors
    else:
        # positions per task: 8 vectors measured best with 32 registers (misaligned tap loads), else 4
        widest = 8 if cpu.registers >= 32 else 4
        vectors = ceil_div(rows_per_task, lanes) if rows_per_task else position_vectors(g.plane, lanes, widest)
        cols = max(1, cpu.registers // 2 // vectors)
    mt = vectors * lanes
    cols = overrides.get("cols") or cols
    ct = tile_unit(overrides.get("k_tile") or g.tile_channels(mt, itemsize))
    per_tile = entries_per_channel(ct)
    c_tiles = ceil_div(g.c, ct)
    entries = c_tiles * per_tile
    p_tiles = ceil_div(g.plane, mt)
    in_task = not folded and _writes_output_in_task(g, mt, cols, itemsize)
    # a task per register tile when it writes its output: the accumulators then fit the stack
    chunks = ceil_div(g.o, cols) if in_task else parallel_chunks(g.batch * p_tiles, ceil_div(g.o, cols))
    col_tiles = ceil_div(ceil_div(g.o, cols), chunks) * chunks
    rows = g.rows(p_tiles * mt)

    direct = _reads_input(g, p_tiles * mt, dtype == acc) and not folded
    if direct:
        x = te.placeholder((g.batch, g.c, g.h, g.w), dtype, name="x")

        def read(b, channel, p):  # its offset table holds input channels: see _tap_keys
            return x[b, channel, p // g.w, p % g.w]
    else:
        if folded:
            phase = _folded_phase_func(conv, g, rows, dtype, acc)
        else:
            phase, per_channel, whole = _phase_func(g, rows, dtype, acc)
        x = te.placeholder(phase.params[0].shape, dtype, name="x")  # extern_primfunc wants the same shape objects
        xph = te.extern_primfunc([x], phase, name="xph")

        def read(b, offset, p):  # xph[b] viewed flat
            return xph[b, (offset + p) // g.w2, (offset + p) % g.w2]
    vals = te.placeholder((col_tiles, entries, cols), acc, name="vals")
    key_shape = (entries,) if shared_rows else (col_tiles, entries, cols)
    keys = te.placeholder(key_shape, "int32", name="offsets")
    e = te.reduce_axis((0, entries), name="e")

    def tap(b, j, p):
        return read(b, keys[e] if shared_rows else keys[j // cols, e, j % cols], p)

    acc_p = te.compute(
        (g.batch, col_tiles * cols, p_tiles * mt),
        lambda b, j, p: te.sum(vals[j // cols, e, j % cols] * tap(b, j, p), axis=e),
        name="acc",
    )
    if folded:
        def value(b, o, oh, ow):
            return acc_p[0, o, b * conv.plane + oh * conv.ow + ow]
    else:
        def value(b, o, oh, ow):
            return acc_p[b, o, oh * g.w2 + ow]
    out, extra = output_stage(conv.out_shape, value, 1, dtype, acc, bias, output_activation)

    s = tvm.s_tir.Schedule(te.create_prim_func([x, vals, keys, *extra, out]))
    if folded:
        _schedule_folded_phase(s, rows, conv, lanes)
    elif not direct:
        _schedule_phase(s, per_channel, whole, g, lanes)

    block = s.get_sblock("acc")
    b, j, p, e_loop = s.get_loops(block)
    tiles = NMTiles(cols=cols, positions=mt, lanes=lanes, entries=per_tile, chunks=chunks)
    task, inner_loops = tile_nm_reduction(s, block, [b], j, p, e_loop, tiles, parallelize=False)

    epilogue = s.get_sblock("out")
    b, o, oh, ow = s.get_loops(epilogue)
    if in_task:  # the output's loops cut like the task's and merged into it
        o_tile, o_in = s.split(o, [chunks, cols])
        # a tile within a row keeps the row loop outside it; one spanning rows runs down the fused plane
        row_loops, positions = ([oh], ow) if g.ow % mt == 0 else ([], s.fuse(oh, ow))
        p_tile, run = s.split(positions, [None, mt])
        s.reorder(b, *row_loops, p_tile, o_tile, o_in, run)
        task = s.merge(task, s.fuse(b, *row_loops, p_tile, o_tile))
    else:
        parallel(s, s.fuse(b, o))
        run = s.fuse(oh, ow) if conv.ow == conv.w2 else ow
    parallel(s, task)
    vectorize_run(s, run, lanes)
    finish_nm_reduction(s, block, inner_loops)

    tiling = dict(rows_per_task=mt, cols=cols, k_tile=ct, entries_per_tile=per_tile, col_chunks=chunks, lanes=lanes,
                  output_in_task=in_task, batch_folded=folded, reads_input=direct)
    return s.mod["main"], tiling, acc, col_tiles


def _channel_vector_kernel(g: _Geometry, dtype, bias, output_activation, target, positions: int, vectors: int,
                           rows: int):
    """The dense conv vectorised over output channels: for small planes, where the position-vectorised tile
    would compute the phase rows' padding columns or lanes past the plane (an SE block's 1 × 1 planes).

    ``acc[jo, b, t, q, ol] = Σ_e vals[jo, e, ol] · xph[b, offset(e) + t·rows·W2 + q]``: a task is ``rows``
    output rows of one image (``rows`` > 1 only where W2 = OW, so its positions q run on across rows) for
    ``vectors`` vectors of output channels (their weights stay in cache while the task's neighbours reuse
    them); a register tile is ``positions`` consecutive output positions × those vectors, each tap one
    broadcast per position and one weight vector load per vector. Returns (func, tiling, accumulator dtype,
    channel tiles); the weights pack like the position-vectorised kernel's with ``cols`` = the tile's channels.
    """
    dtype = float_dtype(dtype)
    acc = accumulator_dtype(dtype)
    lanes = CPUShape.of(target).lanes(acc)
    itemsize = tvm.runtime.DataType(acc).bits // 8
    taps = g.kh * g.kw
    oc = vectors * lanes
    o_tiles = ceil_div(g.o, oc)
    ct = reduction_tile(g.c, 1, max(1, L1_BYTES // (taps * oc * itemsize)))  # a weight tile in L1
    per_tile = ct * taps
    entries = ceil_div(g.c, ct) * per_tile
    run = ceil_div(rows * g.ow, positions) * positions  # positions a task computes
    groups = g.oh // rows
    buffer_rows = g.rows((groups - 1) * rows * g.w2 + run)

    phase, per_channel, whole = _phase_func(g, buffer_rows, dtype, acc)
    x = te.placeholder(phase.params[0].shape, dtype, name="x")
    xph = te.extern_primfunc([x], phase, name="xph")
    vals = te.placeholder((o_tiles, entries, oc), acc, name="vals")
    keys = te.placeholder((entries,), "int32", name="offsets")
    e = te.reduce_axis((0, entries), name="e")

    def tap(b, t, q):
        flat = keys[e] + t * rows * g.w2 + q
        return xph[b, flat // g.w2, flat % g.w2]

    acc_c = te.compute(
        (o_tiles, g.batch, groups, run, oc),
        lambda jo, b, t, q, ol: te.sum(vals[jo, e, ol] * tap(b, t, q), axis=e),
        name="acc",
    )
    out, extra = output_stage(
        g.out_shape, lambda b, o, oh, ow: acc_c[o // oc, b, oh // rows, oh % rows * g.ow + ow, o % oc], 1, dtype,
        acc, bias, output_activation)

    s = tvm.s_tir.Schedule(te.create_prim_func([x, vals, keys, *extra, out]))
    _schedule_phase(s, per_channel, whole, g, lanes)
    block = s.get_sblock("acc")
    jo, b, t, q, ol, e_loop = s.get_loops(block)
    task = s.fuse(jo, b, t)
    owo, owi = s.split(q, [None, positions])
    ov, ll = s.split(ol, [vectors, lanes])
    ro, ri = s.split(e_loop, [None, per_tile])
    s.reorder(task, ro, owo, ri, owi, ov, ll)
    s.vectorize(ll)
    s.unroll(ov)
    s.unroll(owi)
    # each task transposes its own rows back to NCHW while they are in L1 (a separate pass over the whole
    # output made PP-OCR's 1×1 convs on 2–3 × 96 planes 10–25 % slower; a vectorised tile transpose bought nothing):
    # the output's loops cut like the task's and merged into it (reverse_compute_at cannot see which output
    # columns a task's run of positions covers once it spans rows)
    b, o, oh, ow = s.get_loops(s.get_sblock("out"))
    out_jo, out_ol = s.split(o, [o_tiles, oc])
    out_t, out_r = s.split(oh, [groups, rows])
    s.reorder(out_jo, b, out_t, out_ol, out_r, ow)
    task = s.merge(task, s.fuse(out_jo, b, out_t))
    parallel(s, task)
    init = s.decompose_reduction(block, ro)
    s.vectorize(s.get_loops(init)[-1])

    tiling = dict(positions=positions, cols=oc, rows=rows, k_tile=ct, entries_per_tile=per_tile, lanes=lanes,
                  batch_folded=False, reads_input=False)
    return s.mod["main"], tiling, acc, o_tiles


def _tap_keys(g: _Geometry, tiling: dict, c, kh, kw):
    """The offset-table key of tap (c, kh, kw): its phase-buffer offset, or, for a kernel that reads the input
    itself (``reads_input``: a pointwise conv), its input channel — one multiply per entry instead of the
    division a flat offset would need to index the NCHW input."""
    return c if tiling["reads_input"] else g.offsets(c, kh, kw)


def _check_weight(w_shape, g: _Geometry) -> None:
    if tuple(int(d) for d in w_shape) != (g.o, g.c, g.kh, g.kw):
        raise ValueError(f"kernel built for an OIHW weight {(g.o, g.c, g.kh, g.kw)}, got {tuple(w_shape)}")


def nm_conv2d(
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    patterns: "str | Sequence[NMPattern | str]",
    dtype: str = "float32",
    bias: bool = False,
    strides=(1, 1),
    padding=(0, 0, 0, 0),
    dilation=(1, 1),
    target: tvm.target.Target | None = None,
    output_activation: str | None = None,
    *,
    rows_per_task: int | None = None,
    cols: int | None = None,
    k_tile: int | None = None,
) -> NMKernel:
    """Fused TASD conv2d over the terms of ``decompose(W, cfg, axis=1)`` (W in OIHW).

    ``func(x, vals, offsets, [bias], out)``: ``x`` (B, C, H, W) and ``out``
    (B, O, OH, OW) in ``dtype``. ``pack(terms)`` returns ``[vals, offsets]``,
    both (n_col_tiles, entries, cols): per output channel its kept weights and
    their int32 phase-buffer offsets, ``cols`` channels interleaved.
    ``padding`` is an int, (h, w) or Relax's (top, left, bottom, right).
    Tile overrides: ``rows_per_task`` (output positions per task),
    ``cols``, ``k_tile`` (input channels per reduction tile).
    """
    patterns = as_patterns(patterns)
    g = _Geometry(x_shape, w_shape, strides, padding, dilation)
    taps = g.kh * g.kw
    unit = group_lcm(patterns)

    def per_tile(ct):
        return ct // unit * entries_per_unit(patterns) * taps

    overrides = dict(rows_per_task=rows_per_task, cols=cols, k_tile=k_tile)
    inner = g.batch_folded(CPUShape.of(target).lanes(accumulator_dtype(float_dtype(dtype)))) or g
    func, tiling, acc, col_tiles = _conv_kernel(
        g, inner, dtype, bias, output_activation, target, per_tile, False, lambda want: reduction_tile(g.c, unit, want),
        overrides
    )
    ct, cols = tiling["k_tile"], tiling["cols"]

    def pack(terms: Sequence[NMTerm]) -> list[np.ndarray]:
        check_terms(terms, patterns, 1, (g.o, g.c, g.kh, g.kw))
        channels, values = [], []
        for term in terms:
            c = np.broadcast_to(absolute_rows(term), term.values.shape)
            v = term.values.astype(acc)
            v = np.where(c >= g.c, 0, v)  # padding positions of the last group: read channel C-1, times 0
            channels.append(np.minimum(c, g.c - 1))
            values.append(v)
        c = np.concatenate(channels, axis=1)  # (O, entries per tap, KH, KW)
        v = np.concatenate(values, axis=1)
        kh = np.arange(g.kh)[None, None, :, None]
        kw = np.arange(g.kw)[None, None, None, :]
        key = np.broadcast_to(_tap_keys(inner, tiling, c, kh, kw), c.shape)

        def entries_major(a):  # (O, …) → (entries, O)
            return np.moveaxis(a, 0, -1).reshape(-1, g.o)

        key, value, got = tiled_table(entries_major(c // ct), entries_major(key), entries_major(v), ceil_div(g.c, ct))
        assert got == tiling["entries_per_tile"], (got, tiling)
        return [column_tiles(value, cols, col_tiles), column_tiles(key.astype(np.int32), cols, col_tiles)]

    macs = g.batch * g.oh * g.ow * g.o * ceil_div(g.c, ct) * tiling["entries_per_tile"]
    return NMKernel(func, pack, macs, "x (B, C, H, W) NCHW", g.out_shape, tiling)


#: The channel layout's modelled register-tile cost must be at most this share of the position layout's: its
#: output is transposed back to NCHW element by element, which the model leaves out. Measured alone (AVX2, 2
#: threads): the digits CNN's 16 → 32 conv on 8 × 8 planes (share 0.80) 1.16× faster, SE blocks' convs on
#: 1 × 1 planes (0.15–0.4) 4.4–4.7× faster; PP-OCR cls's 1 × 1 convs on 2–3 × 96 planes (0.93) 0.86–0.94× as
#: fast, the transpose outweighing the 7 % less work.
CHANNEL_LAYOUT_MAX_COST = 0.85

#: Convolutions that reduce over fewer values than this (C·kh·kw) run faster as TVM's own conv under the default
#: CPU rules: the kernel's tile set-up (offset table, accumulators) is amortised over too few FMAs. Measured in
#: one process, the model with and without the kernel for that layer: the digits CNN's first conv (1×3×3 = 9)
#: made the model 1.04× faster at batch 120 and 1.21× at batch 1 when left to TVM; PP-OCR's first convs (3×3×3 =
#: 27) broke even; CREPE's first (1×512×1) ran the model 3–11× slower without the kernel.
MIN_DENSE_REDUCTION = 16


def dense_conv2d_pays(w_shape: Sequence[int]) -> bool:
    """Whether :func:`dense_conv2d` beats TVM's conv for an OIHW weight of this shape (:data:`MIN_DENSE_REDUCTION`)."""
    _, channels, kh, kw = w_shape
    return channels * kh * kw >= MIN_DENSE_REDUCTION


def dense_conv2d(
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    dtype: str = "float32",
    bias: bool = False,
    strides=(1, 1),
    padding=(0, 0, 0, 0),
    dilation=(1, 1),
    target: tvm.target.Target | None = None,
    output_activation: str | None = None,
    *,
    rows_per_task: int | None = None,
    cols: int | None = None,
    k_tile: int | None = None,
    layout: str | None = None,
) -> NMKernel:
    """Dense direct conv2d: ``func(x, vals, offsets, [bias], out)``, ``pack(W)``.

    ``offsets`` is one (entries,) table shared by every output channel, so a
    register tile reads each activation vector once for all its channels.
    ``layout`` ``"positions"`` vectorises over output positions (the N:M
    kernels' loop nest), ``"channels"`` over output channels (for small
    planes); by default the one whose register tiles compute less padding
    (the tile overrides apply to, and select, ``"positions"``).
    """
    if layout not in (None, "positions", "channels"):
        raise ValueError(f"layout must be 'positions' or 'channels', got {layout!r}")
    g = _Geometry(x_shape, w_shape, strides, padding, dilation)
    taps = g.kh * g.kw
    overrides = dict(rows_per_task=rows_per_task, cols=cols, k_tile=k_tile)
    cpu = CPUShape.of(target)
    acc = accumulator_dtype(float_dtype(dtype))
    lanes = cpu.lanes(acc)
    by_channels, (positions, vectors, rows) = _channel_tile(g, lanes, cpu.registers)
    inner = g.batch_folded(lanes) or g  # the positions layout's geometry
    if layout is None:
        by_positions = _position_tile(inner, lanes, cpu.registers, tvm.runtime.DataType(acc).bits // 8)[0]
        cheaper = by_channels <= CHANNEL_LAYOUT_MAX_COST * by_positions
        layout = "channels" if cheaper and not any(overrides.values()) else "positions"
    if layout == "channels":
        inner = g
        func, tiling, acc, col_tiles = _channel_vector_kernel(g, dtype, bias, output_activation, target, positions,
                                                              vectors, rows)
    else:
        func, tiling, acc, col_tiles = _conv_kernel(
            g, inner, dtype, bias, output_activation, target, lambda ct: ct * taps, True,
            lambda want: reduction_tile(g.c, 1, want), overrides
        )
    tiling["layout"] = layout
    ct, cols = tiling["k_tile"], tiling["cols"]

    def pack(w: np.ndarray) -> list[np.ndarray]:
        _check_weight(w.shape, g)
        c, kh, kw = np.meshgrid(np.arange(g.c), np.arange(g.kh), np.arange(g.kw), indexing="ij")
        c, kh, kw = c.reshape(-1), kh.reshape(-1), kw.reshape(-1)
        value = np.moveaxis(w.astype(acc), 0, -1).reshape(-1, g.o)  # (C·KH·KW, O)
        tile = np.broadcast_to((c // ct)[:, None], value.shape)
        key = np.broadcast_to(_tap_keys(inner, tiling, c, kh, kw)[:, None], value.shape)
        key, value, got = tiled_table(tile, key, value, ceil_div(g.c, ct))
        assert got == tiling["entries_per_tile"], (got, tiling)
        return [column_tiles(value, cols, col_tiles), key[:, 0].astype(np.int32)]

    macs = g.batch * g.oh * g.ow * g.o * ceil_div(g.c, ct) * tiling["entries_per_tile"]
    return NMKernel(func, pack, macs, "x (B, C, H, W) NCHW", g.out_shape, tiling)

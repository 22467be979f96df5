"""Pointwise (1×1) and depthwise convs in blocked channels, NCHW{L}c: the layout onnxruntime runs CNNs in on the CPU.

``out[b, ob, h, w, oi] = Σ_{cb, ci} x[b, cb, h, w, ci] · W[ob, cb, ci, oi]`` with L = the target's fp32 lanes,
so a vector holds L output channels of one position: each step of the reduction broadcasts the ``positions``
(rows × columns of the plane) activations of the register tile, loads ``blocks`` weight vectors and issues ``positions × blocks`` FMAs, and activations,
weights and outputs are all read and written in their memory order. In NCHW the same conv vectorises over
positions, reads every input channel at the plane's pitch and (on 7 × 7 / 14 × 14 planes) needs the batch
folded into the positions; measured side by side on a 2-vCPU Xeon with AVX-512 (``benchmarks/blocked_layout.py``)
the blocked kernel runs near onnxruntime's own NCHWc convs where the NCHW kernel stays near two thirds of them.

A depthwise conv in the same layout is the plain window sum with L channels per vector: a register tile of
output positions along a row, each tap one weight vector and one input vector per position, padding read as
zeros through a bounds test that is uniform over the vector.

CPU builds run every dense pointwise and depthwise conv with these kernels (``blocked_channels`` of
:class:`~tvm_tasd.transform.TASDRewrite`; :meth:`~schedules.selection.Kernels.has_blocked_conv2d` says which), the
bias and activation in their output stage, channels past a multiple of L zero-padded; the functions of
:func:`to_blocked_func` / :func:`from_blocked_func` change layouts where :mod:`tvm_tasd.blocked_layout` leaves
a transform. The N:M kernels stay in NCHW (their kept input channels differ per output channel, so they
vectorise over positions).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tvm
from tvm import te

from .llvm_common import CPUShape, NMKernel, float_dtype, output_stage, parallel, parallel_chunks
from .llvm_conv2d import _padding, _pair
from .nm_pack import ceil_div, divisor_at_least, pad_to

#: Most positions per register tile: the tile broadcasts each, so more only lengthens the unrolled body.
MAX_TILE_POSITIONS = 28


def blocked_tile(height: int, width: int, blocks: int, registers: int, step: int = 1) -> tuple[int, int, int]:
    """(rows, columns, output-channel blocks) of the register tile: each dividing its extent (a tail would be a
    predicated tile: 3× slower measured), ``positions × blocks`` accumulators plus the ``blocks`` weight vectors
    and one broadcast in the registers (7 × 4 on 32 registers spilled: 3× slower), the most FMAs per load, then
    the larger tile, then the longer run along a row; rows and columns multiples of ``step`` (2: whole windows of
    a 2 × 2 pooling)."""
    def rank(tile):
        rows, cols, b = tile
        p = rows * cols
        return p * b / (p + b), p * b, cols

    tiles = [(r, c, b) for r in range(step, height + 1, step) if height % r == 0
             for c in range(step, width + 1, step) if width % c == 0 and r * c <= MAX_TILE_POSITIONS
             for b in range(1, blocks + 1) if blocks % b == 0 and r * c * b + b + 1 <= registers]
    return max(tiles, key=rank)


#: Fewest positions per register tile that reuse each weight vector enough to stream the weights from L2.
L2_STREAM_POSITIONS = 4
#: Bytes of weights per chunk of a cut reduction (they stay in L1 while the task walks the plane).
WEIGHT_CHUNK_BYTES = 24 * 1024


def reduction_chunk(positions: int, blocks: int, input_blocks: int, lanes: int, steps_per_block: int,
                    itemsize: int = 4) -> int:
    """Input-channel blocks per reduction chunk of :func:`blocked_conv2d` (``steps_per_block``: reduction steps
    per input block, L for a pointwise conv, KH · KW · L for a window). A tile of fewer than
    :data:`L2_STREAM_POSITIONS` positions (7 output blocks leave 2 × 7: no larger tile divides both) loads a
    weight vector for every one or two FMAs, more than L2 delivers: its reduction is cut into chunks of about
    :data:`WEIGHT_CHUNK_BYTES` of weights, which stay in L1 while the task walks the plane. Measured alone on
    the Xeon (16 images, A/B): 672 → 112 and 480 → 112 on 14 × 14 1.39× / 1.44× in chunks of 3 blocks; cutting
    tiles of 4–7 positions too moved 1152 → 192 / 320 on 7 × 7 1.05×, 480 → 80 0.97×, 672 → 192 0.89×."""
    if positions >= L2_STREAM_POSITIONS:
        return input_blocks
    return max(1, min(input_blocks, WEIGHT_CHUNK_BYTES // (blocks * steps_per_block * lanes * itemsize)))


def pools(x_shape, w_shape, strides, padding, output_activation: str | None) -> bool:
    """Whether :func:`blocked_conv2d` can take a 2 × 2 max pooling of stride 2 into its output stage."""
    _, _, out_height, out_width = _window(x_shape, w_shape[2], w_shape[3], strides, padding)
    return out_height % 2 == 0 and out_width % 2 == 0 and output_activation in POOLED_ACTIVATIONS


def _sizes(x_shape, w_shape, dtype, target) -> tuple[str, tuple[int, ...], tuple[int, ...], CPUShape]:
    dtype = float_dtype(dtype)
    if dtype != "float32":
        raise ValueError(f"the blocked kernels compute in float32, got {dtype}")
    return dtype, tuple(int(d) for d in x_shape), tuple(int(d) for d in w_shape), CPUShape.of(target)


def _register_tile(s: tvm.s_tir.Schedule, block, tasks: list, inner: list, lanes_loop, unrolled: list,
                   reduction, output_at=None) -> None:
    """``tasks`` fused into one parallel loop, then ``inner`` in order and the vectorised lane loop; the register
    tile's ``unrolled`` loops unrolled, the zero-init hoisted out of the ``reduction`` loop; the output stage
    computed under ``output_at`` (the task loop when None) from the accumulators the tile leaves there."""
    s.reorder(*tasks, *inner, lanes_loop)
    task = s.fuse(*tasks)
    parallel(s, task)
    s.vectorize(lanes_loop)
    for loop in unrolled:
        s.unroll(loop)
    out = s.get_sblock("out")
    s.reverse_compute_at(out, task if output_at is None else output_at)
    s.vectorize(s.get_loops(out)[-1])
    init = s.decompose_reduction(block, reduction)
    s.vectorize(s.get_loops(init)[-1])


#: Output activations that never decrease, so a max pooling may come first: max(f(a), f(b)) = f(max(a, b)).
POOLED_ACTIVATIONS = (None, "relu", "relu6")


def _output(acc: te.Tensor, dtype: str, bias: bool, output_activation: str | None, pool: bool = False):
    """``out`` from the accumulators (bias per blocked channel, activation; with ``pool`` the maximum of each
    2 × 2 window, taken before the bias and activation, which keep the order of values), and the inputs it adds."""
    if not pool:
        return output_stage(acc.shape, lambda *i: acc[i], (1, 4), dtype, dtype, bias, output_activation)
    batch, blocks, height, width, lanes = acc.shape

    def window_max(b, ob, i, j, lane):
        return te.max(te.max(acc[b, ob, 2 * i, 2 * j, lane], acc[b, ob, 2 * i, 2 * j + 1, lane]),
                      te.max(acc[b, ob, 2 * i + 1, 2 * j, lane], acc[b, ob, 2 * i + 1, 2 * j + 1, lane]))

    return output_stage((batch, blocks, height // 2, width // 2, lanes), window_max, (1, 4), dtype, dtype, bias,
                        output_activation)


def _window(x_shape, kh: int, kw: int, strides, padding) -> tuple[tuple, tuple, int, int]:
    """(strides, (top, left, bottom, right), output height, output width) of a window on an NCHW ``x_shape``."""
    (sh, sw), pads = _pair(strides, "strides"), _padding(padding)
    height, width = x_shape[2:]
    oh, ow = (height + pads[0] + pads[2] - kh) // sh + 1, (width + pads[1] + pads[3] - kw) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"a {kh}×{kw} window does not fit the padded {height}×{width} input")
    return (sh, sw), pads, oh, ow


def _tap(x: te.Tensor, strides, pads, height: int, width: int, dtype: str):
    """``tap(b, cb, i, j, rh, rw, *lane)``: the input under window tap (rh, rw) of output (i, j), zero where the
    tap falls in the padding (a bounds test; none where there is no padding)."""
    (sh, sw), (pt, pl, pb, pr) = strides, pads

    def tap(b, cb, i, j, rh, rw, *lane):
        row, col = i * sh + rh - pt, j * sw + rw - pl
        if not any((pt, pl, pb, pr)):
            return x[(b, cb, row, col, *lane)]
        inside = te.all(row >= 0, row < height, col >= 0, col < width)
        value = x[(b, cb, te.max(te.min(row, height - 1), 0), te.max(te.min(col, width - 1), 0), *lane)]
        return te.if_then_else(inside, value, tvm.tirx.const(0, dtype))

    return tap


#: Input channels up to which a conv reads NCHW input (``blocked_input=False``): L lanes would pad them 4–16-fold.
STEM_CHANNELS = 4
#: Most window taps of a conv the rewrite runs blocked. Alone against the NCHW kernel (AVX-512 Xeon, 2 threads):
#: 3 × 3 windows 1.2–1.8× as fast (EfficientNet's 3 → 32 stem at 16 images 3.5 → 2.4 ms, PP-OCR's 3 → 16
#: 0.24 → 0.13, 16 → 32 on 8 × 8 at 120 images 0.27 → 0.22, 64 → 64 on 12 × 80 2.0 → 1.7), CREPE's 1-D
#: windows slower (512 taps 0.86×, 64 taps 0.42×: a tile of one column reloads each weight vector per row).
MAX_WINDOW_TAPS = 25
#: The same for a stem reading NCHW input (through a padded copy): ResNet's 3 → 64 7 × 7 / 2 1.43× as fast at one
#: image, 1.81× at 8; a 3 → 16 5 × 5 on 96 × 96 1.21×; CREPE's 1-D 512-tap stem 1.05–1.09× (1024 outputs) but
#: 0.97× (128), so 1-D windows that long stay NCHW.
MAX_STEM_TAPS = 49


def blocked_conv2d(x_shape: Sequence[int], w_shape: Sequence[int], strides=1, padding=0, dtype: str = "float32",
                   bias: bool = False, output_activation: str | None = None, blocked_input: bool = True,
                   output_pool: bool = False, target: tvm.target.Target | None = None) -> NMKernel:
    """``func(x, w_blocked, [bias], out)``: a dense conv for an NCHW ``x_shape`` and an OIHW ``w_shape`` (pointwise
    or any window; ``padding`` an int, (h, w) or (top, left, bottom, right)) whose output is in blocked channels,
    (B, ⌈O/L⌉, OH, OW, L), and whose input is too, (B, ⌈C/L⌉, H, W, L) — or, with ``blocked_input=False``, NCHW
    (a stem on 3 channels, which L lanes would pad five-fold); channels past C and O are zero-padded.
    ``pack(W)`` → ``[W (⌈O/L⌉, ⌈C/Li⌉, KH, KW, Li, L)]`` (Li = L, or 1 for an NCHW input); the bias and
    ``output_activation`` applied in the output stage; ``output_pool``: and a 2 × 2 max pooling of stride 2
    (output (B, ⌈O/L⌉, OH/2, OW/2, L); OH and OW even, the activation one of :data:`POOLED_ACTIVATIONS`), so the
    full-size output is never written."""
    dtype, (batch, channels, height, width), (outputs, w_channels, kh, kw), cpu = _sizes(x_shape, w_shape, dtype,
                                                                                          target)
    if w_channels != channels:
        raise ValueError(f"a conv weight has shape (O, {channels}, KH, KW), got {tuple(w_shape)}")
    lanes = cpu.lanes(dtype)
    in_lanes = lanes if blocked_input else 1
    stride, pads, oh, ow = _window(x_shape, kh, kw, strides, padding)
    if output_pool and not pools(x_shape, w_shape, strides, padding, output_activation):
        raise ValueError(f"a 2 × 2 pooling in the output stage needs an even output plane (got {oh} × {ow}) and an "
                         f"activation of {POOLED_ACTIVATIONS} (got {output_activation!r})")
    in_blocks, out_blocks = ceil_div(channels, in_lanes), ceil_div(outputs, lanes)
    x = te.placeholder((batch, in_blocks, height, width, lanes) if blocked_input else (batch, channels, height, width),
                       dtype, name="x")
    w = te.placeholder((out_blocks, in_blocks, kh, kw, in_lanes, lanes), dtype, name="w")
    cb, rh, rw = te.reduce_axis((0, in_blocks), name="cb"), te.reduce_axis((0, kh), name="kh"), \
        te.reduce_axis((0, kw), name="kw")
    ci = te.reduce_axis((0, in_lanes), name="ci")
    padded_input = any(pads)
    if padded_input:  # one padded copy, so the taps need no bounds test (16 → 32 3 × 3 on 8 × 8: 0.79 → 0.22 ms;
        # an NCHW stem's too: 3 → 16 5 × 5 on 96 × 96 0.15 → 0.08 ms, ResNet's 7 × 7 / 2 at 8 images 8.5 → 5.6)
        pt, pl, pb, pr = pads
        bounded = _tap(x, (1, 1), pads, height, width, dtype)
        source = te.compute((*x.shape[:2], height + pt + pb, width + pl + pr, *x.shape[4:]),
                            lambda b, c, h, i, *lane: bounded(b, c, h, i, 0, 0, *lane), name="padded")
        tap = _tap(source, stride, (0, 0, 0, 0), height + pt + pb, width + pl + pr, dtype)
    else:
        tap = _tap(x, stride, pads, height, width, dtype)
    acc = te.compute((batch, out_blocks, oh, ow, lanes),
                     lambda b, ob, i, j, oi: te.sum(tap(b, cb, i, j, rh, rw, *([ci] if blocked_input else []))
                                                    * w[ob, cb, rh, rw, ci, oi], axis=[cb, rh, rw, ci]),
                     name="acc")
    out, extra = _output(acc, dtype, bias, output_activation, output_pool)
    rows, cols, blocks = blocked_tile(oh, ow, out_blocks, cpu.registers, step=2 if output_pool else 1)

    s = tvm.s_tir.Schedule(te.create_prim_func([x, w, *extra, out]).with_attr("tirx.noalias", True))
    if padded_input:
        pad_b, pad_c, pad_h, *_, pad_inner = s.get_loops(s.get_sblock("padded"))
        parallel(s, s.fuse(pad_b, pad_c, pad_h))
        s.vectorize(pad_inner)
    block = s.get_sblock("acc")
    b, ob, i, j, oi, rcb, loop_h, loop_w, rci = s.get_loops(block)
    ob_tile, ob_in = s.split(ob, [None, blocks])
    h_tile, h_in = s.split(i, [None, rows])
    w_tile, w_in = s.split(j, [None, cols])
    chunk = reduction_chunk(rows * cols, blocks, in_blocks, lanes, kh * kw * in_lanes)
    tile = [h_in, w_in, ob_in]
    steps = [loop_h, loop_w, rci]
    if chunk < in_blocks:  # each task walks its rows of the plane once per chunk of the reduction; the rows are
        # shared out so that one image still has tasks for every core (672 → 112 on 14 × 14: 0.20 → 0.10 ms)
        rcb_chunk, rcb = s.split(rcb, [None, chunk])
        row_tiles = oh // rows
        groups = divisor_at_least(row_tiles, parallel_chunks(batch * (out_blocks // blocks), row_tiles))
        h_group, h_tile = s.split(h_tile, [groups, None])
        _register_tile(s, block, [b, ob_tile, h_group], [rcb_chunk, h_tile, w_tile, rcb, *steps, *tile], oi, tile,
                       rcb_chunk)
    else:
        _register_tile(s, block, [b, ob_tile, h_tile, w_tile], [rcb, *steps, *tile], oi, tile, rcb)

    def pack(weight: np.ndarray) -> list[np.ndarray]:
        padded = pad_to(pad_to(weight, 0, lanes), 1, in_lanes)
        blocked = padded.reshape(out_blocks, lanes, in_blocks, in_lanes, kh, kw)  # (ob, oi, cb, ci, kh, kw)
        return [np.ascontiguousarray(blocked.transpose(0, 2, 4, 5, 3, 1), dtype=dtype)]

    layout = f"x (B, ⌈C/{lanes}⌉, H, W, {lanes})" if blocked_input else "x (B, C, H, W) NCHW"
    return NMKernel(s.mod["main"], pack, batch * oh * ow * channels * outputs * kh * kw, layout,
                    tuple(int(d) for d in out.shape),
                    dict(rows=rows, cols=cols, blocks=blocks, blocked_lanes=lanes, reduction_chunk=chunk,
                         blocked_input=blocked_input, output_pool=output_pool),
                    lambda values: pad_to(np.asarray(values, dtype), 0, lanes))


#: Most output positions per depthwise register tile (the row's largest divisor up to this).
MAX_DEPTHWISE_POSITIONS = 8


def blocked_depthwise_conv2d(x_shape: Sequence[int], w_shape: Sequence[int], strides=1, padding=0,
                             dtype: str = "float32", bias: bool = False, output_activation: str | None = None,
                             target: tvm.target.Target | None = None) -> NMKernel:
    """``func(x, w_blocked, [bias], out)`` for an NCHW ``x_shape`` and a (C, 1, KH, KW) depthwise weight: ``x``
    (B, ⌈C/L⌉, H, W, L), ``out`` (B, ⌈C/L⌉, OH, OW, L); ``padding`` an int, (h, w) or (top, left, bottom, right);
    ``pack(W)`` → ``[W (⌈C/L⌉, KH, KW, L)]``; the bias and ``output_activation`` applied in the output stage."""
    dtype, (batch, channels, height, width), (w_channels, one, kh, kw), cpu = _sizes(x_shape, w_shape, dtype, target)
    lanes = cpu.lanes(dtype)
    if w_channels != channels or one != 1:
        raise ValueError(f"a depthwise weight has shape ({channels}, 1, KH, KW), got {tuple(w_shape)}")
    stride, pads, oh, ow = _window(x_shape, kh, kw, strides, padding)
    blocks = ceil_div(channels, lanes)
    x = te.placeholder((batch, blocks, height, width, lanes), dtype, name="x")
    w = te.placeholder((blocks, kh, kw, lanes), dtype, name="w")
    rh, rw = te.reduce_axis((0, kh), name="kh"), te.reduce_axis((0, kw), name="kw")
    tap = _tap(x, stride, pads, height, width, dtype)
    acc = te.compute((batch, blocks, oh, ow, lanes),
                     lambda b, cb, i, j, ci: te.sum(tap(b, cb, i, j, rh, rw, ci) * w[cb, rh, rw, ci], axis=[rh, rw]),
                     name="acc")
    out, extra = _output(acc, dtype, bias, output_activation)
    positions = max(p for p in range(1, MAX_DEPTHWISE_POSITIONS + 1) if ow % p == 0)

    s = tvm.s_tir.Schedule(te.create_prim_func([x, w, *extra, out]).with_attr("tirx.noalias", True))
    block = s.get_sblock("acc")
    b, cb, i, j, ci, loop_h, loop_w = s.get_loops(block)
    j_tile, j_in = s.split(j, [None, positions])
    _register_tile(s, block, [b, cb, i], [j_tile, loop_h, loop_w, j_in], ci, [j_in, loop_w], loop_h, j_tile)

    def pack(weight: np.ndarray) -> list[np.ndarray]:
        blocked = pad_to(weight[:, 0], 0, lanes).reshape(blocks, lanes, kh, kw)  # (cb, ci, kh, kw)
        return [np.ascontiguousarray(blocked.transpose(0, 2, 3, 1), dtype=dtype)]

    return NMKernel(s.mod["main"], pack, batch * oh * ow * channels * kh * kw, f"x (B, ⌈C/{lanes}⌉, H, W, {lanes})",
                    (batch, blocks, oh, ow, lanes), dict(positions=positions, blocked_lanes=lanes, blocked_input=True),
                    lambda values: pad_to(np.asarray(values, dtype), 0, lanes))


def blocked_lanes(kernel: NMKernel) -> int:
    """The lanes L of a kernel that writes blocked channels, else 0."""
    return kernel.params.get("blocked_lanes", 0)


def _i64(*dims: int) -> tuple:
    """Shape dimensions as Relax's legalized functions write them, so fusion can merge these with theirs."""
    return tuple(tvm.tirx.IntImm("int64", int(d)) for d in dims)


def to_blocked_func(x_shape: Sequence[int], lanes: int, dtype: str = "float32") -> tvm.tirx.PrimFunc:
    """NCHW → (B, ⌈C/L⌉, H, W, L), the channels past C zero: an injective function left to the default schedules
    (and to fusion with its neighbours)."""
    batch, channels, height, width = (int(d) for d in x_shape)
    x = te.placeholder(_i64(batch, channels, height, width), dtype, name="x")
    out = te.compute(_i64(batch, ceil_div(channels, lanes), height, width, lanes),
                     lambda b, cb, h, w, ci: te.if_then_else(cb * lanes + ci < channels,
                                                             x[b, te.min(cb * lanes + ci, channels - 1), h, w],
                                                             tvm.tirx.const(0, dtype)), name="to_blocked")
    return te.create_prim_func([x, out])


def from_blocked_func(blocked_shape: Sequence[int], channels: int, dtype: str = "float32") -> tvm.tirx.PrimFunc:
    """(B, ⌈C/L⌉, H, W, L) → NCHW with ``channels`` channels."""
    batch, blocks, height, width, lanes = (int(d) for d in blocked_shape)
    x = te.placeholder(_i64(batch, blocks, height, width, lanes), dtype, name="x")
    out = te.compute(_i64(batch, channels, height, width), lambda b, c, h, w: x[b, c // lanes, h, w, c % lanes],
                     name="from_blocked")
    return te.create_prim_func([x, out])


def to_blocked(x: np.ndarray, lanes: int) -> np.ndarray:
    """NCHW → (B, ⌈C/L⌉, H, W, L), zero-padded: what :func:`to_blocked_func` computes."""
    batch, channels, height, width = x.shape
    padded = pad_to(x, 1, lanes)
    return np.ascontiguousarray(padded.reshape(batch, -1, lanes, height, width).transpose(0, 1, 3, 4, 2))


def from_blocked(x: np.ndarray, channels: int) -> np.ndarray:
    """(B, ⌈C/L⌉, H, W, L) → NCHW with ``channels`` channels."""
    batch, blocks, height, width, lanes = x.shape
    whole = x.transpose(0, 1, 4, 2, 3).reshape(batch, blocks * lanes, height, width)
    return np.ascontiguousarray(whole[:, :channels])

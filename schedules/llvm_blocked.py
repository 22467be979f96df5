"""Pointwise (1×1) and depthwise convs in blocked channels, NCHW{L}c: the layout onnxruntime runs CNNs in on the CPU.

``out[b, ob, p, oi] = Σ_{cb, ci} x[b, cb, p, ci] · W[ob, cb, ci, oi]`` with L = the target's fp32 lanes, so
a vector holds L output channels of one position: each step of the reduction broadcasts ``positions``
activations, loads ``blocks`` weight vectors and issues ``positions × blocks`` FMAs, and activations,
weights and outputs are all read and written in their memory order. In NCHW the same conv vectorises over
positions, reads every input channel at the plane's pitch and (on 7 × 7 / 14 × 14 planes) needs the batch
folded into the positions; measured side by side on a 2-vCPU Xeon with AVX-512 (``benchmarks/blocked_layout.py``)
the blocked kernel runs near onnxruntime's own NCHWc convs where the NCHW kernel stays near two thirds of them.

A depthwise conv in the same layout is the plain window sum with L channels per vector: a register tile of
output positions along a row, each tap one weight vector and one input vector per position, padding read as
zeros through a bounds test that is uniform over the vector.

These are the kernels of a blocked-channel layout for CNNs, not yet used by the rewrite: the graph pass that
keeps a network in NCHW{L}c between its convs (residual adds and pooling blocked too; the layout transforms
at the network's ends) is the next step, and the N:M kernels stay in NCHW (their kept input channels differ
per output channel, so they vectorise over positions).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tvm
from tvm import te

from .llvm_common import CPUShape, NMKernel, float_dtype, parallel
from .llvm_conv2d import _padding, _pair

#: Most positions per register tile: the tile broadcasts each, so more only lengthens the unrolled body.
MAX_TILE_POSITIONS = 28


def blocked_tile(positions: int, blocks: int, registers: int) -> tuple[int, int]:
    """(positions, output-channel blocks) of the register tile: both dividing their extents (a tail would be
    a predicated tile: 3× slower measured), ``positions × blocks`` accumulators plus the ``blocks`` weight
    vectors and one broadcast in the registers (7 × 4 on 32 registers spilled: 3× slower), the most FMAs per
    load, then the larger tile."""
    def fmas_per_load(tile):
        p, b = tile
        return p * b / (p + b), p * b

    tiles = [(p, b) for p in range(1, min(positions, MAX_TILE_POSITIONS) + 1) if positions % p == 0
             for b in range(1, blocks + 1) if blocks % b == 0 and p * b + b + 1 <= registers]
    return max(tiles, key=fmas_per_load)


#: Fewest positions per register tile that reuse each weight vector enough to stream the weights from L2.
L2_STREAM_POSITIONS = 4
#: Bytes of weights per chunk of a cut reduction (they stay in L1 while the task walks the plane).
WEIGHT_CHUNK_BYTES = 24 * 1024


def reduction_chunk(positions: int, blocks: int, input_blocks: int, lanes: int, itemsize: int = 4) -> int:
    """Input-channel blocks per reduction chunk of the pointwise kernel. A tile of fewer than
    :data:`L2_STREAM_POSITIONS` positions (7 output blocks leave 2 × 7: no larger tile divides both) loads a
    weight vector for every one or two FMAs, more than L2 delivers: its reduction is cut into chunks of about
    :data:`WEIGHT_CHUNK_BYTES` of weights, which stay in L1 while the task walks the plane. Measured alone on
    the Xeon (16 images, A/B): 672 → 112 and 480 → 112 on 14 × 14 1.39× / 1.44× in chunks of 3 blocks; cutting
    tiles of 4–7 positions too moved 1152 → 192 / 320 on 7 × 7 1.05×, 480 → 80 0.97×, 672 → 192 0.89×."""
    if positions >= L2_STREAM_POSITIONS:
        return input_blocks
    return max(1, min(input_blocks, WEIGHT_CHUNK_BYTES // (blocks * lanes * lanes * itemsize)))


def _sizes(x_shape, w_shape, dtype, target) -> tuple[str, tuple[int, ...], tuple[int, ...], CPUShape]:
    dtype = float_dtype(dtype)
    if dtype != "float32":
        raise ValueError(f"the blocked kernels compute in float32, got {dtype}")
    return dtype, tuple(int(d) for d in x_shape), tuple(int(d) for d in w_shape), CPUShape.of(target)


def _register_tile(s: tvm.s_tir.Schedule, block, tasks: list, inner: list, lanes_loop, unrolled: list,
                   reduction) -> None:
    """``tasks`` fused into one parallel loop, then ``inner`` in order and the vectorised lane loop; the register
    tile's ``unrolled`` loops unrolled, the zero-init hoisted out of the ``reduction`` loop."""
    s.reorder(*tasks, *inner, lanes_loop)
    parallel(s, s.fuse(*tasks))
    s.vectorize(lanes_loop)
    for loop in unrolled:
        s.unroll(loop)
    init = s.decompose_reduction(block, reduction)
    s.vectorize(s.get_loops(init)[-1])


def blocked_pointwise_conv2d(x_shape: Sequence[int], w_shape: Sequence[int], dtype: str = "float32",
                             target: tvm.target.Target | None = None) -> NMKernel:
    """``func(x, w_blocked, out)`` for an NCHW ``x_shape`` and OIHW 1×1 ``w_shape`` whose channel counts the
    target's lanes divide; ``x`` and ``out`` in NCHW{L}c, ``pack(W)`` → ``[W (O/L, C/L, L, L)]``."""
    dtype, (batch, channels, height, width), (outputs, w_channels, kh, kw), cpu = _sizes(x_shape, w_shape, dtype,
                                                                                          target)
    lanes = cpu.lanes(dtype)
    if (kh, kw) != (1, 1) or w_channels != channels:
        raise ValueError(f"a pointwise weight has shape (O, {channels}, 1, 1), got {tuple(w_shape)}")
    if channels % lanes or outputs % lanes:
        raise ValueError(f"blocked channels need channel counts divisible by {lanes} lanes, got {channels} → "
                         f"{outputs}")
    plane = height * width
    x = te.placeholder((batch, channels // lanes, plane, lanes), dtype, name="x")
    w = te.placeholder((outputs // lanes, channels // lanes, lanes, lanes), dtype, name="w")
    cb = te.reduce_axis((0, channels // lanes), name="cb")
    ci = te.reduce_axis((0, lanes), name="ci")
    out = te.compute((batch, outputs // lanes, plane, lanes),
                     lambda b, ob, p, oi: te.sum(x[b, cb, p, ci] * w[ob, cb, ci, oi], axis=[cb, ci]), name="out")
    positions, blocks = blocked_tile(plane, outputs // lanes, cpu.registers)

    s = tvm.s_tir.Schedule(te.create_prim_func([x, w, out]).with_attr("tirx.noalias", True))
    block = s.get_sblock("out")
    b, ob, p, oi, rcb, rci = s.get_loops(block)
    ob_tile, ob_in = s.split(ob, [None, blocks])
    p_tile, p_in = s.split(p, [None, positions])
    chunk = reduction_chunk(positions, blocks, channels // lanes, lanes)
    if chunk < channels // lanes:  # each task walks the plane once per chunk of the reduction
        rcb_chunk, rcb = s.split(rcb, [None, chunk])
        _register_tile(s, block, [b, ob_tile], [rcb_chunk, p_tile, rcb, rci, p_in, ob_in], oi, [p_in, ob_in],
                       rcb_chunk)
    else:
        _register_tile(s, block, [b, ob_tile, p_tile], [rcb, rci, p_in, ob_in], oi, [p_in, ob_in], rcb)

    def pack(weight: np.ndarray) -> list[np.ndarray]:
        blocked = weight.reshape(outputs // lanes, lanes, channels // lanes, lanes)  # (ob, oi, cb, ci)
        return [np.ascontiguousarray(blocked.transpose(0, 2, 3, 1), dtype=dtype)]

    return NMKernel(s.mod["main"], pack, batch * plane * channels * outputs, f"x (B, C/{lanes}, H·W, {lanes})",
                    (batch, outputs // lanes, plane, lanes), dict(positions=positions, blocks=blocks, lanes=lanes))


#: Most output positions per depthwise register tile (the row's largest divisor up to this).
MAX_DEPTHWISE_POSITIONS = 8


def blocked_depthwise_conv2d(x_shape: Sequence[int], w_shape: Sequence[int], strides=1, padding=0,
                             dtype: str = "float32", target: tvm.target.Target | None = None) -> NMKernel:
    """``func(x, w_blocked, out)`` for an NCHW ``x_shape`` and a (C, 1, KH, KW) depthwise weight whose channel
    count the target's lanes divide; ``x`` (B, C/L, H, W, L), ``out`` (B, C/L, OH, OW, L); ``padding`` an int,
    (h, w) or (top, left, bottom, right); ``pack(W)`` → ``[W (C/L, KH, KW, L)]``."""
    dtype, (batch, channels, height, width), (w_channels, one, kh, kw), cpu = _sizes(x_shape, w_shape, dtype, target)
    lanes = cpu.lanes(dtype)
    if w_channels != channels or one != 1:
        raise ValueError(f"a depthwise weight has shape ({channels}, 1, KH, KW), got {tuple(w_shape)}")
    if channels % lanes:
        raise ValueError(f"blocked channels need a channel count divisible by {lanes} lanes, got {channels}")
    (sh, sw), (pt, pl, pb, pr) = _pair(strides, "strides"), _padding(padding)
    oh, ow = (height + pt + pb - kh) // sh + 1, (width + pl + pr - kw) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"a {kh}×{kw} window does not fit the padded {height}×{width} input")
    x = te.placeholder((batch, channels // lanes, height, width, lanes), dtype, name="x")
    w = te.placeholder((channels // lanes, kh, kw, lanes), dtype, name="w")
    rh, rw = te.reduce_axis((0, kh), name="kh"), te.reduce_axis((0, kw), name="kw")

    def tap(b, cb, i, j, ci):
        row, col = i * sh + rh - pt, j * sw + rw - pl
        inside = te.all(row >= 0, row < height, col >= 0, col < width)
        value = x[b, cb, te.max(te.min(row, height - 1), 0), te.max(te.min(col, width - 1), 0), ci]
        return te.if_then_else(inside, value, tvm.tirx.const(0, dtype))

    out = te.compute((batch, channels // lanes, oh, ow, lanes),
                     lambda b, cb, i, j, ci: te.sum(tap(b, cb, i, j, ci) * w[cb, rh, rw, ci], axis=[rh, rw]),
                     name="out")
    positions = max(p for p in range(1, MAX_DEPTHWISE_POSITIONS + 1) if ow % p == 0)

    s = tvm.s_tir.Schedule(te.create_prim_func([x, w, out]).with_attr("tirx.noalias", True))
    block = s.get_sblock("out")
    b, cb, i, j, ci, loop_h, loop_w = s.get_loops(block)
    j_tile, j_in = s.split(j, [None, positions])
    _register_tile(s, block, [b, cb, i], [j_tile, loop_h, loop_w, j_in], ci, [j_in, loop_w], loop_h)

    def pack(weight: np.ndarray) -> list[np.ndarray]:
        blocked = weight.reshape(channels // lanes, lanes, kh, kw)  # (cb, ci, kh, kw)
        return [np.ascontiguousarray(blocked.transpose(0, 2, 3, 1), dtype=dtype)]

    return NMKernel(s.mod["main"], pack, batch * oh * ow * channels * kh * kw, f"x (B, C/{lanes}, H, W, {lanes})",
                    (batch, channels // lanes, oh, ow, lanes), dict(positions=positions, lanes=lanes))


def to_blocked(x: np.ndarray, lanes: int) -> np.ndarray:
    """NCHW → (B, C/L, H·W, L)."""
    batch, channels, height, width = x.shape
    return np.ascontiguousarray(x.reshape(batch, channels // lanes, lanes, height * width).transpose(0, 1, 3, 2))


def from_blocked(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """(B, C/L, H·W, L) → NCHW."""
    batch, blocks, _, lanes = x.shape
    return np.ascontiguousarray(x.transpose(0, 1, 3, 2).reshape(batch, blocks * lanes, height, width))

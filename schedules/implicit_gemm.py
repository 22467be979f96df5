"""Matmul and conv2d as one GEMM for the tensorized kernels (implicit GEMM).

The tensorized kernels (``llvm_tensorized``, ``cuda_mma_sp``) compute

    accᵀ(col, pos) = Σ_row W(col, row) · X(row, pos)

and a :class:`GemmView` says what col, row and pos are for one layer:

* matmul ``x(m, k) · W(k, n)``: col = n, row = k, pos = m;
* conv2d NCHW/OIHW: col = output channel, row = (kh, kw, c) — tap-major,
  input channels innermost and padded to ``align`` so that every N:M group
  (grouped along c) stays inside one tap — and pos = (b, oh, ow).
  The kernels' staging copies gather X through :meth:`GemmView.x_value`
  (an im2col index expression with zero padding).

The view also rearranges a layer's ``NMTerm``s into its row space: compressed
(:meth:`compressed`, for the emulated group tiles) or dense (:meth:`dense`,
for conversion to NVIDIA's 2:4 format), and writes the output back in the
layer's layout (:meth:`output`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import te

from tvm_tasd import NMTerm

from .nm_pack import ceil_div


def _pair(value) -> tuple[int, int]:
    value = [int(v) for v in np.atleast_1d(value)]
    return (value[0], value[0]) if len(value) == 1 else (value[0], value[1])


def _padding(value) -> tuple[int, int, int, int]:
    """int, (h, w) or Relax's (top, left, bottom, right)."""
    value = [int(v) for v in np.atleast_1d(value)]
    return tuple((value * 4)[:4] if len(value) == 1 else (value * 2 if len(value) == 2 else value))


def _clamp(value, size: int):
    """An in-bounds index for a masked read (its value is discarded)."""
    return te.max(te.min(value, size - 1), 0)


@dataclass(frozen=True)
class GemmView:
    """One layer as ``accᵀ(cols, positions) = W(cols, rows) · X(rows, positions)``."""

    op: str  # "matmul" | "conv2d"
    x_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    cols: int
    rows: int  # padded reduction length in the row space
    positions: int
    channels_padded: int  # grouped-axis entries per tap (K padded, or C padded) in the row space
    taps: tuple[int, int] = (1, 1)
    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)

    @classmethod
    def matmul(cls, m: int, k: int, n: int, align: int) -> GemmView:
        kp = ceil_div(k, align) * align
        return cls("matmul", (m, k), (m, n), n, kp, m, kp)

    @classmethod
    def conv2d(cls, x_shape, w_shape, align: int, strides=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1)) -> GemmView:
        b, c, h, w = (int(d) for d in x_shape)
        o, c_w, kh, kw = (int(d) for d in w_shape)
        if c_w != c:
            raise ValueError(f"weight has {c_w} input channels, input has {c} (groups ≠ 1 is not supported)")
        (sh, sw), (dh, dw), pad = _pair(strides), _pair(dilation), _padding(padding)
        oh = (h + pad[0] + pad[2] - dh * (kh - 1) - 1) // sh + 1
        ow = (w + pad[1] + pad[3] - dw * (kw - 1) - 1) // sw + 1
        if oh < 1 or ow < 1:
            raise ValueError(f"kernel {kh}×{kw} (dilated) does not fit the padded {h}×{w} input")
        cp = ceil_div(c, align) * align
        return cls("conv2d", (b, c, h, w), (b, o, oh, ow), o, kh * kw * cp, b * oh * ow, cp, (kh, kw), (sh, sw), pad, (dh, dw))

    # ------------------------------------------------------------ TE side

    def x_value(self, x: te.Tensor, row, pos, dtype: str):
        """X(row, pos) read from the layer's activation ``x`` (zero outside), cast to ``dtype``."""
        zero = tvm.tirx.const(0, dtype)
        if self.op == "matmul":
            m, k = self.x_shape
            inside = tvm.tirx.all(pos < m, row < k)
            return te.if_then_else(inside, x[te.min(pos, m - 1), te.min(row, k - 1)].astype(dtype), zero)
        _, c, h, w = self.x_shape
        _, _, oh, ow = self.out_shape
        tap, ch = row // self.channels_padded, row % self.channels_padded
        kh, kw = tap // self.taps[1], tap % self.taps[1]
        b, rest = pos // (oh * ow), pos % (oh * ow)
        y = rest // ow * self.strides[0] - self.padding[0] + kh * self.dilation[0]
        z = rest % ow * self.strides[1] - self.padding[1] + kw * self.dilation[1]
        inside = tvm.tirx.all(pos < self.positions, row < self.rows, ch < c, y >= 0, y < h, z >= 0, z < w)
        value = x[_clamp(b, self.x_shape[0]), _clamp(ch, c), _clamp(y, h), _clamp(z, w)]
        return te.if_then_else(inside, value.astype(dtype), zero)

    def output(self, acc: Callable, dtype: str, name: str = "out") -> te.Tensor:
        """The layer's output tensor from ``acc(col, pos)`` (the accumulator, any dtype)."""
        if self.op == "matmul":
            return te.compute(self.out_shape, lambda i, j: acc(j, i).astype(dtype), name=name)
        _, _, oh, ow = self.out_shape
        return te.compute(
            self.out_shape, lambda b, o, y, z: acc(o, (b * oh + y) * ow + z).astype(dtype), name=name
        )

    # ------------------------------------------------------------ weights

    def _row_space(self, x: np.ndarray, per_tap: int) -> np.ndarray:
        """A term-layout array → (cols, taps · per_tap), taps outermost.

        ``x`` is (K', n) for matmul and (O, C', KH, KW) for conv; the grouped
        axis C' is zero-padded to ``per_tap`` entries.
        """
        if self.op == "matmul":
            x = x.T[:, None, :]  # (n, 1 tap, K')
        else:
            x = x.transpose(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])  # (O, taps, C')
        out = np.zeros((x.shape[0], x.shape[1], per_tap), x.dtype)
        out[:, :, : x.shape[2]] = x
        return out.reshape(x.shape[0], -1)

    def dense(self, term: NMTerm) -> np.ndarray:
        """The term as dense rows (cols, rows)."""
        return self._row_space(term.dense(), self.channels_padded)

    def compressed(self, term: NMTerm) -> tuple[np.ndarray, np.ndarray]:
        """The term's (values, uint8 indices), each (cols, rows / M, N): group-major per column."""
        per_tap = self.channels_padded // term.m * term.n
        shape = (self.cols, self.rows // term.m, term.n)
        return tuple(self._row_space(a, per_tap).reshape(shape) for a in (term.values, term.indices))

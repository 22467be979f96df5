"""Legalization of depthwise convs whose output rows no SIMD vector fits: computed on wider, contiguous rows.

Where it belongs: ``LegalizeOps(customize_legalize_map=…)`` of the CPU
pipeline (``tvm_tasd.pipeline.fusion_passes``), beside
:mod:`~schedules.llvm_fast_math`. The TASD rewrite leaves depthwise convs to
TVM; :class:`~schedules.llvm_default.Window` then vectorises each output row
with the widest vector that divides it, and every tap loads one input
vector per output vector. Two shapes defeat that (both in
EfficientNet-Lite0):

* **Ragged rows** — rows of 7, 14 or 28 outputs get vectors of 7 lanes,
  which LLVM splits into pieces for every tap's load and FMA. The conv is
  computed on rows a whole number of 256-bit vectors wide (more zero
  padding on the right), then sliced back to the real width; ``FuseOps``
  fuses the slice into the conv's function with the epilogue.
* **Strided rows** (stride 2 along the row) — a tap's inputs for one output
  vector lie every other column: a strided load, element by element. Each
  image's padded input is split once into ``stride`` planes of every
  stride-th column (the *phases*), so a tap reads one contiguous vector of
  one phase; rows are widened as above.

Measured alone (AVX2, 2 threads, 16 images, conv + bias + ReLU6, TVM's
legalization → this one): 672 channels 5×5 on 14×14 2.74 → 1.15 ms, 240
5×5 on 28×28 2.99 → 1.52, 1152 5×5 on 7×7 0.91 → 0.55, 480 3×3 on 14×14
0.55 → 0.38; stride 2: 96 3×3 on 112×112 5.55 → 4.32, 144 5×5 on 56×56 4.17 →
2.38, 240 3×3 on 28×28 0.62 → 0.52, 672 5×5 on 14×14 1.21 → 0.83. Not handled
(TVM's legalization): dilated strided convs, grouped convs that are not
depthwise, other layouts, symbolic shapes, and rows where widening would
compute more than a quarter more.
"""

from __future__ import annotations

import tvm
from tvm import relax, te, tirx

from .llvm_common import CPUShape

#: Bits of the vector a widened row is a whole number of: AVX2's register. Wider AVX-512 registers would
#: double a 7-wide row's work, where a 256-bit vector adds an eighth.
ROW_VECTOR_BITS = 256
#: Most columns a widened row may compute per real output column.
MAX_WIDENING = 1.25


class _Depthwise:
    """The static facts of a depthwise conv call this legalization needs."""

    def __init__(self, call: relax.Call):
        attrs = call.attrs
        self.channels, self.height, self.width = (int(d) for d in call.args[0].ty.shape.values[1:])
        self.window_h, self.window_w = (int(d) for d in call.args[1].ty.shape.values[2:])
        self.out_width = int(call.ty.shape.values[3])
        self.stride_h, self.stride_w = (int(s) for s in attrs.strides)
        self.dilation = tuple(int(d) for d in attrs.dilation)
        self.padding = tuple(int(p) for p in attrs.padding)
        self.dtype = str(call.ty.dtype)

    @staticmethod
    def of(call: relax.Call) -> "_Depthwise | None":
        attrs = call.attrs
        layouts = (attrs.data_layout, attrs.kernel_layout, attrs.out_layout or attrs.data_layout)
        types = (call.args[0].ty, call.args[1].ty, call.ty)
        if layouts != ("NCHW", "OIHW", "NCHW") or not all(isinstance(t.shape, relax.ShapeExpr) for t in types):
            return None
        if not all(isinstance(d, tvm.tirx.IntImm) for t in types for d in t.shape.values):
            return None
        conv = _Depthwise(call)
        return conv if int(attrs.groups) == conv.channels > 1 else None

    def widened(self, lanes: int) -> int | None:
        """The output width to compute at (a multiple of ``lanes``), or None where that is no gain."""
        width = -(-self.out_width // lanes) * lanes
        if self.stride_w == 1:
            return width if self.out_width < width <= MAX_WIDENING * self.out_width else None
        return width if self.dilation == (1, 1) and width <= MAX_WIDENING * self.out_width else None

    def phased_compute(self, width: int):
        """TE of the strided conv on output rows ``width`` wide, reading ``stride_w`` phase planes."""
        top, left = self.padding[:2]
        sh, sw, kh, kw = self.stride_h, self.stride_w, self.window_h, self.window_w
        rows = (self.height + sum(self.padding[0::2]) - kh) // sh + 1
        plane_rows, plane_cols = (rows - 1) * sh + kh, width + (kw - 1) // sw

        def compute(x: te.Tensor, w: te.Tensor) -> te.Tensor:
            def pad(b, c, row, column):
                y, x_ = row - top, column - left
                inside = tirx.all(y >= 0, y < self.height, x_ >= 0, x_ < self.width)
                return tirx.if_then_else(inside, x[b, c, y, x_], tirx.const(0, x.dtype))

            # padding and phase split as two passes: the split is then a plain strided copy, which LLVM
            # vectorises (one conditional pass doing both measured 1.2–1.6× slower on 28- to 112-wide rows)
            padded = te.compute((x.shape[0], self.channels, plane_rows, plane_cols * sw), pad, name="pad_temp")
            phases = te.compute((x.shape[0], self.channels, plane_rows, sw, plane_cols),
                                lambda b, c, row, phase, column: padded[b, c, row, column * sw + phase],
                                name="phases")
            dy, dx = te.reduce_axis((0, kh), "dy"), te.reduce_axis((0, kw), "dx")
            return te.compute(
                (x.shape[0], self.channels, rows, width),
                lambda b, c, oy, ox: te.sum(
                    (phases[b, c, oy * sh + dy, dx % sw, ox + dx // sw] * w[c, 0, dy, dx]).astype(self.dtype),
                    axis=[dy, dx]),
                name="group_conv2d_nchw")

        return compute


def depthwise_row_legalizations(target: tvm.target.Target) -> dict:
    """``{"relax.nn.conv2d": legalization}`` for ``LegalizeOps(customize_legalize_map=…)`` on ``target``."""
    cpu = CPUShape.of(target)
    default = tvm.ir.Op.get("relax.nn.conv2d").get_attr("FLegalize")
    slice_legalization = tvm.ir.Op.get("relax.strided_slice").get_attr("FLegalize")

    def lanes(dtype: str) -> int:
        return max(1, min(cpu.vector_bits, ROW_VECTOR_BITS) // tvm.runtime.DataType(dtype).bits)

    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        conv = _Depthwise.of(call)
        widened = conv.widened(lanes(conv.dtype)) if conv else None
        if widened is None:
            return default(bb, call)
        if conv.stride_w == 1:
            top, left, bottom, right = conv.padding
            attrs = call.attrs
            wide = bb.normalize(relax.op.nn.conv2d(
                call.args[0], call.args[1], strides=attrs.strides,
                padding=(top, left, bottom, right + widened - conv.out_width), dilation=attrs.dilation,
                groups=attrs.groups, out_dtype=attrs.out_dtype))
            computed = bb.emit(default(bb, wide))
        else:
            computed = bb.emit(bb.call_te(conv.phased_compute(widened), *call.args[:2], primfunc_name_hint="conv2d"))
        sliced = bb.normalize(relax.op.strided_slice(computed, axes=[3], begin=[0], end=[conv.out_width]))
        return slice_legalization(bb, sliced)

    return {"relax.nn.conv2d": legalize}

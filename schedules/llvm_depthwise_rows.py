"""Legalization of depthwise convs on rows no SIMD vector fits: computed on wider rows, the extra columns dropped.

Where it belongs: ``LegalizeOps(customize_legalize_map=…)`` of the CPU
pipeline (``tvm_tasd.pipeline.fusion_passes``), beside
:mod:`~schedules.llvm_fast_math`. The TASD rewrite leaves depthwise convs to
TVM; :class:`~schedules.llvm_default.Window` then vectorises each output row
with the widest vector that divides it. EfficientNet-Lite0's rows of 7, 14
and 28 outputs get vectors of 7 lanes, which LLVM splits into pieces for
every tap's load and FMA. Here a stride-1 depthwise conv (``groups`` = its
input channels, NCHW) whose output width no 256-bit vector divides is
legalized as the same conv with more zero padding on the right — its output
rows a whole number of such vectors — followed by a slice back to the real
width, which ``FuseOps`` fuses into the conv's function with the epilogue.
Measured alone (AVX2, 2 threads, 16 images, conv + bias + ReLU6; vectors of
7 → rows widened to 8/16/32): 672 channels 5×5 on 14×14 2.74 → 1.15 ms,
240 5×5 on 28×28 2.99 → 1.52, 1152 5×5 on 7×7 0.91 → 0.55, 480 3×3 on
14×14 0.55 → 0.38. Not handled (TVM's legalization): strided convs (their
row vectors would be strided loads; widened they measured 0.85–0.92× as
fast), grouped convs that are not depthwise, other layouts, symbolic
shapes, and rows where widening would compute more than a quarter more.
"""

from __future__ import annotations

import tvm
from tvm import relax

from .llvm_common import CPUShape

#: Bits of the vector a widened row is a whole number of: AVX2's register. Wider AVX-512 registers would
#: double a 7-wide row's work, where a 256-bit vector adds an eighth.
ROW_VECTOR_BITS = 256
#: Most columns a widened row may compute per real output column.
MAX_WIDENING = 1.25


def _widened_width(call: relax.Call, lanes_of) -> int | None:
    """The output width to compute a depthwise conv at, or None where TVM's own legalization stays."""
    attrs = call.attrs
    x, w, out = call.args[0].ty, call.args[1].ty, call.ty
    layouts = (attrs.data_layout, attrs.kernel_layout, attrs.out_layout or attrs.data_layout)
    if layouts != ("NCHW", "OIHW", "NCHW") or not all(isinstance(t.shape, relax.ShapeExpr) for t in (x, w, out)):
        return None
    dims = [d for t in (x, out) for d in t.shape.values]
    if not all(isinstance(d, tvm.tirx.IntImm) for d in dims):
        return None
    channels, width = int(x.shape.values[1]), int(out.shape.values[3])
    if int(attrs.groups) != channels or channels == 1 or int(attrs.strides[1]) != 1:
        return None
    lanes = lanes_of(str(out.dtype))
    widened = -(-width // lanes) * lanes
    return widened if width < widened <= MAX_WIDENING * width else None


def depthwise_row_legalizations(target: tvm.target.Target) -> dict:
    """``{"relax.nn.conv2d": legalization}`` for ``LegalizeOps(customize_legalize_map=…)`` on ``target``."""
    cpu = CPUShape.of(target)
    default = tvm.ir.Op.get("relax.nn.conv2d").get_attr("FLegalize")

    def lanes_of(dtype: str) -> int:
        return max(1, min(cpu.vector_bits, ROW_VECTOR_BITS) // tvm.runtime.DataType(dtype).bits)

    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        widened = _widened_width(call, lanes_of)
        if widened is None:
            return default(bb, call)
        attrs = call.attrs
        top, left, bottom, right = (int(p) for p in attrs.padding)
        wide = bb.normalize(relax.op.nn.conv2d(
            call.args[0], call.args[1], strides=attrs.strides,
            padding=(top, left, bottom, right + widened - int(call.ty.shape.values[3])),
            dilation=attrs.dilation, groups=attrs.groups, data_layout=attrs.data_layout,
            kernel_layout=attrs.kernel_layout, out_layout=attrs.out_layout, out_dtype=attrs.out_dtype))
        conv = bb.emit(default(bb, wide))
        sliced = bb.normalize(relax.op.strided_slice(conv, axes=[3], begin=[0], end=[call.ty.shape.values[3]]))
        return tvm.ir.Op.get("relax.strided_slice").get_attr("FLegalize")(bb, sliced)

    return {"relax.nn.conv2d": legalize}

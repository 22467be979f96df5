"""Legalizations of GELU and softmax with TVM's fast ``erf``/``exp`` approximations, for the CPU.

TVM legalizes ``relax.nn.gelu`` with ``tirx.erf`` and softmax with
``tirx.exp``; on LLVM both become one libm call per element, which no
schedule can vectorise (a MiniLM-L6 GELU of 320 × 1536 takes ~15× longer than
with ``topi.fast_erf``). These legalizations use TVM's own polynomial
approximations (``topi.fast_erf``, ``topi.nn.fast_softmax``) for float32, as
onnxruntime's CPU kernels do with theirs; other dtypes keep TVM's
legalization. :func:`fast_math_legalizations` is what ``LegalizeOps`` takes
as ``customize_legalize_map``; the numerics are tested against numpy
(``tests/test_default_schedules.py``) and, in whole models, onnxruntime.
"""

from __future__ import annotations

import tvm
from tvm import relax, te, tirx, topi


def _default(op: str):
    return tvm.ir.Op.get(op).get_attr("FLegalize")


def _gelu(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    if str(call.args[0].ty.dtype) != "float32":
        return _default("relax.nn.gelu")(bb, call)

    def te_gelu(x: te.Tensor) -> te.Tensor:
        half = tirx.const(0.5, "float32")
        erf = topi.fast_erf(topi.multiply(x, tirx.const(0.5**0.5, "float32")))
        return te.compute(x.shape, lambda *i: x(*i) * (half + erf(*i) * half), name="gelu")

    return bb.call_te(te_gelu, call.args[0], primfunc_name_hint="gelu")


def _softmax(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    if str(call.args[0].ty.dtype) != "float32":
        return _default("relax.nn.softmax")(bb, call)
    return bb.call_te(topi.nn.fast_softmax, call.args[0], call.attrs.axis, primfunc_name_hint="softmax")


def fast_math_legalizations() -> dict:
    """``{op name: legalization}`` for ``relax.transform.LegalizeOps(customize_legalize_map=…)``."""
    return {"relax.nn.gelu": _gelu, "relax.nn.softmax": _softmax}

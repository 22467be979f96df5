"""PropagateBlockedLayout: keep a CNN in blocked channels (NCHW{L}c) between its convs.

Where it belongs: right after the TASD rewrite, before ``LegalizeOps``
(:func:`tvm_tasd.transform.rewrite_layers` runs it when it emits blocked
kernels; on a module without them it changes nothing). With
``blocked_channels`` the rewrite runs each dense pointwise and depthwise conv
of a CPU build as a kernel of :mod:`~schedules.llvm_blocked`, between a
``to_blocked`` of its input and a ``from_blocked`` of its output (functions
marked ``tasd.layout``: :class:`LayoutTransforms`). Alone, each conv would pay
two transposes; this pass removes those between blocked ops and carries the
blocked layout through the ops that sit between convs:

* ``to_blocked(from_blocked(z))`` → ``z``, and a second ``to_blocked(x)`` → the first;
* ``add``/``subtract``/``multiply``/``maximum``/``minimum`` whose operands are
  values available blocked (a residual add), scalars or per-channel
  (B, C, 1, 1) values (a squeeze-and-excitation scale, a constant scale or
  shift; made blocked), a
  ``divide`` by a non-zero scalar constant, and ``clip``/``relu`` (also an
  ONNX ``Clip`` as imported: ``maximum``/``minimum`` kernels) of one → the
  same op on the blocked values;
* a ``mean`` over the plane (global average pooling), max and average
  pooling → the same on the blocked value;
* a flattened value read by a dense matmul kernel (a classifier after a
  flatten) → the blocked value flattened as it is, the kernel's constant
  weight rows permuted to match (kernels marked :data:`WEIGHT_K_AXIS_ATTR`;
  not where padding channels would enter the flattened row).

Each op carried over gets a ``from_blocked`` of its result for readers that
need NCHW; dead-code elimination drops the ones nobody reads, so transforms
remain only where a chain of blocked ops meets the rest of the network (the
stem, an N:M conv layer, the classifier). The channels that pad C up to a
multiple of L need not stay zero: every blocked kernel reads them through
zero weights, and ``from_blocked`` drops them.

Not handled (the value goes back to NCHW there): elementwise ops with an
operand that is neither blocked, a scalar nor one value per channel, other
activation functions (sigmoid, GELU), concatenation, other reshapes.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from .matcher import LayerMatcher, static_shape
from .schedules.llvm_blocked import from_blocked_func, to_blocked, to_blocked_func
from .schedules.nm_pack import ceil_div

#: The attribute that marks the layout transforms' functions (value ``to_blocked`` or ``from_blocked``).
LAYOUT_ATTR = "tasd.layout"
TO_BLOCKED, FROM_BLOCKED = "to_blocked", "from_blocked"
#: Elementwise ops that run on blocked values as they are (scalar constants broadcast alike in any layout).
ELEMENTWISE_OPS = frozenset(f"relax.{name}" for name in ("add", "subtract", "multiply", "divide", "maximum",
                                                          "minimum", "clip", "nn.relu"))
DIVIDE_OP = "relax.divide"
MEAN_OP = "relax.mean"
#: Window pooling: TVM's pooling takes a blocked layout as it is (``NCHW16c``).
POOL_OPS = {"relax.nn.max_pool2d": relax.op.nn.max_pool2d, "relax.nn.avg_pool2d": relax.op.nn.avg_pool2d}
CALL_TIR_OP = "relax.call_tir"
RESHAPE_OP = "relax.reshape"
#: Marks a layer kernel whose constant weight (its second operand) may have its k axis — the attribute's value —
#: permuted as its input's columns are (a dense matmul).
WEIGHT_K_AXIS_ATTR = "tasd.weight_k_axis"


class LayoutTransforms:
    """Emits calls into and out of blocked channels, one function per shape added to ``builder``'s module."""

    def __init__(self, builder: relax.BlockBuilder):
        self.builder = builder

    def _call(self, func: tvm.tirx.PrimFunc, kind: str, x: relax.Expr, shape, dtype: str, nchw, lanes: int):
        # one function per NCHW shape and L; no ``tasd_`` prefix: an ordinary op, which tuning may schedule
        name = f"{kind}_{'x'.join(map(str, nchw))}_{lanes}c"
        gvar = self.builder.add_func(func.with_attrs({LAYOUT_ATTR: kind, "global_symbol": name}), name)
        return relax.call_tir(gvar, [x], relax.TensorType(shape, dtype))

    def to_blocked(self, x: relax.Expr, lanes: int) -> relax.Call:
        """``x`` (B, C, H, W) → (B, ⌈C/L⌉, H, W, L)."""
        batch, channels, height, width = static_shape(x)
        dtype = str(x.ty.dtype)
        shape = (batch, ceil_div(channels, lanes), height, width, lanes)
        return self._call(to_blocked_func(static_shape(x), lanes, dtype), TO_BLOCKED, x, shape, dtype,
                          static_shape(x), lanes)

    def from_blocked(self, z: relax.Expr, channels: int) -> relax.Call:
        """``z`` (B, ⌈C/L⌉, H, W, L) → (B, ``channels``, H, W)."""
        batch, _, height, width, lanes = static_shape(z)
        dtype, shape = str(z.ty.dtype), (batch, channels, height, width)
        return self._call(from_blocked_func(static_shape(z), channels, dtype), FROM_BLOCKED, z, shape, dtype, shape,
                          lanes)


def layout_transform(mod: tvm.IRModule, expr: relax.Expr) -> str | None:
    """``to_blocked``/``from_blocked`` where ``expr`` calls one of :class:`LayoutTransforms`' functions."""
    if _op_name(expr) != CALL_TIR_OP:
        return None
    func = mod[expr.args[0]]
    return None if func.attrs is None or LAYOUT_ATTR not in func.attrs else str(func.attrs[LAYOUT_ATTR])


@tvm.transform.module_pass(opt_level=0, name="PropagateBlockedLayout")
class PropagateBlockedLayout:
    """Remove the layout transforms between blocked ops of ``main`` and carry the blocked layout through the
    residual adds, activations and global pooling between them (module docstring)."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return relax.transform.DeadCodeElimination(["main"])(_Propagator(mod).rewrite())


def _op_name(expr) -> str | None:
    return expr.op.name if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) else None


def _nonzero_scalar_constant(expr) -> bool:
    return isinstance(expr, tvm.ir.Constant) and expr.value.numpy().ndim == 0 and expr.value.numpy() != 0


def _broadcasts(arg, shape) -> bool:
    """Whether the 4-D ``arg`` broadcasts to ``shape`` keeping its channels (then so do the blocked values)."""
    arg_shape = static_shape(arg)
    return (arg_shape is not None and len(arg_shape) == 4 and arg_shape[1] == shape[1]
            and all(a in (s, 1) for a, s in zip(arg_shape, shape)))


def _per_channel(arg_shape, shape) -> bool:
    """Whether a 4-D operand of ``arg_shape`` holds one value per channel (and image) of ``shape``."""
    return arg_shape[0] in (1, shape[0]) and arg_shape[1] == shape[1] and tuple(arg_shape[2:]) == (1, 1)


@relax.expr_functor.mutator
class _Propagator(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.mod = mod
        self.transforms = LayoutTransforms(self.builder_)
        self.matcher = LayerMatcher(mod)  # sees ONNX's Clip through its import (maximum/minimum kernels)
        self.blocked: dict[relax.Var, relax.Var] = {}  # an NCHW value → the same value in blocked channels

    def rewrite(self) -> tvm.IRModule:
        self.builder_.update_func(self.mod.get_global_var("main"), self.visit_expr(self.mod["main"]))
        return self.builder_.get()

    def visit_var_binding_(self, binding):
        value = self.visit_expr(binding.value)
        self.matcher.remember(binding.var, value)
        layout = layout_transform(self.builder_.get(), value)
        source = value.args[1][0] if layout is not None else None
        if layout == TO_BLOCKED and isinstance(binding.var, relax.DataflowVar) and self._blocked_as(source, value):
            self.set_var_remap(binding.var, self.blocked[source])
            return
        folded = self._flatten_folded(value)
        value = value if folded is None else folded
        carried = None if layout is not None else self._carried(value)
        if carried is not None:
            source = self.builder_.emit(carried)
            value = self.transforms.from_blocked(source, static_shape(binding.var)[1])
            layout = FROM_BLOCKED
        self.builder_.emit_normalized(relax.VarBinding(binding.var, self.builder_.normalize(value)))
        if layout == FROM_BLOCKED:
            self.blocked[binding.var] = source
        elif layout == TO_BLOCKED and isinstance(source, relax.Var):  # later convs of the same input reuse it
            self.blocked[source] = binding.var

    def _blocked_as(self, var, to_blocked: relax.Call) -> bool:
        """Whether ``var`` is available blocked in the shape ``to_blocked`` makes."""
        known = self.blocked.get(var)
        return known is not None and static_shape(known) == static_shape(to_blocked)

    def _flatten_folded(self, value) -> relax.Call | None:
        """A weight-permutable kernel call on ``reshape(x, (B, C·H·W))`` of an x available blocked, as the same
        kernel on the blocked value flattened, its weight's k axis in the blocked order; else None."""
        func = self.builder_.get()[value.args[0]] if _op_name(value) == CALL_TIR_OP else None
        if func is None or func.attrs is None or WEIGHT_K_AXIS_ATTR not in func.attrs:
            return None
        flat, weight, *rest = value.args[1]
        reshape = self.matcher.bindings.get(flat)
        if _op_name(reshape) != RESHAPE_OP or reshape.args[0] not in self.blocked:
            return None
        if not isinstance(weight, tvm.ir.Constant):
            return None  # weights fed per run (calibration hooks) keep their order
        batch, channels, height, width = static_shape(reshape.args[0])
        z = self.blocked[reshape.args[0]]
        blocks, lanes = static_shape(z)[1], static_shape(z)[-1]
        if blocks * lanes != channels or static_shape(flat) != (batch, channels * height * width):
            return None
        # blocked row position (block, h, w, lane) ← NCHW row position ((block·L + lane)·H + h)·W + w
        order = np.arange(channels * height * width).reshape(blocks, lanes, height, width).transpose(0, 2, 3, 1)
        permuted = np.take(weight.value.numpy(), order.reshape(-1), axis=int(func.attrs[WEIGHT_K_AXIS_ATTR]))
        blocked_flat = self.builder_.emit(relax.op.reshape(z, static_shape(flat)))
        return relax.call_tir(value.args[0], [blocked_flat, relax.const(permuted), *rest], value.ty_args[0])

    def _carried(self, value) -> relax.Expr | None:
        """``value``'s op on the blocked operands, where it runs on them (module docstring), else None."""
        name = _op_name(value)
        if name == MEAN_OP:
            return self._mean(value)
        if name in POOL_OPS:
            return self._pool(value)
        bound = self.matcher.clip(value) if name == CALL_TIR_OP else None
        if bound is not None and bound[2] in self.blocked:
            kind, limit, x = bound
            return (relax.op.maximum if kind == "max" else relax.op.minimum)(
                self.blocked[x], relax.const(limit, str(x.ty.dtype)))
        shape = static_shape(value)
        if name not in ELEMENTWISE_OPS or shape is None or len(shape) != 4:
            return None
        if name == DIVIDE_OP and not _nonzero_scalar_constant(value.args[1]):
            return None  # a padding channel's 0 / 0 would poison the next conv through its zero weights
        blocked = [self.blocked[arg] for arg in value.args if arg in self.blocked and _broadcasts(arg, shape)]
        if not blocked:
            return None
        lanes = static_shape(blocked[0])[-1]
        args = [self._operand(arg, shape, lanes) for arg in value.args]
        return None if any(arg is None for arg in args) else relax.Call(value.op, args, value.attrs)

    def _operand(self, arg, shape, lanes: int) -> relax.Expr | None:
        """``arg`` as the blocked op reads it: its blocked value, a scalar as it is, a per-channel (B, C, 1, 1)
        operand (a squeeze-and-excitation scale, a constant scale or shift) made blocked; None where it is none
        of those."""
        if not isinstance(arg.ty, relax.TensorType) or static_shape(arg) == ():
            return arg
        if arg in self.blocked and _broadcasts(arg, shape):
            return self.blocked[arg]
        if isinstance(arg, tvm.ir.Constant):  # (C, 1, 1) broadcasts as (1, C, 1, 1)
            value = arg.value.numpy()
            if value.size == 1:
                return relax.const(value.reshape(()))
            value = value.reshape((1,) * (4 - value.ndim) + value.shape)
            return relax.const(to_blocked(value, lanes)) if _per_channel(value.shape, shape) else None
        arg_shape = static_shape(arg)
        if arg_shape is None or len(arg_shape) != 4 or not _per_channel(arg_shape, shape):
            return None
        return self.builder_.emit(self.transforms.to_blocked(arg, lanes))

    def _pool(self, value: relax.Call) -> relax.Expr | None:
        x, attrs = value.args[0], value.attrs
        if x not in self.blocked or attrs.layout != "NCHW" or attrs.out_layout != "NCHW":
            return None
        z = self.blocked[x]
        return POOL_OPS[_op_name(value)](z, attrs.pool_size, attrs.strides, attrs.padding, attrs.dilation,
                                         attrs.ceil_mode, attrs.count_include_pad,
                                         layout=f"NCHW{static_shape(z)[-1]}c")

    def _mean(self, value: relax.Call) -> relax.Expr | None:
        x = value.args[0]
        axes = sorted(int(a) % 4 for a in value.attrs.axis) if value.attrs.axis is not None else None
        if x not in self.blocked or axes != [2, 3] or not value.attrs.keepdims:
            return None
        return relax.op.mean(self.blocked[x], axis=[2, 3], keepdims=True)

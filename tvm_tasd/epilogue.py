"""Which ops after a layer its kernel absorbs: the bias add and the activation function that follow it.

The rewritten layers run as opaque kernels (``transform.KERNEL_ATTRS``):
``FuseOps`` cannot merge what follows them, so a bias add and an activation
after a layer would each cost one more pass over its output, in a function
of their own (after the conv batch-norm fold every PP-OCR conv is followed
by a bias and a hardswish or ReLU). :func:`find_epilogues` finds, in
``main``, a layer's output followed by

* ``add(y, b)`` with ``b`` a constant (bound, or a parameter the caller
  supplies; possibly reshaped) of one value per output channel — a conv's
  ``(1, O, 1, 1)``, a matmul's ``(N,)`` — then, optionally,
* an activation function of :data:`~schedules.llvm_common.OUTPUT_ACTIVATIONS`:
  ``relu``; ReLU6 (``relax.clip(y, 0, 6)``, or ONNX ``Clip`` imported as a
  ``maximum`` then a ``minimum`` kernel); hardswish, ``y · clip(y + 3, 0, 6) / 6``
  in either association;

or the activation alone; and after either, a 2 × 2 max pooling of stride 2
(LeNet's and VGG's conv → ReLU → pool), which a kernel may take too
(:attr:`Epilogue.pooled`: the blocked CPU convs). Every value between the
layer and the last absorbed op must be read by the chain only. The rewrite
emits the layer's kernel with the bias and activation (and pooling) in its
output stage, binds the kernel's output to the last op's variable and drops
the ops in between.

Not absorbed: activations outside that list (GELU, sigmoid, …), a bias
with values along another axis, anything a kernel family cannot apply in
its output stage (the tensorized ``nm_emulated`` and CUDA ``mma.sp`` N:M
kernels: :meth:`~schedules.selection.Kernels.takes_epilogue`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from .matcher import LAYER_OPS, LayerMatcher, static_shape


@dataclass(frozen=True)
class Epilogue:
    """What a layer's kernel applies to its output, and the bindings that computed it in the graph."""

    bias: np.ndarray | None  # one value per output channel
    activation: str | None  # a name of OUTPUT_ACTIVATIONS
    output: relax.Var  # the last absorbed op's variable: the kernel's output is bound to it
    absorbed: frozenset  # the variables of every absorbed op but ``output``: their bindings are dropped
    pooled: relax.Var | None = None  # a 2 × 2 / 2 max pooling, the one reader of ``output``, where one follows


@relax.expr_functor.visitor
class _Uses(relax.PyExprVisitor):
    """How often each variable of a function is read, and the bindings that read it."""

    def __init__(self):
        super().__init__()
        self.count: Counter = Counter()
        self.readers: dict = {}
        self._binding = None

    def visit_var_binding_(self, binding):
        self._binding = binding
        super().visit_var_binding_(binding)
        self._binding = None

    def _read(self, var):
        self.count[var] += 1
        if self._binding is not None:
            self.readers.setdefault(var, []).append(self._binding)

    def visit_var_(self, var):
        self._read(var)

    def visit_dataflow_var_(self, var):
        self._read(var)


def _op(binding) -> str:
    value = binding.value
    return value.op.name if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) else ""


def _number(expr) -> float | None:
    """The value of a ``relax.clip`` bound (a ``tirx`` immediate)."""
    return float(expr.value) if isinstance(expr, (tvm.tirx.IntImm, tvm.tirx.FloatImm)) else None


class _Chains:
    """Walks forward from a layer's output through the ops it can absorb."""

    def __init__(self, func: relax.Function, matcher: LayerMatcher):
        uses = _Uses()
        uses.visit_expr(func)
        self.count, self.readers, self.matcher = uses.count, uses.readers, matcher

    def only_reader(self, var):
        """The binding that is ``var``'s one read, if it is a dataflow variable read once."""
        if not isinstance(var, relax.DataflowVar) or self.count[var] != 1:
            return None
        return self.readers[var][0]

    def constant(self, expr) -> np.ndarray | None:
        """The value of a constant, also seen through a ``reshape`` (how an ONNX conv's bias arrives)."""
        value = self.matcher.constant_value(expr)
        bound = self.matcher.bindings.get(expr) if isinstance(expr, relax.Var) else None
        if value is None and isinstance(bound, relax.Call) and bound.op.name == "relax.reshape":
            inner, shape = self.matcher.constant_value(bound.args[0]), static_shape(expr)
            value = None if inner is None or shape is None else inner.reshape(shape)
        return value

    def _scalar_operand(self, binding, var, op: str) -> float | None:
        """c for ``op(var, c)`` (either order for add and multiply) with a constant scalar c."""
        if _op(binding) != op:
            return None
        a, b = binding.value.args
        orders = [(a, b), (b, a)] if op in ("relax.add", "relax.multiply") else [(a, b)]
        for x, c in orders:
            if x.same_as(var):
                value = self.constant(c)
                if value is not None and value.size == 1:
                    return float(value.reshape(()))
        return None

    def clip(self, var):
        """(lower, upper, output binding, bindings) of a clip that is ``var``'s only reader: ``relu``,
        ``relax.clip``, or the ``maximum``/``minimum`` kernels of an imported ONNX Clip."""
        first = self.only_reader(var)
        if first is None:
            return None
        if _op(first) == "relax.nn.relu":
            return 0.0, np.inf, first, [first]
        if _op(first) == "relax.clip" and first.value.args[0].same_as(var):
            low, high = (_number(a) for a in first.value.args[1:])
            return None if low is None or high is None else (low, high, first, [first])
        bound = self.matcher.clip(first.value) if isinstance(first.value, relax.Call) else None
        if bound is None or bound[0] != "max" or not bound[2].same_as(var):
            return None
        second = self.only_reader(first.var)
        upper = self.matcher.clip(second.value) if second is not None and isinstance(second.value, relax.Call) else None
        if upper is not None and upper[0] == "min" and upper[2].same_as(first.var):
            return bound[1], upper[1], second, [first, second]
        return bound[1], np.inf, first, [first]

    def activation(self, var):
        """(name, output binding, bindings) of an activation function of ``var``, or None."""
        clipped = self.clip(var)
        if clipped is not None:
            low, high, out, bindings = clipped
            name = {(0.0, np.inf): "relu", (0.0, 6.0): "relu6"}.get((low, high))
            return None if name is None else (name, out, bindings)
        return self._hardswish(var)

    def _hardswish(self, var):
        """``var · clip(var + 3, 0, 6) / 6``, as ``(var · clip) / 6`` or ``var · (clip / 6)``."""
        if not isinstance(var, relax.DataflowVar) or self.count[var] != 2:
            return None
        shifted = next((b for b in self.readers[var] if self._scalar_operand(b, var, "relax.add") == 3.0), None)
        if shifted is None:
            return None
        clipped = self.clip(shifted.var)
        if clipped is None or clipped[:2] != (0.0, 6.0):
            return None
        gate = clipped[2]
        product = next((b for b in self.readers[var] if b is not shifted), None)
        divided = self.only_reader(gate.var)
        if divided is not None and self._scalar_operand(divided, gate.var, "relax.divide") == 6.0:
            gate = divided  # var · (clip / 6)
        if _op(product) != "relax.multiply" or not any(
                a.same_as(var) and b.same_as(gate.var) for a, b in (product.value.args, product.value.args[::-1])):
            return None
        bindings = [shifted, *clipped[3], *([divided] if gate is divided else []), product]
        if gate is divided:
            return "hardswish", product, bindings
        out = self.only_reader(product.var)  # (var · clip) / 6
        if out is None or self._scalar_operand(out, product.var, "relax.divide") != 6.0:
            return None
        return "hardswish", out, [*bindings, out]

    def max_pool(self, var):
        """The binding of a 2 × 2 max pooling of stride 2 (NCHW, no padding) that is ``var``'s only reader."""
        reader = self.only_reader(var)
        if reader is None or _op(reader) != "relax.nn.max_pool2d":
            return None
        attrs = reader.value.attrs
        window = [[int(v) for v in values] for values in (attrs.pool_size, attrs.strides, attrs.padding,
                                                          attrs.dilation)]
        plain = attrs.layout == "NCHW" and attrs.out_layout == "NCHW" and not attrs.ceil_mode
        return reader if plain and window == [[2, 2], [2, 2], [0, 0, 0, 0], [1, 1]] else None

    def bias(self, var, channels: int, channel_axis: int, out_ndim: int, dtype: str):
        """(values, binding) of ``add(var, b)`` with one constant value of ``dtype`` per output channel."""
        reader = self.only_reader(var)
        if reader is None or _op(reader) != "relax.add":
            return None
        for x, b in (reader.value.args, reader.value.args[::-1]):
            value = self.constant(b) if x.same_as(var) else None
            if value is None or value.ndim > out_ndim or str(value.dtype) != dtype:
                continue
            aligned = (1,) * (out_ndim - value.ndim) + value.shape
            if aligned[channel_axis] == channels and value.size == channels:
                return value.reshape(channels), reader
        return None


def find_epilogues(func: relax.Function, matcher: LayerMatcher) -> dict:
    """``{layer's variable: Epilogue}`` for every matmul/conv2d binding of ``func`` followed by ops its kernel
    can absorb. ``matcher`` has remembered ``func``'s bindings (it resolves the constants)."""
    chains = _Chains(func, matcher)
    found = {}
    for block in func.body.blocks:
        for binding in block.bindings:
            if _op(binding) not in LAYER_OPS or not isinstance(binding.value.ty, relax.TensorType):
                continue
            out_ndim = len(binding.value.ty.shape.values) if binding.value.ty.shape is not None else 0
            if not out_ndim:
                continue
            axis = 1 if _op(binding) == "relax.nn.conv2d" else out_ndim - 1
            channels = binding.value.ty.shape.values[axis]
            if not isinstance(channels, tvm.tirx.IntImm):
                continue
            bindings, bias, end = [], None, binding
            added = chains.bias(binding.var, int(channels), axis, out_ndim, str(binding.value.ty.dtype))
            if added is not None:
                bias, end = added
                bindings.append(end)
            activation = chains.activation(end.var)
            name = None
            if activation is not None:
                name, end, more = activation
                bindings += more
            if bindings:
                absorbed = frozenset([binding.var, *(b.var for b in bindings)]) - {end.var}
                pooled = chains.max_pool(end.var) if axis == 1 else None
                found[binding.var] = Epilogue(bias, name, end.var, absorbed, None if pooled is None else pooled.var)
    return found

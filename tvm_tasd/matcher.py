"""Which Relax calls are TASD layers: the matcher that finds :class:`~tvm_tasd.layer.Layer` values in a module.

One place decides what the rewrite pass, the evaluators, the reports and
the search consider a layer, so they always agree:

* ``relax.matmul(x, W)`` with a constant 2-D W in (K, N) layout, or
  ``matmul(x, permute_dims(W))`` with W in (N, K) (Linear / Gemm transB=1);
  any batch rank on the activation side;
* ``relax.nn.conv2d`` NCHW/OIHW with a constant weight; groups ≠ 1 is found
  but marked ineligible (depthwise and grouped convs stay dense).

A weight is "constant" when it is a bound ``relax.Constant`` or a function
parameter whose value the caller supplies in ``params``. Shapes must be
static and dtypes float.

A layer is *ReLU-fed* (``Layer.relu_fed``) when its input is a ReLU's
(or a ReLU6's: ONNX ``Clip(x, 0, 6)``) output seen through ops that keep the
zeros (:data:`ZERO_PRESERVING`: layout changes, and max-pooling of
non-negative values; a multiply by a non-negative constant, as a folded
batch norm leaves) — where run-time activation series pay
(``docs/semantics.md`` §6). It is *smooth-fed* (``Layer.smooth_fed``) when
its input is a GELU's or a Swish's (``silu``, or ``x · sigmoid(x)``) output
seen through layout changes: few exact zeros, so an activation series there
drops small values (the paper's pseudo-density heuristic), which the search
must measure.
"""

from __future__ import annotations

import warnings

import numpy as np
import tvm
from tvm import relax

from .frontend import WEIGHT_NAMES_ATTR, fingerprint
from .layer import Layer
from .policy import TASDWarning

_FLOAT_DTYPES = ("float16", "float32", "float64", "bfloat16")
LAYER_OPS = ("relax.matmul", "relax.nn.conv2d")
#: Ops that keep a ReLU output's zeros: layout changes, and max over non-negatives.
ZERO_PRESERVING = frozenset(
    {"relax.reshape", "relax.permute_dims", "relax.squeeze", "relax.expand_dims", "relax.flatten", "relax.nn.max_pool2d"}
)
#: Smooth activations whose outputs take activation series by pseudo-density (``Layer.smooth_fed``).
SMOOTH_ACTIVATIONS = frozenset({"relax.nn.gelu", "relax.nn.gelu_tanh", "relax.nn.silu"})


def static_shape(expr) -> tuple[int, ...] | None:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    dims = []
    for dim in ty.shape.values:
        if not isinstance(dim, tvm.tirx.IntImm):
            return None
        dims.append(int(dim.value))
    return tuple(dims)


class LayerMatcher:
    """Recognises layer calls and names them; shared by discovery and rewrite.

    Names: the parameter name (weights as inputs), else the source name from
    the module's fingerprint map (equal-valued weights named by the order
    they are used in), else ``{op}_{index}``; duplicates (a weight used
    twice) get ``#2``, ``#3``… in program order.
    """

    def __init__(self, mod: tvm.IRModule, params: dict[str, np.ndarray] | None = None):
        self.params = dict(params or {})
        attrs = mod.attrs
        recorded = attrs[WEIGHT_NAMES_ATTR] if attrs is not None and WEIGHT_NAMES_ATTR in attrs else {}
        self.source_names = {str(key): [str(name) for name in names] for key, names in recorded.items()}
        self._source_uses: dict[str, int] = {}
        self.bindings: dict = {}  # var → bound value, to see through permute_dims bindings
        self._seen: dict[str, int] = {}
        self._count = 0

    def remember(self, var, value) -> None:
        self.bindings[var] = value

    def _resolve(self, expr):
        while isinstance(expr, relax.Var) and expr in self.bindings:
            expr = self.bindings[expr]
        return expr

    def _constant(self, expr) -> tuple[np.ndarray, str | None] | None:
        value = self.constant_value(expr)
        if value is None:
            return None
        expr = self._resolve(expr)
        if isinstance(expr, tvm.ir.Constant):
            return value, self._source_name(fingerprint(value))
        declared = static_shape(expr)
        if declared is not None and value.shape != declared:
            raise ValueError(f"params[{expr.name!r}] has shape {value.shape}; the module's input has {declared}")
        return value, expr.name

    def _producers(self, expr):
        """The calls that produce ``expr``, newest first: seen back through :data:`ZERO_PRESERVING` ops and
        clips, the walk ends with the first other call."""
        while isinstance(expr, relax.Var) and expr in self.bindings:
            value = self.bindings[expr]
            if not isinstance(value, relax.Call):
                return
            if isinstance(value.op, tvm.ir.Op) and value.op.name in ZERO_PRESERVING:
                expr = value.args[0]
                continue
            scaled = self._scaled_by_nonnegative(value)
            if scaled is not None:
                expr = scaled
                continue
            yield value
            clip = self.clip(value)
            if clip is None:
                return
            expr = clip[2]

    def fed_by_relu(self, expr) -> bool:
        """Whether ``expr`` is a ReLU's output, seen through :data:`ZERO_PRESERVING` ops.

        ReLU6 counts (ONNX ``Clip(x, 0, 6)``, imported as ``maximum(x, 0)`` then ``minimum(·, 6)``
        TE kernels): a lower clip at 0 makes the zeros, an upper clip above 0 keeps them."""
        for call in self._producers(expr):
            clip = self.clip(call)
            if clip is None:
                return isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.relu"
            bound_kind, bound, _ = clip
            if bound_kind == "max" or not bound > 0:
                return bound_kind == "max" and bound == 0
        return False

    def fed_by_smooth(self, expr) -> bool:
        """Whether ``expr`` is a GELU's or a Swish's output, seen through layout changes."""
        call = next(self._producers(expr), None)
        return (call is not None and isinstance(call.op, tvm.ir.Op)
                and (call.op.name in SMOOTH_ACTIVATIONS or self._is_swish(call)))

    def _feeding(self, x, shift_shape: tuple[int, ...]) -> dict:
        """Layer fields saying what feeds input ``x``: ``relu_fed``, ``smooth_fed``, ``input_shift``. An input
        ``add(y, c)`` with y ReLU-fed and c one constant per channel (``shift_shape``, a folded batch norm's
        shift: :mod:`tvm_tasd.batchnorm_fold`) is ReLU-fed with ``input_shift`` c."""
        value = self._resolve(x)
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name == "relax.add":
            for y, c in (value.args, value.args[::-1]):
                shift = self.constant_value(c)
                if (shift is not None and shift.size == int(np.prod(shift_shape))
                        and shift.shape[-len(shift_shape):] == shift_shape[-shift.ndim:] and self.fed_by_relu(y)):
                    return {"relu_fed": True, "smooth_fed": False, "input_shift": shift.reshape(shift_shape)}
        return {"relu_fed": self.fed_by_relu(x), "smooth_fed": self.fed_by_smooth(x)}

    def constant_value(self, expr) -> np.ndarray | None:
        """The value of a bound constant or of a parameter the caller supplies, without naming it."""
        expr = self._resolve(expr)
        if isinstance(expr, tvm.ir.Constant):
            return expr.value.numpy()
        if isinstance(expr, relax.Var) and expr.name in self.params:
            return np.asarray(self.params[expr.name])
        return None

    def _scaled_by_nonnegative(self, call):
        """x for ``multiply(x, c)`` (either order) with a constant c ≥ 0 — a folded batch norm's scale
        (:mod:`tvm_tasd.batchnorm_fold`) keeps zeros and signs; else None."""
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.multiply"):
            return None
        for x, c in (call.args, call.args[::-1]):
            value = self.constant_value(c)
            if value is not None and (value >= 0).all():
                return x
        return None

    def _is_swish(self, call) -> bool:
        """``multiply(x, sigmoid(x))`` in either order."""
        if call.op.name != "relax.multiply":
            return False
        for x, gate in (call.args, call.args[::-1]):
            gate = self._resolve(gate)
            if (isinstance(gate, relax.Call) and isinstance(gate.op, tvm.ir.Op) and gate.op.name == "relax.sigmoid"
                    and gate.args[0].same_as(x)):
                return True
        return False

    def clip(self, call):
        """("max", lower bound, x) for ``maximum(x, c)``, ("min", upper bound, x) for ``minimum(x, c)`` with a
        constant scalar c, as the ONNX importer emits Clip; else None."""
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.call_tir"):
            return None
        name = call.args[0].name_hint if isinstance(call.args[0], tvm.ir.GlobalVar) else ""
        kind = "max" if name.startswith("maximum") else "min" if name.startswith("minimum") else None
        args = call.args[1].fields if isinstance(call.args[1], relax.Tuple) else ()
        if kind is None or len(args) != 2:
            return None
        bound = self._scalar(args[1])
        return None if bound is None else (kind, bound, args[0])

    def _scalar(self, expr) -> float | None:
        """The value of a constant scalar, seen through ``where(isnan(c), ±inf, c)`` as Clip's import writes it."""
        expr = self._resolve(expr)
        if isinstance(expr, tvm.ir.Constant) and expr.value.numpy().size == 1:
            return float(expr.value.numpy().reshape(()))
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == "relax.where":
            cond = self._resolve(expr.args[0])
            if isinstance(cond, relax.Call) and isinstance(cond.op, tvm.ir.Op) and cond.op.name == "relax.isnan":
                tested = self._scalar(cond.args[0])
                if tested is not None:
                    return self._scalar(expr.args[1] if np.isnan(tested) else expr.args[2])
        return None

    def _source_name(self, key: str) -> str | None:
        """The next name recorded for this content: equal-valued weights are named in order of use."""
        names = self.source_names.get(key)
        if not names:
            return None
        used = self._source_uses.get(key, 0)
        self._source_uses[key] = used + 1
        return names[min(used, len(names) - 1)]

    def _weight(self, expr):
        """(array, layout axis, name) for W or permute_dims(W); None if not constant."""
        found = self._constant(expr)
        if found is not None:
            value, name = found
            return value, 0, name
        inner = self._resolve(expr)
        if isinstance(inner, relax.Call) and inner.op.name == "relax.permute_dims":
            axes = inner.attrs.axes
            if axes is None or [int(a) for a in axes] == [1, 0]:
                found = self._constant(inner.args[0])
                if found is not None and found[0].ndim == 2:
                    value, name = found
                    return value, 1, name
        return None

    def _name(self, op: str, source: str | None) -> str:
        base = source or f"{op}_{self._count}"
        self._count += 1
        self._seen[base] = self._seen.get(base, 0) + 1
        return base if self._seen[base] == 1 else f"{base}#{self._seen[base]}"

    def match(self, call) -> Layer | None:
        """The Layer for a matmul/conv2d call with a constant weight, else None."""
        if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op):
            return None
        if call.op.name == LAYER_OPS[0]:
            return self._matmul(call)
        if call.op.name == LAYER_OPS[1]:
            return self._conv2d(call)
        return None

    def _matmul(self, call) -> Layer | None:
        weight = self._weight(call.args[1])
        if weight is None or weight[0].ndim != 2:
            return None
        value, axis, source = weight
        name = self._name("matmul", source)
        x_shape = static_shape(call.args[0])
        k = value.shape[axis]
        n = value.shape[1 - axis]
        dtype = str(call.args[0].ty.dtype)
        problem = _problem(x_shape, dtype, value)
        m = int(np.prod(x_shape[:-1], dtype=np.int64)) if x_shape else 0
        return Layer(name, "matmul", value, axis, m, k, n, x_shape or (), dtype, problem,
                     **self._feeding(call.args[0], (k,)))

    def _conv2d(self, call) -> Layer | None:
        found = self._constant(call.args[1])
        if found is None:
            return None
        value, source = found
        name = self._name("conv2d", source)
        attrs = call.attrs
        x_shape = static_shape(call.args[0])
        out_shape = static_shape(call)
        dtype = str(call.args[0].ty.dtype)
        problem = _problem(x_shape, dtype, value)
        if attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW":
            problem = problem or f"layout {attrs.data_layout}/{attrs.kernel_layout}: only NCHW/OIHW is rewritten"
        if int(attrs.groups) != 1:
            kind = "depthwise" if int(attrs.groups) == value.shape[0] else "grouped"
            problem = problem or f"{kind} conv (groups={int(attrs.groups)}): left dense"
        conv = {
            "strides": [int(s) for s in attrs.strides],
            "padding": [int(p) for p in attrs.padding],
            "dilation": [int(d) for d in attrs.dilation],
            "groups": int(attrs.groups),
        }
        o, i, kh, kw = value.shape
        m = out_shape[0] * out_shape[2] * out_shape[3] if out_shape else 0
        return Layer(name, "conv2d", value, 1, m, i * kh * kw, o, x_shape or (), dtype, problem, conv,
                     **self._feeding(call.args[0], (i, 1, 1)))


def _problem(x_shape, dtype, weight) -> str | None:
    if x_shape is None:
        return "dynamic activation shape: left dense (import with fixed input shapes)"
    if dtype not in _FLOAT_DTYPES or weight.dtype.name not in _FLOAT_DTYPES:
        return f"dtype {dtype}/{weight.dtype}: only float layers are decomposed"
    return None


@relax.expr_functor.visitor
class _Collector(relax.PyExprVisitor):
    def __init__(self, matcher: LayerMatcher):
        super().__init__()
        self.matcher = matcher
        self.layers: list[Layer] = []

        self.calls = 0  # every matmul/conv2d, layer or not

    def visit_var_binding_(self, binding):
        self.matcher.remember(binding.var, binding.value)
        value = binding.value
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name in LAYER_OPS:
            self.calls += 1
        layer = self.matcher.match(value)
        if layer is not None:
            self.layers.append(layer)
        super().visit_var_binding_(binding)


def find_layers(mod: tvm.IRModule, params: dict[str, np.ndarray] | None = None) -> list[Layer]:
    """Every matmul/conv2d layer with a constant weight in ``main``, in program order.

    A module with matmul/conv2d calls but no layer (weights computed at run
    time, or given as inputs without ``params``) gets a :class:`~tvm_tasd.policy.TASDWarning`.
    """
    if "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
        raise ValueError("the module has no 'main' function; TASD rewrites the model's entry function 'main'")
    collector = _Collector(LayerMatcher(mod, params))
    collector.visit_expr(mod["main"])
    if collector.calls and not collector.layers:
        warnings.warn(f"the model has {collector.calls} matmul/conv2d calls but no layer TASD can take: none has a "
                      "constant weight (weights given as function inputs need params=)", TASDWarning, stacklevel=2)
    return collector.layers

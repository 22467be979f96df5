"""TASDRewrite: rewrite matmuls and convolutions into sums of N:M-sparse kernels.

Where it belongs in the pipeline: right after import (``tvm_tasd.frontend``
or ``relax.frontend.onnx.from_onnx``) and constant folding, *before*
``LegalizeOps`` — it matches high-level ``relax.matmul`` / ``relax.nn.conv2d``
calls (:mod:`tvm_tasd.matcher`), takes one :class:`~tvm_tasd.policy.Choice`
per layer from :class:`~tvm_tasd.policy.Policy` (from ``plan``, the
uniform ``config``, or the cheapest series the target runs faster than
dense whose relative weight error stays under ``error_threshold``),
decomposes the constant weights at compile time into compressed N:M terms
(values + uint8 indices), and replaces each call with one fused
``call_tir`` kernel that runs every term while sharing the activation read
and the accumulator (the paper's Fig. 11). Layers of the same shape and
series call one shared kernel function (attribute ``tasd.layers`` names
them), each with its own packed terms as operands. Where the kernel takes
one (the CPU kernels), the layer's bias add and activation function run in
its output stage (:mod:`tvm_tasd.epilogue`), not as ops after it. Kernels come from
``tvm_tasd.schedules`` (``schedules.selection`` picks them for the current
TVM target, ``Target.current()``, else the hardware's): mma.sp on CUDA,
the tensorized N:M kernels on the CPU. With the plain CPU kernels
(``cpu-emulated``) a series too dense for its N:M kernel to beat the dense
one runs the dense kernel on the approximated weight (``nm_kernels``).

Upstream TVM has no Relay since 0.20: the ``relay.transform.TASDRewrite(hw)``
of the paper's era is this Relax pass, a normal ``tvm.transform.Pass``.

Weights: bound constants are decomposed as they are. Weights that arrive as
function inputs need their values in ``params=`` (name → array); the
function's signature stays the same, the rewritten layers just stop reading
those inputs.

Not handled (left dense, with the reason recorded in the module attribute
``tasd_layers``): dynamic shapes, non-float dtypes, grouped and depthwise
convolutions (with ``blocked_channels`` a depthwise one runs the dense
blocked kernel), non-NCHW/OIHW layouts, weights whose grouped axis is
shorter than the series' largest M, configs the target cannot run faster
than dense. Activation series (run-time decomposition) are inserted for matmul
and ungrouped conv layers only.

:func:`rewrite_layers` is the rewrite itself, with a :class:`LayerHook` for
callers that emit layers differently (the Relax evaluator feeds packed
weights as function inputs instead of constants).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import tvm
import tvm_ffi
from tvm import relax

from .blocked_layout import WEIGHT_K_AXIS_ATTR, LayoutTransforms, PropagateBlockedLayout
from .config import TASDConfig
from .decompose import relative_error
from .epilogue import Epilogue, find_epilogues
from .hardware import load_target
from .layer import Layer
from .matcher import LayerMatcher, find_layers
from .plan import Plan
from .policy import Choice, Policy
from .schedules import llvm
from .schedules.llvm_activation import nm_activation
from .schedules.llvm_blocked import blocked_lanes
from .schedules.selection import Kernels, kernels_for

REWRITTEN_ATTR = "tasd_rewritten"
LAYERS_ATTR = "tasd_layers"
#: On every kernel the rewrite emits: it comes scheduled, so no default schedule rule may touch it, and
#: ``FuseOps`` must not merge it with its neighbours (``FuseTIR`` cannot merge a scheduled kernel).
KERNEL_ATTRS = {"tirx.is_scheduled": True, "op_pattern": 8}  # 8: kOpaque
#: ``nm_kernels`` values: pick the faster of the N:M and dense kernel per layer, or always the N:M one.
NM_KERNEL_CHOICES = ("auto", "always")


@tvm.transform.module_pass(opt_level=0, name="TASDRewrite")
class TASDRewrite:
    """Rewrite every eligible matmul/conv2d of ``main`` into N:M-sparse kernels.

    Parameters
    ----------
    hw : str | HardwareTarget
        Target name (``"vegeta-m8"``), a target file path, or a loaded target.
    config : str | TASDConfig, optional
        One series for every layer (``"2:8+1:8"``).
    plan : Plan | path | dict, optional
        Per-layer choices (what :func:`tvm_tasd.tasder.search` emits).
    params : dict, optional
        Weight values when the weights are function inputs.
    error_threshold : float, optional
        Per layer, the cheapest series whose relative weight error is at
        most this (warned: nothing checks the model's quality). Exactly one
        of ``config``, ``plan`` and ``error_threshold`` is given.
    activation : str | TASDConfig, optional
        One run-time activation series for every matmul and ungrouped conv
        layer (along K, or the conv's input channels; plans carry theirs per
        layer). Needs a target whose unit takes the activation as its sparse
        operand (``ttc-*``); the emulated kernel computes exactly the
        decomposed activation.
    dense_kernels : bool
        Also route the layers left dense through the scheduled dense kernel
        of ``tvm_tasd.schedules`` (what :func:`tvm_tasd.build` does, so dense
        and TASD builds compare fairly) — except convs that reduce over too few
        values for it (``llvm.dense_conv2d_pays``); otherwise they stay ``relax`` ops.
    nm_kernels : {"auto", "always"}
        ``"auto"``: where the kernel family also has scheduled dense kernels
        (the plain CPU kernels of ``cpu-emulated``), a layer whose series is
        too dense for its N:M kernel to beat the dense one
        (``llvm.nm_kernel_pays``; a conv that runs in blocked channels when
        dense pays only at 1/8 density or less and with enough MACs per value
        of the layout transform its N:M kernel needs on each side) runs the
        dense kernel on its approximated
        weight: the same values, so the same outputs up to rounding, and its
        executed MACs are then the dense count. ``"always"``: every rewritten
        layer runs its series' N:M kernel (to study the kernels themselves).
        Kernels that emulate a unit (``vegeta-*``, ``ttc-*``) or are one
        (mma.sp) always run the series.
    blocked_channels : bool
        With ``dense_kernels`` on the CPU (what :func:`tvm_tasd.build` does):
        run the dense pointwise and depthwise convs in blocked channels
        (``schedules.llvm_blocked``, NCHW{L}c) and keep the network in that
        layout between them (:mod:`tvm_tasd.blocked_layout`); N:M conv layers
        stay NCHW.
    """

    def __init__(
        self,
        hw,
        config=None,
        plan=None,
        params=None,
        error_threshold=None,
        activation=None,
        dense_kernels=False,
        nm_kernels="auto",
        blocked_channels=False,
    ):
        if nm_kernels not in NM_KERNEL_CHOICES:
            raise ValueError(f"nm_kernels must be one of {', '.join(map(repr, NM_KERNEL_CHOICES))}, not {nm_kernels!r}")
        self.target = load_target(hw)
        self.policy = Policy(self.target, config, None if plan is None else Plan.coerce(plan), activation,
                             error_threshold)
        self.params = params
        self.dense_kernels = dense_kernels
        self.nm_kernels = nm_kernels
        self.blocked_channels = blocked_channels

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        if mod.attrs is not None and REWRITTEN_ATTR in mod.attrs:
            if str(mod.attrs[REWRITTEN_ATTR]) != self.target.name:
                raise ValueError(f"the module is already rewritten for {mod.attrs[REWRITTEN_ATTR]}; rewrite the "
                                 f"original module for {self.target.name}")
            return mod  # idempotent: decisions were made once, by the first run
        choices = self.policy.decide(find_layers(mod, self.params))
        rewritten, table = rewrite_layers(mod, choices, kernels_for(self.target), self.params, self.dense_kernels,
                                          nm_kernels=self.nm_kernels, blocked_channels=self.blocked_channels)
        return rewritten.with_attr(REWRITTEN_ATTR, self.target.name).with_attr(LAYERS_ATTR, table)


class LayerHook:
    """Where :func:`rewrite_layers` lets a caller change how a layer is emitted.

    The default emits what the pass does: the activation as it is, the
    packed weight arrays as constants.
    """

    def layer_input(self, layer: Layer, x: relax.Expr, builder: relax.BlockBuilder) -> relax.Expr:
        """The activation the layer's kernel reads (``x`` is the layer's input in the new function)."""
        return x

    def weight_operands(self, layer: Layer, kernel, packed: list[np.ndarray]) -> list[relax.Expr]:
        """The kernel's weight operands: ``kernel.pack``'s arrays, as the kernel takes them."""
        return [relax.const(array) for array in packed]

    def function(self, func: relax.Function, builder: relax.BlockBuilder) -> relax.Function:
        """The rewritten ``main``, once every layer is emitted (a caller may add inputs or outputs)."""
        return func


def rewrite_layers(mod: tvm.IRModule, choices: Mapping[str, Choice], kernels: Kernels, params=None,
                   dense_kernels: bool = False, hook: LayerHook | None = None,
                   every_dense_layer: bool = False, nm_kernels: str = "auto",
                   blocked_channels: bool = False) -> tuple[tvm.IRModule, list[dict]]:
    """``mod`` with every chosen layer of ``main`` replaced by its kernel call, and the layer table.

    A layer is rewritten when its choice runs anything but dense, or with
    ``dense_kernels`` (where the kernel family has scheduled dense kernels)
    also when it stays dense and the dense kernel beats TVM's op there — with
    ``every_dense_layer`` always (a ``hook`` that feeds weights per run needs
    every layer in a kernel); ``nm_kernels`` and ``blocked_channels`` as :class:`TASDRewrite` takes them.
    The table has one entry per layer of ``choices``: the choice
    (:meth:`Choice.to_json`), the GEMM shape, which kernel runs it
    (``kernel``: ``nm``, ``dense`` or ``relax``, TVM's own op) and what that
    kernel measured (``executed_macs``, ``weight_error``).
    ``choices`` must have been checked against the layers' weights (as
    :class:`~tvm_tasd.policy.Policy` does): their fingerprints are not checked again here.
    """
    dense_kernels = dense_kernels and kernels.dense_kernels
    rewriter = _Rewriter(mod, params, choices, dense_kernels, kernels, hook or LayerHook(), every_dense_layer,
                         nm_kernels == "auto", blocked_channels and dense_kernels)
    rewritten = relax.transform.DeadCodeElimination(["main"])(rewriter.rewrite())
    if rewriter.blocked_channels:
        rewritten = PropagateBlockedLayout()(rewritten)
    return rewritten, [_table_entry(layer, choices[layer.name], rewriter.measured) for layer in rewriter.matched]


def _table_entry(layer: Layer, choice: Choice, measured: dict[str, tuple[int, float, str]]) -> dict:
    """What reports read back from a rewritten module, per layer."""
    executed, error, kernel = measured.get(layer.name, (layer.dense_macs, 0.0, "relax"))
    return {
        **choice.to_json(),
        "op": layer.op,
        "m": layer.m,
        "k": layer.k,
        "n": layer.n,
        "density": choice.weight.density,
        "dense_macs": layer.dense_macs,
        "kernel": kernel,
        "executed_macs": executed,
        "weight_error": error,
    }




def _dense_kernel_beats_tvm(layer: Layer) -> bool:
    """Whether the scheduled dense kernel suits the layer: every matmul, and convs reducing over enough values."""
    return layer.op != "conv2d" or llvm.dense_conv2d_pays(layer.weight.shape)


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    """Replaces the chosen matmul/conv2d bindings with fused N:M kernel calls."""

    def __init__(self, mod: tvm.IRModule, params, choices: Mapping[str, Choice], dense_kernels: bool,
                 kernels: Kernels, hook: LayerHook, every_dense_layer: bool, fastest_kernel: bool,
                 blocked_channels: bool):
        super().__init__(mod)
        self.mod = mod
        self.matcher = LayerMatcher(mod, params)
        self.choices = choices
        self.dense_kernels = dense_kernels
        self.every_dense_layer = every_dense_layer
        self.fastest_kernel = fastest_kernel and kernels.dense_kernels
        self.kernels = kernels
        self.hook = hook
        self.blocked_channels = blocked_channels
        self.layout = LayoutTransforms(self.builder_)
        self.matched: list[Layer] = []
        self.measured: dict[str, tuple[int, float, str]] = {}  # layer → (executed MACs, weight error, kernel)
        self.symbols = {gv.name_hint for gv in mod.get_global_vars()}
        self.shared: dict[int, list[tuple[tvm.tirx.PrimFunc, relax.GlobalVar]]] = {}  # structural hash → kernels
        self.users: dict[relax.GlobalVar, list[str]] = {}  # kernel → the layers that call it
        self.scheduled: dict[tuple, object] = {}  # (op, shapes, series, dtype, window, epilogue) → kernel
        self.epilogues = self._epilogues(mod, params) if kernels.dense_kernels else {}
        self.dropped: set = set()  # variables of ops a kernel absorbed: their bindings are not emitted

    def rewrite(self) -> tvm.IRModule:
        main = self.mod.get_global_var("main")
        self.builder_.update_func(main, self.hook.function(self.visit_expr(self.mod["main"]), self.builder_))
        for gvar, layers in self.users.items():
            self.builder_.update_func(gvar, self.builder_.get()[gvar].with_attr("tasd.layers", layers))
        return self.builder_.get()

    @staticmethod
    def _epilogues(mod: tvm.IRModule, params) -> dict:
        lookup = LayerMatcher(mod, params)
        for block in mod["main"].body.blocks:
            for binding in block.bindings:
                lookup.remember(binding.var, binding.value)
        return find_epilogues(mod["main"], lookup)

    def visit_var_binding_(self, binding):
        self.matcher.remember(binding.var, binding.value)  # as the source wrote it: what feeds the next layers
        if binding.var in self.dropped:
            return
        layer = self.matcher.match(binding.value)
        choice = self.choices.get(layer.name) if layer is not None else None
        if choice is None:
            return super().visit_var_binding_(binding)
        self.matched.append(layer)
        if not self._rewritten(layer, choice):
            return super().visit_var_binding_(binding)
        activation = self.hook.layer_input(layer, self.visit_expr(binding.value.args[0]), self.builder_)
        epilogue = self.epilogues.get(binding.var)
        new_value, output = self._emit_layer(layer, choice, activation, epilogue)
        var = binding.var
        if output is not None:  # the kernel's output is the last absorbed op's value
            self.dropped |= epilogue.absorbed | {epilogue.output, output}
            var = output
        self.builder_.emit_normalized(relax.VarBinding(var, self.builder_.normalize(new_value)))

    def _rewritten(self, layer: Layer, choice: Choice) -> bool:
        """Whether the layer runs a kernel of the rewrite: its series, the dense kernel, or for a depthwise conv
        (ineligible for series) the blocked kernel."""
        if layer.ineligible:
            return self._blocked(layer)
        return choice.rewrites or self._dense_kernel(layer)

    def _blocked(self, layer: Layer) -> bool:
        """Whether the layer, run dense, runs in blocked channels."""
        return (self.blocked_channels and layer.op == "conv2d"
                and self.kernels.has_blocked_conv2d(layer.activation_shape, layer.weight.shape, layer.dtype,
                                                    layer.conv) is not None)

    def _dense_kernel(self, layer: Layer) -> bool:
        """A dense layer runs the scheduled dense kernel where there is one and it beats TVM's own op (a blocked
        kernel always does)."""
        return self.dense_kernels and (self.every_dense_layer or _dense_kernel_beats_tvm(layer) or self._blocked(layer))

    def _kernel_var(self, func: tvm.tirx.PrimFunc, name: str, layer: Layer) -> relax.GlobalVar:
        """The module's function for ``func``: added once per distinct kernel and shared by every layer that runs
        the same one (same shapes, series and tiles), so LLVM compiles it once — MiniLM's 36 layers need 3.
        ``name`` (e.g. ``matmul_320x384x384_2:8+1:8``) becomes an identifier unique in the module."""
        key = tvm_ffi.structural_hash(func)
        for known, gvar in self.shared.get(key, []):
            if tvm_ffi.structural_equal(known, func):
                self.users[gvar].append(layer.name)
                return gvar
        base = "tasd_" + re.sub(r"[^0-9a-zA-Z_]", "_", name)
        symbol, suffix = base, 1
        while symbol in self.symbols:
            symbol, suffix = f"{base}_{suffix}", suffix + 1
        self.symbols.add(symbol)
        gvar = self.builder_.add_func(func.with_attr("global_symbol", symbol), symbol)
        self.shared.setdefault(key, []).append((func, gvar))
        self.users[gvar] = [layer.name]
        return gvar

    def _kernel(self, layer: Layer, choice: Choice, epilogue: Epilogue | None):
        """The scheduled kernel for this layer, its packed constant arrays, the weight error, the series the
        kernel runs (dense where the dense kernel runs the approximated weight) and whether it applies
        ``epilogue`` (where its family's kernel takes one)."""
        if choice.weight.is_dense:
            kernel, fused = self._scheduled(layer, None, epilogue)
            return kernel, kernel.pack(np.ascontiguousarray(layer.weight_kn)), 0.0, choice.weight, fused
        terms = choice.decomposed(layer.weight, layer.axis, verify=False)  # Policy checked it
        if layer.op == "matmul" and layer.axis == 1:  # a (N, K) weight: the kernels take (K, N)
            terms = [term.transposed() for term in terms]
        approximated = sum(t.dense() for t in terms)
        error = relative_error(layer.weight_kn, approximated)
        if self._dense_runs_faster(layer, choice):
            kernel, fused = self._scheduled(layer, None, epilogue)
            return kernel, kernel.pack(np.ascontiguousarray(approximated)), error, TASDConfig.dense(), fused
        kernel, fused = self._scheduled(layer, tuple(t.pattern for t in terms), epilogue)
        return kernel, kernel.pack(terms), error, choice.weight, fused

    def _dense_runs_faster(self, layer: Layer, choice: Choice) -> bool:
        """Whether the dense kernel beats the series' N:M kernel for this layer (never for kernels that emulate
        a unit: :attr:`Kernels.series_pays` says so for them)."""
        blocked = self._blocked(layer)
        # the N:M conv would need a transform out of and back into blocked channels around it
        reuse = llvm.layout_transform_reuse(layer.weight.shape) if blocked else None
        return (self.fastest_kernel and (_dense_kernel_beats_tvm(layer) or blocked)
                and not self.kernels.series_pays(layer.op, choice.weight.density, layer.m, reuse))

    def _scheduled(self, layer: Layer, patterns: tuple | None, epilogue: Epilogue | None):
        """The layer's scheduled kernel (dense when ``patterns`` is None) and whether it applies ``epilogue``
        (where its family's kernel takes one), built once per distinct shape, series and epilogue: scheduling
        is the costly part, and the kernel's ``pack`` takes any weight of its shape (the bias is an operand of
        its own)."""
        fused = epilogue is not None and self.kernels.takes_epilogue(dense=patterns is None)
        window = repr(sorted(layer.conv_window.items())) if layer.op == "conv2d" else ""
        options = {"bias": epilogue.bias is not None, "output_activation": epilogue.activation} if fused else {}
        if (fused and epilogue.pooled is not None and patterns is None and self._blocked(layer)
                and self.kernels.blocked_conv2d_pools(layer.activation_shape, layer.weight.shape, layer.dtype,
                                                      layer.conv, epilogue.activation)):
            options["output_pool"] = True
        key = (layer.op, layer.activation_shape, tuple(layer.weight_kn.shape), patterns, layer.dtype, window,
               tuple(sorted(options.items())))
        if key not in self.scheduled:
            if layer.op == "matmul":
                self.scheduled[key] = (self.kernels.dense_matmul(layer.m, layer.k, layer.n, layer.dtype, **options)
                                       if patterns is None else
                                       self.kernels.nm_matmul(layer.m, layer.k, layer.n, list(patterns), layer.dtype,
                                                              **options))
            elif patterns is None and self._blocked(layer):
                self.scheduled[key] = self.kernels.blocked_conv2d(layer.activation_shape, layer.weight.shape,
                                                                  layer.dtype, layer.conv, **options)
            elif patterns is None:
                self.scheduled[key] = self.kernels.dense_conv2d(layer.activation_shape, layer.weight.shape,
                                                                layer.dtype, **layer.conv_window, **options)
            else:
                self.scheduled[key] = self.kernels.nm_conv2d(layer.activation_shape, layer.weight.shape,
                                                             list(patterns), layer.dtype, **layer.conv_window,
                                                             **options)
        return self.scheduled[key], fused

    def _activation_call(self, layer: Layer, choice: Choice, x):
        """call_tir of the run-time activation decomposition (the TASD units) on the layer's input: x (m, k)
        of a matmul, or a conv's NCHW input (groups along its channels)."""
        conv = layer.op == "conv2d"
        shape = tuple(layer.activation_shape) if conv else (layer.m, layer.k)
        kernel = nm_activation(shape, choice.activation, dtype=layer.dtype, channels_first=conv,
                               target=self.kernels.target)
        func = kernel.func.with_attrs({"tasd.activation": str(choice.activation), **KERNEL_ATTRS})
        gvar = self._kernel_var(func, f"act_{'x'.join(map(str, shape))}_{choice.activation}", layer)
        return relax.call_tir(gvar, [x], relax.TensorType(shape, layer.dtype))

    def _emit_layer(self, layer: Layer, choice: Choice, activation, epilogue: Epilogue | None):
        """The layer's kernel call (reshaped to the layer's output shape), and the variable of the last op of
        ``epilogue`` it applies (its activation, or the pooling after it), None where it applies none."""
        kernel, packed, error, runs, fused = self._kernel(layer, choice, epilogue)
        pooled = kernel.params.get("output_pool", False)
        x = activation
        if layer.op == "matmul" and len(layer.activation_shape) != 2:
            x = self.builder_.emit(relax.op.reshape(activation, (layer.m, layer.k)))
        if choice.activation is not None:
            shift = None if layer.input_shift is None else relax.const(layer.input_shift.astype(layer.dtype))
            if shift is not None:  # the unit decomposes the ReLU-fed part; the shift's share is a constant
                x = self.builder_.emit(relax.op.subtract(x, shift))
            x = self.builder_.emit(self._activation_call(layer, choice, x))
            if shift is not None:
                x = self.builder_.emit(relax.op.add(x, shift))
        blocked = blocked_lanes(kernel)
        if blocked and kernel.params["blocked_input"]:
            x = self.builder_.emit(self.layout.to_blocked(x, blocked))
        if layer.op == "matmul":
            out_shape, call_shape = (layer.m, layer.n), layer.activation_shape[:-1] + (layer.n,)
        else:
            out_shape = call_shape = tuple(int(d) for d in kernel.out_shape)
        func = kernel.func.with_attrs(
            {
                "tasd.config": str(runs),
                "tasd.density": float(runs.density),
                "tasd.executed_macs": int(kernel.executed_macs),
                **KERNEL_ATTRS,
                **({WEIGHT_K_AXIS_ATTR: kernel.params["weight_k_axis"]} if "weight_k_axis" in kernel.params else {}),
            }
        )
        self.measured[layer.name] = (int(kernel.executed_macs), float(error), "dense" if runs.is_dense else "nm")
        applied = ""
        if fused:
            applied = ("_bias" * (epilogue.bias is not None) + f"_{epilogue.activation}" * bool(epilogue.activation)
                       + "_maxpool" * pooled)
        gvar = self._kernel_var(func, f"{layer.op}_{layer.m}x{layer.k}x{layer.n}_{runs}{applied}", layer)
        operands = self.hook.weight_operands(layer, kernel, packed)
        if fused and epilogue.bias is not None:
            operands.append(relax.const(kernel.pack_bias(epilogue.bias)))
        out = relax.call_tir(gvar, [x, *operands], relax.TensorType(out_shape, layer.dtype))
        output = None if not fused else epilogue.pooled if pooled else epilogue.output
        if blocked:
            return self.layout.from_blocked(self.builder_.emit(out), layer.weight.shape[0]), output
        if tuple(out_shape) != tuple(call_shape):
            out = relax.op.reshape(self.builder_.emit(out), call_shape)
        return out, output

"""TASDRewrite: rewrite matmuls and convolutions into sums of N:M-sparse kernels.

Where it belongs in the pipeline: right after import (``tvm_tasd.frontend``
or ``relax.frontend.onnx.from_onnx``) and constant folding, *before*
``LegalizeOps`` — it matches high-level ``relax.matmul`` / ``relax.nn.conv2d``
calls, decomposes their constant weights at compile time into compressed
N:M terms (values + uint8 indices), and replaces each call with one fused
``call_tir`` kernel from ``tvm_tasd.schedules`` that runs every term while
sharing the activation read and the accumulator (the paper's Fig. 11).
Which kernels (``schedules.selection``): those of the target's intrinsic family
for the current TVM target (``Target.current()``, else the hardware's) —
mma.sp on CUDA, the tensorized N:M kernels on the CPU.

Upstream TVM has no Relay since 0.20: the ``relay.transform.TASDRewrite(hw)``
of the paper's era is this Relax pass, a normal ``tvm.transform.Pass``.

Per layer the series comes from ``plan`` (layer name → config), else the
uniform ``config``, else the cheapest series the target runs faster than
dense whose relative weight error stays under ``error_threshold``.

Weights: bound constants are decomposed as they are. Weights that arrive as
function inputs need their values in ``params=`` (name → array); the
function's signature stays the same, the rewritten layers just stop reading
those inputs.

Not handled (left dense, with the reason recorded in the module attribute
``tasd_layers``): dynamic shapes, non-float dtypes, grouped and depthwise
convolutions, non-NCHW/OIHW layouts, weights whose grouped axis is shorter
than the series' largest M, configs the target cannot run faster than
dense. Activation series (run-time decomposition) are inserted for matmul
layers only.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import tvm
from tvm import relax

from .candidates import cheapest_within_error, runs_faster_than_dense
from .config import TASDConfig
from .decompose import decompose
from .hardware import load_target
from .layers import Layer, LayerMatcher, find_layers
from .plan import LayerPlan, Plan

#: Default relative Frobenius error a layer may lose when no config/plan is given.
DEFAULT_ERROR_THRESHOLD = 0.3
REWRITTEN_ATTR = "tasd_rewritten"
LAYERS_ATTR = "tasd_layers"


class TASDWarning(UserWarning):
    """A layer was left dense for a reason the user may want to fix."""


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
    error_threshold : float
        Automatic choice when neither config nor plan is given.
    activation : str | TASDConfig, optional
        One run-time activation series for every matmul layer (plans carry
        theirs per layer). Needs a target whose unit takes the activation as
        its sparse operand (``ttc-*``); the emulated kernel computes exactly
        the decomposed activation.
    dense_kernels : bool
        Also route the layers left dense through the scheduled dense kernel
        of ``tvm_tasd.schedules`` (what :func:`tvm_tasd.build` does, so dense
        and TASD builds compare fairly); otherwise they stay ``relax`` ops.
    """

    def __init__(
        self,
        hw,
        config=None,
        plan=None,
        params=None,
        error_threshold=DEFAULT_ERROR_THRESHOLD,
        activation=None,
        dense_kernels=False,
    ):
        if config is not None and plan is not None:
            raise ValueError("give either config= (one series for all layers) or plan= (per layer), not both")
        self.target = load_target(hw)
        self.config = None if config is None else TASDConfig.parse(config)
        self.plan = None if plan is None else Plan.coerce(plan)
        self.plan_entries = {} if self.plan is None else self.plan.by_name()
        self.params = params
        self.error_threshold = error_threshold
        self.activation = None if activation is None else TASDConfig.parse(activation)
        self.dense_kernels = dense_kernels

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        if mod.attrs is not None and REWRITTEN_ATTR in mod.attrs:
            return mod  # idempotent: decisions were made once, by the first run
        from .schedules.selection import kernels_for

        layers = find_layers(mod, self.params)
        choices = {layer.name: self._choose(layer) for layer in layers}
        self._check_plan_names(layers)
        rewriter = _Rewriter(mod, self.params, choices, self.dense_kernels, kernels_for(self.target))
        rewritten = relax.transform.DeadCodeElimination(["main"])(rewriter.rewrite())
        summary = [_summary(layer, choices[layer.name], rewriter.executed_macs) for layer in layers]
        return rewritten.with_attr(REWRITTEN_ATTR, self.target.name).with_attr(LAYERS_ATTR, summary)

    def _choose(self, layer: Layer) -> "Choice":
        choice = self._choose_weight(layer)
        entry = self.plan_entries.get(layer.name)
        requested = entry.activation if entry is not None else self.activation
        if requested is not None and not requested.is_dense and not layer.ineligible:
            choice.activation = self._checked_activation(layer, requested)
        return choice

    def _checked_activation(self, layer: Layer, config: TASDConfig) -> TASDConfig | None:
        problem = None
        if layer.op != "matmul":
            problem = "activation series are inserted for matmul layers only"
        elif layer.k < config.max_m:
            problem = f"reduction length {layer.k} < M={config.max_m}"
        elif not all(self.target.accelerates(t, "activation") for t in config.terms):
            problem = f"{self.target.name} cannot run activation series {config} faster than dense"
        if problem:
            warnings.warn(f"layer {layer.name!r}: {problem}; activation left dense", TASDWarning, stacklevel=4)
            return None
        return config

    def _choose_weight(self, layer: Layer) -> "Choice":
        if layer.ineligible:
            return Choice(TASDConfig.dense(), layer.ineligible)
        if self.plan is not None:
            entry = self.plan_entries.get(layer.name)
            if entry is None:
                return Choice(TASDConfig.dense(), "not in the plan: left dense")
            return self._checked(layer, entry.weight, "from the plan", entry)
        if self.config is not None:
            return self._checked(layer, self.config, "uniform config")
        config, error = cheapest_within_error(layer, self.target, self.error_threshold)
        if config.is_dense:
            return Choice(config, f"no supported series keeps the weight error ≤ {self.error_threshold:.0%}")
        return Choice(config, f"cheapest series with weight error {error:.1%} ≤ {self.error_threshold:.0%}")

    def _checked(self, layer: Layer, config: TASDConfig, why: str, entry: LayerPlan | None = None) -> "Choice":
        if config.is_dense:
            return Choice(config, f"dense ({why})")
        if layer.grouped_length < config.max_m:
            what = "input channels" if layer.op == "conv2d" else "reduction length"
            return Choice(TASDConfig.dense(), f"{layer.op} with {layer.grouped_length} {what} < M={config.max_m}: dense")
        slow = [str(t) for t in config.terms if not runs_faster_than_dense(self.target, t)]
        if slow:
            warnings.warn(
                f"layer {layer.name!r}: {self.target.name} cannot run {', '.join(slow)} faster than dense; "
                f"left dense (supported: {', '.join(map(str, self.target.patterns))})",
                TASDWarning,
                stacklevel=3,
            )
            return Choice(TASDConfig.dense(), f"{'+'.join(slow)} not faster than dense on {self.target.name}: dense")
        score = entry.selection_score if entry is not None else "magnitude"
        return Choice(config, why, score)

    def _check_plan_names(self, layers: list[Layer]) -> None:
        if self.plan is None:
            return
        known = {layer.name for layer in layers}
        unknown = [layer.name for layer in self.plan.layers if layer.name not in known]
        if unknown and len(unknown) == len(self.plan.layers):
            raise ValueError(
                f"the plan names no layer of this model (e.g. {unknown[0]!r}); is it a plan for another model? "
                f"this model's layers: {', '.join(sorted(known)[:5])}{'…' if len(known) > 5 else ''}"
            )
        if unknown:
            warnings.warn(f"the plan names layers this model does not have: {', '.join(unknown)}", TASDWarning, stacklevel=3)


class Choice:
    """The series chosen for one layer, why, the selection score, and the activation series."""

    def __init__(self, config: TASDConfig, reason: str, score="magnitude"):
        self.config, self.reason, self.score = config, reason, score
        self.activation: TASDConfig | None = None

    @property
    def rewrites(self) -> bool:
        return not self.config.is_dense or self.activation is not None


def _summary(layer: Layer, choice: Choice, executed_macs: dict[str, int]) -> dict:
    """What reports read back from a rewritten module, per layer."""
    return {
        "name": layer.name,
        "op": layer.op,
        "m": layer.m,
        "k": layer.k,
        "n": layer.n,
        "config": str(choice.config),
        "activation": None if choice.activation is None else str(choice.activation),
        "density": choice.config.density,
        "reason": choice.reason,
        "dense_macs": layer.dense_macs,
        "executed_macs": executed_macs.get(layer.name, layer.dense_macs),
    }


def _safe(name: str) -> str:
    return re.sub(r"[^0-9a-zA-Z_]", "_", name)


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    """Replaces the chosen matmul/conv2d bindings with fused N:M kernel calls."""

    def __init__(self, mod: tvm.IRModule, params, choices: dict[str, Choice], dense_kernels: bool, kernels):
        super().__init__(mod)
        self.kernels = kernels  # schedules.selection.Kernels: the target's kernel family
        self.dense_kernels = dense_kernels and kernels.dense_kernels
        self.mod = mod
        self.matcher = LayerMatcher(mod, params)
        self.choices = choices
        self.executed_macs: dict[str, int] = {}

    def rewrite(self) -> tvm.IRModule:
        main = self.mod.get_global_var("main")
        self.builder_.update_func(main, self.visit_expr(self.mod["main"]))
        return self.builder_.get()

    def visit_var_binding_(self, binding):
        self.matcher.remember(binding.var, binding.value)
        layer = self.matcher.match(binding.value)
        choice = self.choices.get(layer.name) if layer is not None else None
        if choice is None or layer.ineligible or not (choice.rewrites or self.dense_kernels):
            return super().visit_var_binding_(binding)
        activation = self.visit_expr(binding.value.args[0])
        new_value = self.builder_.normalize(self._emit_layer(layer, choice, activation))
        self.builder_.emit_normalized(relax.VarBinding(binding.var, new_value))

    def _kernel(self, layer: Layer, choice: Choice):
        """The scheduled kernel for this layer and its packed constant arrays."""
        from .schedules import llvm

        weight_kn = layer.weight.T if layer.axis == 1 and layer.op == "matmul" else layer.weight
        if choice.config.is_dense:
            if layer.op == "matmul":
                kernel = llvm.dense_matmul(layer.m, layer.k, layer.n, dtype=layer.dtype)
            else:
                kernel = llvm.dense_conv2d(layer.activation_shape, layer.weight.shape, dtype=layer.dtype, **layer.conv_window)
            return kernel, kernel.pack(np.ascontiguousarray(weight_kn))
        if layer.op == "matmul":
            terms = decompose(weight_kn, choice.config, axis=0, score=choice.score, name=layer.name)
            kernel = self.kernels.nm_matmul(layer.m, layer.k, layer.n, [t.pattern for t in terms], layer.dtype)
        else:
            terms = decompose(layer.weight, choice.config, axis=1, score=choice.score, name=layer.name)
            kernel = self.kernels.nm_conv2d(
                layer.activation_shape, layer.weight.shape, [t.pattern for t in terms], layer.dtype, **layer.conv_window
            )
        return kernel, kernel.pack(terms)

    def _activation_call(self, layer: Layer, config: TASDConfig, x):
        """call_tir of the run-time activation decomposition (the TASD units) on x (m, k)."""
        from .schedules.llvm_activation import nm_activation

        kernel = nm_activation((layer.m, layer.k), config, dtype=layer.dtype)
        symbol = f"tasd_act_{_safe(layer.name)}"
        func = kernel.func.with_attrs({"tasd.layer": layer.name, "tasd.activation": str(config), "global_symbol": symbol})
        gvar = self.builder_.add_func(func, symbol)
        return relax.call_tir(gvar, [x], relax.TensorType((layer.m, layer.k), layer.dtype))

    def _operands(self, layer: Layer, packed: list[np.ndarray]) -> list:
        """The kernel's weight operands: the packed arrays, bound as constants."""
        return [relax.const(array) for array in packed]

    def _emit_layer(self, layer: Layer, choice: Choice, activation):
        kernel, packed = self._kernel(layer, choice)
        x = activation
        if layer.op == "matmul":
            if len(layer.activation_shape) != 2:
                x = self.builder_.emit(relax.op.reshape(activation, (layer.m, layer.k)))
            if choice.activation is not None:
                x = self.builder_.emit(self._activation_call(layer, choice.activation, x))
            out_shape, call_shape = (layer.m, layer.n), layer.activation_shape[:-1] + (layer.n,)
        else:
            out_shape = call_shape = tuple(int(d) for d in kernel.out_shape)
        symbol = f"tasd_{_safe(layer.name)}"
        func = kernel.func.with_attrs(
            {
                "tasd.layer": layer.name,
                "tasd.config": str(choice.config),
                "tasd.density": float(choice.config.density),
                "tasd.executed_macs": int(kernel.executed_macs),
                "global_symbol": symbol,
            }
        )
        self.executed_macs[layer.name] = int(kernel.executed_macs)
        gvar = self.builder_.add_func(func, symbol)
        out = relax.call_tir(gvar, [x, *self._operands(layer, packed)], relax.TensorType(out_shape, layer.dtype))
        if tuple(out_shape) != tuple(call_shape):
            out = relax.op.reshape(self.builder_.emit(out), call_shape)
        return out

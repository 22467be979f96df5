"""Run a Relax model many times with different layer weights, from one build.

The IRModule counterpart of :class:`~tvm_tasd.evaluate.WeightFedModel`, so
that :func:`tvm_tasd.tasder.search` takes a Relax ``IRModule`` as well as an
ONNX model. The module is rewritten once (a subclass of TASDRewrite's
mutator): every eligible layer runs through the scheduled dense CPU kernel
of ``tvm_tasd.schedules``, with its *packed* weight as a new function input
instead of a constant, and compiled for the host. Each run packs the given
weights in numpy and feeds them, so evaluating a candidate never recompiles.

Activation series are emulated as on the ONNX path: a layer named in
``activation_groups`` (layer → M) — or, with ``relu_fed_groups=M``, every
ReLU-fed matmul layer whose K is a multiple of M — gets a keep-count input
and keeps, in every group of M along the last axis, the ``keep`` largest |x|
(ties to the lower index, zeros last). With ``expose=True`` the module also
returns every layer's input, which :meth:`RelaxWeightFedModel.calibrate`
reads; one build then serves both calibration and the search.

Not handled: layers TASD leaves dense anyway (:mod:`tvm_tasd.layers`'s
ineligible ones) keep their own weight and cannot be replaced; models run
on the host CPU only; non-layer ops get TVM's default (unscheduled) CPU
lowering, so large models evaluate far slower than through onnxruntime —
export to ONNX when the search time matters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np
import tvm
from tvm import relax

from .calibration import CalibrationStats, StatsAccumulator
from .config import TASDConfig
from .evaluate import check_feeds
from .layers import Layer, find_layers
from .transform import Choice, _Rewriter

#: Ops that keep a ReLU output's zeros (the Relax names of calibration's list).
_ZERO_PRESERVING = frozenset(
    {"relax.reshape", "relax.permute_dims", "relax.squeeze", "relax.expand_dims", "relax.flatten", "relax.nn.max_pool2d"}
)


def _keep_top(x, shape: tuple[int, ...], keep, m: int, dtype: str):
    """``x`` with only the ``keep`` best entries of each group of ``m`` along the last axis (Relax ops)."""
    op, dtype = relax.op, str(dtype)
    groups = op.reshape(x, (-1, m))
    magnitude = op.abs(groups)
    key = op.where(op.equal(groups, relax.const(0, dtype)), relax.const(-1, dtype), magnitude)  # zeros lose
    rival, entry = op.expand_dims(key, 2), op.expand_dims(key, 1)  # (g, m, 1) vs (g, 1, m)
    lower = relax.const((np.arange(m)[:, None] < np.arange(m)[None, :])[None])  # rival i sits before entry j
    beats = op.logical_or(op.greater(rival, entry), op.logical_and(op.equal(rival, entry), lower))
    rank = op.sum(op.astype(beats, "int64"), axis=[1])
    kept = op.where(op.less(rank, keep), groups, relax.const(np.zeros((1, 1), dtype)))
    return op.reshape(kept, shape)


@relax.expr_functor.mutator
class _FeedRewriter(_Rewriter._cls):
    """Layers → dense kernels reading their packed weight from new function inputs."""

    def __init__(self, mod: tvm.IRModule, params, layers: list[Layer], groups: Mapping[str, int],
                 relu_fed_groups: int | None, expose: bool):
        from .hardware import load_target
        from .schedules.llvm import host_target
        from .schedules.selection import kernels_for

        choices = {layer.name: Choice(TASDConfig.dense(), "fed") for layer in layers if not layer.ineligible}
        kernels = kernels_for(load_target("cpu-emulated"), host_target())
        super().__init__(mod, params, choices, True, kernels)
        self.groups = dict(groups)
        self.relu_fed_groups = relu_fed_groups
        self.expose = expose
        self.packers: dict[str, Callable[[np.ndarray], list[np.ndarray]]] = {}
        self.weight_inputs: dict[str, list[relax.Var]] = {}
        self.keep_inputs: dict[str, relax.Var] = {}
        self.activations: dict[str, relax.Expr] = {}
        self.relu_fed: set[str] = set()
        self._layer_input = None  # the current binding's first argument, as written in the source module

    def rewrite(self) -> tvm.IRModule:
        main = self.mod["main"]
        func = self.visit_expr(main)
        body = func.body
        result = body.body
        if self.expose:
            result = self.builder_.normalize(relax.Tuple([result, *self.activations.values()]))
        inputs = [v for vs in self.weight_inputs.values() for v in vs] + list(self.keep_inputs.values())
        attrs = {k: v for k, v in (main.attrs or {}).items() if k != "num_input"}  # the inputs changed
        fed = relax.Function([*func.params, *inputs], relax.SeqExpr(body.blocks, result), result.ty, attrs=tvm.ir.DictAttrs(attrs))
        self.builder_.update_func(self.mod.get_global_var("main"), fed)
        return self.builder_.get()

    def _kernel(self, layer: Layer, choice: Choice):
        kernel, packed = super()._kernel(layer, choice)
        transposed = layer.op == "matmul" and layer.axis == 1  # Linear (N, K) → the kernel's (K, N)
        self.packers[layer.name] = lambda w: kernel.pack(np.ascontiguousarray(w.T if transposed else w))
        return kernel, packed

    def _operands(self, layer: Layer, packed: list[np.ndarray]) -> list:
        inputs = [relax.Var(f"{layer.name}::packed{i}", relax.TensorType(a.shape, str(a.dtype))) for i, a in enumerate(packed)]
        self.weight_inputs[layer.name] = inputs
        return inputs

    def _emit_layer(self, layer: Layer, choice: Choice, activation):
        self.activations[layer.name] = activation
        if self._from_relu(self._layer_input):
            self.relu_fed.add(layer.name)
            if self.relu_fed_groups and layer.takes_activation_groups(self.relu_fed_groups):
                self.groups.setdefault(layer.name, self.relu_fed_groups)
        if layer.name in self.groups:
            keep = relax.Var(f"{layer.name}::keep", relax.TensorType((), "int64"))
            self.keep_inputs[layer.name] = keep
            activation = self.builder_.emit(_keep_top(activation, layer.activation_shape, keep, self.groups[layer.name], layer.dtype))
        return super()._emit_layer(layer, choice, activation)

    def _from_relu(self, value) -> bool:
        """Whether ``value`` is a ReLU's output, seen through ops that keep its zeros."""
        while isinstance(value, relax.Var) and value in self.matcher.bindings:
            value = self.matcher.bindings[value]
            if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
                return False
            if value.op.name == "relax.nn.relu":
                return True
            if value.op.name not in _ZERO_PRESERVING:
                return False
            value = value.args[0]
        return False

    def visit_var_binding_(self, binding):
        call = binding.value
        self._layer_input = call.args[0] if isinstance(call, relax.Call) and call.args else None
        return super().visit_var_binding_(binding)


def _as_list(value) -> list[np.ndarray]:
    """VM result (tensor or nested tuple) → flat list of numpy arrays."""
    if isinstance(value, tvm.runtime.Tensor):
        return [value.numpy()]
    return [array for item in value for array in _as_list(item)]


class RelaxWeightFedModel:
    """One compiled Relax module whose layer weights are fed with every run.

    Same interface as :class:`~tvm_tasd.evaluate.WeightFedModel`: ``run``
    returns, per calibration batch, the model's outputs. ``params`` holds the
    values of weights that are function inputs (name → array).
    """

    def __init__(
        self,
        mod: tvm.IRModule,
        calibration: Iterable[Mapping[str, np.ndarray]],
        params: Mapping[str, np.ndarray] | None = None,
        activation_groups: Mapping[str, int] | None = None,
        expose: bool = False,
        relu_fed_groups: int | None = None,
    ):
        from .schedules.llvm import host_target

        self.params = {name: np.asarray(value) for name, value in (params or {}).items()}
        self.calibration = check_feeds(
            calibration,
            [p.name for p in mod["main"].params if p.name not in self.params],
            " (weights given as function inputs come from params=)",
        )
        mod = relax.transform.ToNonDataflow()(mod)  # layer inputs must be visible outside dataflow blocks to expose them
        layers = find_layers(mod, self.params)
        self._layers = {layer.name: layer for layer in layers if not layer.ineligible}
        groups = {name: int(m) for name, m in (activation_groups or {}).items()}
        unknown = sorted(set(groups) - {n for n, l in self._layers.items() if l.op == "matmul"})
        if unknown:
            raise ValueError(f"activation series need eligible matmul layers; not such layers: {unknown}")
        rewriter = _FeedRewriter(mod, self.params, layers, groups, relu_fed_groups, expose)
        rewritten = relax.transform.DeadCodeElimination(["main"])(rewriter.rewrite())
        self._keeps = rewriter.groups
        self._packers = rewriter.packers
        self._weight_inputs = {name: [v.name for v in vs] for name, vs in rewriter.weight_inputs.items()}
        self.relu_fed = frozenset(rewriter.relu_fed)
        self.exposed = list(rewriter.activations) if expose else []
        target = host_target()
        with target:
            self._vm = relax.VirtualMachine(tvm.compile(rewritten, target=target), tvm.cpu())
        self._signature = [p.name for p in rewritten["main"].params]
        self._packed = {name: self._packers[name](layer.weight) for name, layer in self._layers.items()}
        self.evaluations = 0

    @property
    def layer_names(self) -> list[str]:
        return list(self._layers)

    def original(self, name: str) -> np.ndarray:
        return self.layer(name).weight

    def axis(self, name: str) -> int:
        return self.layer(name).axis

    def layer(self, name: str) -> Layer:
        if name not in self._layers:
            raise ValueError(f"{name!r} is not a replaceable layer of this module; layers: {self.layer_names}")
        return self._layers[name]

    @property
    def activation_groups(self) -> dict[str, int]:
        """Layers with an emulated activation series (layer → M)."""
        return dict(self._keeps)

    def _call(self, batch: Mapping[str, np.ndarray], fed: Mapping[str, np.ndarray], exposed: bool = False):
        """The model's outputs on one batch or, with ``exposed``, the exposed layer inputs."""
        values = {**self.params, **batch, **fed}
        arguments = [tvm.runtime.tensor(np.require(values[name], requirements="C")) for name in self._signature]
        result = self._vm["main"](*arguments)
        if not self.exposed:
            return _as_list(result)
        # only what is asked for leaves the VM as numpy: exposed activations are large
        return [a for item in result[1:] for a in _as_list(item)] if exposed else _as_list(result[0])

    def run(self, weights=None, batches: int | None = None, keeps=None) -> list[list[np.ndarray]]:
        """Outputs on the calibration batches (the first ``batches``), with ``weights`` replacing
        the originals they name and ``keeps`` the activation keep counts (default M)."""
        fed = self._fed(weights, keeps)
        self.evaluations += 1
        return [self._call(batch, fed) for batch in self.calibration[:batches]]

    def calibrate(self, progress: bool = True) -> CalibrationStats:
        """Channel statistics of every layer input (needs ``expose=True``), original weights, in one pass."""
        if not self.exposed:
            raise ValueError("calibration reads the layer inputs: build the model with expose=True")
        accumulator = StatsAccumulator()
        fed = self._fed()
        for batch in accumulator.over(self.calibration, progress):
            for name, x in zip(self.exposed, self._call(batch, fed, exposed=True)):
                accumulator.add(name, x, 1 if self.layer(name).op == "conv2d" else -1)
        channels = {name: self.layer(name).grouped_length for name in self.exposed}
        return accumulator.stats({name: [name] for name in self.exposed}, channels, self.relu_fed)

    def _fed(self, weights=None, keeps=None) -> dict[str, np.ndarray]:
        weights = dict(weights or {})
        for name, value in weights.items():
            original = self.layer(name).weight
            if np.shape(value) != original.shape:
                raise ValueError(f"weight {name!r} has shape {np.shape(value)}, the model's is {original.shape}")
        fed = {}
        for name, packed in self._packed.items():
            if name in weights:
                packed = self._packers[name](np.asarray(weights[name], dtype=self._layers[name].weight.dtype))
            fed.update(zip(self._weight_inputs[name], packed))
        unknown = set(keeps or {}) - set(self._keeps)
        if unknown:
            raise ValueError(f"no activation keep count for {sorted(unknown)}; pass them in activation_groups")
        for name, m in self._keeps.items():
            fed[f"{name}::keep"] = np.array((keeps or {}).get(name, m), np.int64)
        return fed


def calibrate_relax(mod: tvm.IRModule, calibration, params=None, progress: bool = True) -> CalibrationStats:
    """:func:`~tvm_tasd.calibration.calibrate` for a Relax module: one pass, every layer input exposed."""
    return RelaxWeightFedModel(mod, calibration, params=params, expose=True).calibrate(progress)

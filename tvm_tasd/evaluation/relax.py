"""The Relax evaluator: one TVM build of an IRModule whose layer weights are function inputs.

So that :func:`tvm_tasd.tasder.search` takes a Relax ``IRModule`` as well as
an ONNX model. The module is rewritten once by the pass's own layer rewrite
(:func:`~tvm_tasd.transform.rewrite_layers`, through its public
:class:`~tvm_tasd.transform.LayerHook`): every eligible layer runs through
the scheduled dense CPU kernel of ``tvm_tasd.schedules``, with its *packed*
weight as a new function input instead of a constant, and the module is
compiled for the host. Each run packs the given weights in numpy and feeds
them, so evaluating a candidate never recompiles.

Activation series are emulated as on the ONNX path:
:func:`~tvm_tasd.evaluation.keep_top.keep_top` as Relax ops before the layer,
with a keep-count input. The module also returns every layer's input, which
:meth:`RelaxWeightFedModel.calibrate` reads, so one build serves both
calibration and the search.

Not handled: layers TASD leaves dense anyway (ineligible ones,
:mod:`tvm_tasd.matcher`) keep their own weight and cannot be replaced;
models run on the host CPU only; non-layer ops get the default CPU schedules
(``schedules/llvm_default.py``), and each run also exposes the layer inputs,
so large models may evaluate slower than through onnxruntime.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np
import tvm
from tvm import relax

from ..hardware import load_target
from ..layer import Layer
from ..matcher import find_layers
from ..pipeline import compile_module
from ..policy import Choice
from ..schedules.llvm import host_target
from ..schedules.selection import kernels_for
from ..transform import LayerHook, rewrite_layers
from .base import WeightFedModel
from .calibration import CalibrationStats, Feed, StatsAccumulator, check_feeds, takes_hessian
from .keep_top import TO_CHANNELS_LAST, keep_top


class RelaxOps:
    """:func:`~tvm_tasd.evaluation.keep_top.keep_top` as Relax ops; ``shape`` is the static shape of the
    tensor it groups (a conv's input channels last)."""

    def __init__(self, shape: tuple[int, ...], dtype: str, builder: relax.BlockBuilder):
        self.shape, self.dtype, self.builder = shape, np.dtype(dtype), builder

    @staticmethod
    def constant(value):
        return relax.const(np.asarray(value))

    @staticmethod
    def reshape(x, shape):
        return relax.op.reshape(x, shape)

    def reshape_as(self, x, _like):
        return relax.op.reshape(x, self.shape)

    @staticmethod
    def cast(x, dtype: str):
        return relax.op.astype(x, dtype)

    def descending_order(self, key, _m: int):
        return relax.op.argsort(key, axis=1, descending=True, dtype="int64")

    def positions(self, order, m: int):
        groups = int(np.prod(self.shape, dtype=np.int64)) // m
        updates = relax.op.broadcast_to(relax.const(np.arange(m)[None], "int64"), (groups, m))
        return relax.op.scatter_elements(order, order, updates, axis=1)

    def transpose(self, x, perm):  # bound, so that the reshape after it sees its type
        return self.builder.emit(relax.op.permute_dims(x, list(perm)))

    def add(self, a, b):
        return self.builder.emit(relax.op.add(a, b))

    def subtract(self, a, b):
        return self.builder.emit(relax.op.subtract(a, b))

    abs = staticmethod(relax.op.abs)
    where = staticmethod(relax.op.where)
    equal = staticmethod(relax.op.equal)
    less = staticmethod(relax.op.less)


class _FeedHook(LayerHook):
    """Packed weights and keep counts become inputs of ``main``; every layer input becomes an output."""

    def __init__(self, groups: Mapping[str, int]):
        self.groups = groups
        self.weight_inputs: dict[str, list[relax.Var]] = {}
        self.keep_inputs: dict[str, relax.Var] = {}
        self.packers: dict[str, Callable[[np.ndarray], list[np.ndarray]]] = {}
        self.activations: dict[str, relax.Expr] = {}

    def layer_input(self, layer: Layer, x, builder):
        self.activations[layer.name] = x
        if layer.name not in self.groups:
            return x
        keep = relax.Var(f"{layer.name}::keep", relax.TensorType((), "int64"))
        self.keep_inputs[layer.name] = keep
        conv = layer.op == "conv2d"
        shape = tuple(layer.activation_shape[i] for i in TO_CHANNELS_LAST) if conv else layer.activation_shape
        return builder.emit(keep_top(x, keep, self.groups[layer.name], RelaxOps(shape, layer.dtype, builder),
                                     channels_first=conv, shift=layer.input_shift))

    def weight_operands(self, layer: Layer, kernel, packed):
        self.packers[layer.name] = lambda w: kernel.pack(np.ascontiguousarray(w.T if layer.axis == 1 and layer.op == "matmul" else w))
        inputs = [relax.Var(f"{layer.name}::packed{i}", relax.TensorType(a.shape, str(a.dtype))) for i, a in enumerate(packed)]
        self.weight_inputs[layer.name] = inputs
        return inputs

    def function(self, func: relax.Function, builder: relax.BlockBuilder) -> relax.Function:
        body = func.body
        result = builder.normalize(relax.Tuple([body.body, *self.activations.values()]))
        inputs = [v for vs in self.weight_inputs.values() for v in vs] + list(self.keep_inputs.values())
        attrs = {k: v for k, v in (func.attrs or {}).items() if k != "num_input"}  # the inputs changed
        return relax.Function([*func.params, *inputs], relax.SeqExpr(body.blocks, result), result.ty,
                              attrs=tvm.ir.DictAttrs(attrs))


def _leaves(ty) -> int:
    """How many tensors a (possibly nested) tuple type holds."""
    return sum(_leaves(field) for field in ty.fields) if isinstance(ty, relax.TupleType) else 1


def _as_list(value) -> list[np.ndarray]:
    """VM result (tensor or nested tuple) → flat list of numpy arrays."""
    if isinstance(value, tvm.runtime.Tensor):
        return [value.numpy()]
    return [array for item in value for array in _as_list(item)]


class RelaxWeightFedModel(WeightFedModel):
    """A Relax module compiled once for the host, layer weights fed per run.

    ``params`` holds the values of weights that are function inputs (name → array).
    """

    def __init__(
        self,
        mod: tvm.IRModule,
        calibration: Iterable[Feed],
        params: Mapping[str, np.ndarray] | None = None,
        activation_groups: Mapping[str, int] | None = None,
        activation_fed_groups: int | None = None,
    ):
        self.params = {name: np.asarray(value) for name, value in (params or {}).items()}
        feeds = check_feeds(
            calibration,
            [p.name for p in mod["main"].params if p.name not in self.params],
            " (weights given as function inputs come from params=)",
        )
        mod = relax.transform.ToNonDataflow()(mod)  # layer inputs must be visible outside dataflow blocks to expose them
        layers = find_layers(mod, self.params)
        weights = {layer.name: (layer.weight, layer.axis) for layer in layers if not layer.ineligible}
        super().__init__(feeds, layers, weights, activation_groups, activation_fed_groups)
        hook = _FeedHook(self._groups)
        choices = {name: Choice(name, reason="fed per run") for name in weights}
        kernels = kernels_for(load_target("cpu-emulated"), host_target())
        rewritten, _ = rewrite_layers(mod, choices, kernels, self.params, dense_kernels=True, hook=hook,
                                      every_dense_layer=True)
        target = host_target()
        with target:
            self._vm = relax.VirtualMachine(compile_module(rewritten, target), tvm.cpu())
        self._signature = [p.name for p in rewritten["main"].params]
        self._packers = hook.packers
        self._weight_inputs = {name: [v.name for v in vs] for name, vs in hook.weight_inputs.items()}
        self._packed_originals = {name: self._packers[name](weight) for name, weight in self._weights.items()}
        self._exposed = list(hook.activations)
        self._output_count = _leaves(mod["main"].ret_ty)

    @property
    def output_names(self) -> list[str]:
        """``output_0``, ``output_1``… (a Relax function's results have no names)."""
        return [f"output_{i}" for i in range(self._output_count)]

    def _inputs(self, weights, keeps) -> dict[str, np.ndarray]:
        inputs = {f"{name}::keep": np.array(keep, np.int64) for name, keep in keeps.items()}
        for name, weight in weights.items():
            packed = self._packed_originals[name] if weight is self._weights[name] else self._packers[name](weight)
            inputs.update(zip(self._weight_inputs[name], packed))
        return inputs

    def _call(self, batch: Feed, inputs: Mapping[str, np.ndarray], exposed: bool) -> list[np.ndarray]:
        """The model's outputs on one batch or, with ``exposed``, the exposed layer inputs."""
        values = {**self.params, **batch, **inputs}
        arguments = [tvm.runtime.tensor(np.require(values[name], requirements="C")) for name in self._signature]
        result = self._vm["main"](*arguments)
        # only what is asked for leaves the VM as numpy: exposed activations are large
        return [a for item in result[1:] for a in _as_list(item)] if exposed else _as_list(result[0])

    def _run(self, batch, inputs) -> list[np.ndarray]:
        return self._call(batch, inputs, exposed=False)

    def calibrate(self, progress: bool = True, hessians: bool = False,
                  feeds: list[Feed] | None = None) -> CalibrationStats:
        accumulator = StatsAccumulator()
        inputs = self._inputs(self._weights, self._groups)  # original weights, every activation whole
        layers = {layer.name: layer for layer in self.layers}
        for batch in accumulator.over(self.calibration if feeds is None else feeds, progress):
            for name, x in zip(self._exposed, self._call(batch, inputs, exposed=True)):
                accumulator.add(name, x, -1 if layers[name].op == "matmul" else 1)
                if hessians and takes_hessian(layers[name]):
                    accumulator.add_gram(name, layers[name], x)
        channels = {name: layers[name].grouped_length for name in self._exposed}
        return accumulator.stats({name: [name] for name in self._exposed}, channels, self.relu_fed, layers)

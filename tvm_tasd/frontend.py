"""Model import: ONNX → Relax IRModule, keeping every weight's source name.

TVM's ONNX importer turns initializers into anonymous constants once they
are bound. Plans name layers by the *source* weight name (the ONNX
initializer, e.g. ``encoder.layer.0.attention.self.query.weight``), so this
module imports with the parameters as named inputs, records a content
fingerprint → name map in the module attribute ``tasd_weight_names``, and
then binds the parameters as constants. :mod:`tvm_tasd.transform` reads the
map to name the layers it rewrites; a module without it gets positional
names (``matmul_0``, ``conv2d_1``…).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

WEIGHT_NAMES_ATTR = "tasd_weight_names"


class ModelImportError(ValueError):
    """The model cannot be imported; the message says why and what to do."""


def fingerprint(array: np.ndarray) -> str:
    """Content hash of a tensor (shape, dtype and bytes)."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha1(f"{array.shape}{array.dtype}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()[:20]


@dataclass
class ImportedModel:
    """A Relax module plus what a runner needs to feed it."""

    mod: tvm.IRModule
    params: dict[str, np.ndarray]
    inputs: dict[str, tuple[tuple[int, ...], str]]
    outputs: list[str] = field(default_factory=list)


def load_onnx(model):
    """A ModelProto from a ModelProto or a path, with one-line errors for missing or non-ONNX files."""
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    path = os.fspath(model)
    if not os.path.exists(path):
        raise ModelImportError(f"model file {path!r} does not exist")
    try:
        return onnx.load(path)
    except Exception as err:  # onnx raises DecodeError/ValueError/… for non-ONNX bytes
        raise ModelImportError(f"{path!r} is not an ONNX model ({type(err).__name__}); export it with torch.onnx.export") from None


def _input_shapes(proto, overrides):
    initializers = {init.name for init in proto.graph.initializer}
    shapes = {}
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        shape = overrides.get(value.name, dims)
        if any(d is None or d <= 0 for d in shape):
            raise ModelImportError(
                f"input {value.name!r} has a dynamic shape {dims}; give it a fixed one, "
                f"e.g. input_shapes={{'{value.name}': [1, ...]}} (CLI: --input-shapes \"{value.name}:[1,...]\")"
            )
        import onnx

        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        shapes[value.name] = (tuple(int(d) for d in shape), dtype)
    unknown = set(overrides) - set(shapes)
    if unknown:
        raise ModelImportError(f"input shapes given for unknown inputs {sorted(unknown)}; the model's inputs are {sorted(shapes)}")
    return shapes


def weight_name_map(params: dict[str, np.ndarray]) -> dict[str, str]:
    """Fingerprint → name for every weight, also for the transposed 2-D view
    (constant folding of Gemm's transB turns (N, K) into (K, N))."""
    names = {}
    for name, value in params.items():
        names.setdefault(fingerprint(value), name)
        if value.ndim == 2:
            names.setdefault(fingerprint(value.T), name)
    return names


def from_onnx(model, input_shapes: dict | None = None, keep_params_in_input: bool = False) -> ImportedModel:
    """Import an ONNX file or ModelProto with static input shapes.

    ``keep_params_in_input=False`` (default) binds weights as constants, the
    mode :class:`~tvm_tasd.transform.TASDRewrite` decomposes on its own.
    ``True`` leaves them as named function inputs; pass the returned
    ``params`` to ``TASDRewrite(..., params=...)`` then.
    """
    from onnx import numpy_helper
    from tvm.relax.frontend import onnx as onnx_frontend

    proto = load_onnx(model)
    shapes = _input_shapes(proto, {k: list(v) for k, v in (input_shapes or {}).items()})
    try:
        mod = onnx_frontend.from_onnx(
            proto, shape_dict={k: list(s) for k, (s, _) in shapes.items()}, keep_params_in_input=keep_params_in_input
        )
    except Exception as err:  # the importer raises many TVM-internal types; report them as one
        first_line = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        hint = " (try keep_params_in_input=False)" if keep_params_in_input else ""
        raise ModelImportError(f"TVM's ONNX importer cannot read this model{hint}: {first_line}") from None
    params = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    if keep_params_in_input:
        mod, detached = relax.frontend.detach_params(mod)
        names = [p.name for p in mod["main"].params[len(shapes) :]]
        params = {name: value.numpy() for name, value in zip(names, detached.get("main", []))}
    mod = mod.with_attr(WEIGHT_NAMES_ATTR, weight_name_map(params))
    outputs = [o.name for o in proto.graph.output]
    return ImportedModel(mod, params, shapes, outputs)

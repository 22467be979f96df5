"""Model import: ONNX or a PyTorch ``.pt2`` program → Relax IRModule, keeping every weight's source name.

TVM's ONNX importer turns initializers into anonymous constants once they
are bound. Plans name layers by the *source* weight name (the ONNX
initializer, e.g. ``encoder.layer.0.attention.self.query.weight``), so this
module imports with the parameters as named inputs, records a content
fingerprint → name map in the module attribute ``tasd_weight_names``, and
then binds the parameters as constants. :mod:`tvm_tasd.matcher` reads the
map to name the layers; a module without it gets positional names
(``matmul_0``, ``conv2d_1``…). A ``torch.export`` program (:func:`from_pt2`,
needs torch) names its layers by their PyTorch parameter names the same way.
:func:`import_model` reads either file.
"""

from __future__ import annotations

import contextlib
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import tvm
from onnx import helper, numpy_helper
from tvm import relax
from tvm.relax.frontend import onnx as onnx_frontend

from .io import fingerprint
from .reference import canonical

WEIGHT_NAMES_ATTR = "tasd_weight_names"
MAX_ELEMENTS = 2**31 - 1  # per input tensor


class ModelImportError(ValueError):
    """The model cannot be imported; the message says why and what to do."""


@dataclass
class ImportedModel:
    """A Relax module plus what a runner needs to feed it."""

    mod: tvm.IRModule
    params: dict[str, np.ndarray]
    inputs: dict[str, tuple[tuple[int, ...], str]]
    outputs: list[str] = field(default_factory=list)


def load_onnx(model) -> onnx.ModelProto:
    """A ModelProto from a ModelProto or a path, with one-line errors for missing or non-ONNX files,
    in canonical form (:func:`~tvm_tasd.reference.canonical`: computed weights folded into initializers, batch
    norms after convs into their weights, batch norms after ReLUs into the next layer)."""
    if isinstance(model, onnx.ModelProto):
        return canonical(model)
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"expected an ONNX model (path or ModelProto), got {type(model).__name__}")
    path = os.fspath(model)
    if not os.path.exists(path):
        raise ModelImportError(f"model file {path!r} does not exist")
    try:
        proto = onnx.load(path)
    except Exception as err:  # onnx raises DecodeError/ValueError/… for non-ONNX bytes
        raise ModelImportError(f"{path!r} is not an ONNX model ({type(err).__name__}); export it with torch.onnx.export") from None
    return canonical(proto)


def check_input_shape(name: str, declared: list, given, what: str = "the shape given") -> None:
    """A shape given for an input must keep the model's rank and the dimensions it fixes (None: free)."""
    given = list(given)
    if len(given) != len(declared):
        raise ModelImportError(f"input {name!r} has {len(declared)} dimensions {declared}; {what} has "
                               f"{len(given)}: {given}")
    for axis, (fixed, size) in enumerate(zip(declared, given)):
        if fixed is not None and fixed > 0 and fixed != size:
            raise ModelImportError(f"input {name!r} fixes dimension {axis} to {fixed}; {what} has {size} there ({given})")


def declared_inputs(proto: onnx.ModelProto) -> dict[str, tuple[list | None, np.dtype]]:
    """Graph inputs that are not initializers: name → (dimensions, None where free, or None if unknown; dtype)."""
    initializers = {init.name for init in proto.graph.initializer}
    declared = {}
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        declared[value.name] = (dims if tensor.HasField("shape") else None, helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    return declared


def _input_shapes(proto, overrides):
    shapes = {}
    for name, (dims, dtype) in declared_inputs(proto).items():
        shape = overrides.get(name, dims or [])
        if name in overrides and dims is not None:
            check_input_shape(name, dims, shape)
        if any(d is None or d <= 0 for d in shape):
            raise ModelImportError(
                f"input {name!r} has a dynamic shape {dims}; give it a fixed one, "
                f"e.g. input_shapes={{'{name}': [1, ...]}} (CLI: --input-shapes \"{name}:[1,...]\")"
            )
        if math.prod(shape) > MAX_ELEMENTS:
            raise ModelImportError(f"input {name!r} of shape {list(shape)} has {math.prod(shape):,} elements; "
                                   f"TVM indexes a tensor with int32 here, so at most {MAX_ELEMENTS:,}")
        shapes[name] = (tuple(int(d) for d in shape), dtype.name)
    unknown = set(overrides) - set(shapes)
    if unknown:
        raise ModelImportError(f"input shapes given for unknown inputs {sorted(unknown)}; the model's inputs are {sorted(shapes)}")
    return shapes


def weight_name_map(params: dict[str, np.ndarray], uses: list[str] | None = None) -> dict[str, list[str]]:
    """Fingerprint → the names of the weights with that content, one entry per use in program order.

    ``uses`` lists the weights as the model's nodes read them (a weight read
    twice appears twice); weights it leaves out follow in ``params`` order.
    Equal-valued weights share a fingerprint, so the matcher tells them
    apart by the order they are used in. The transposed 2-D view is mapped
    too (constant folding of Gemm's transB turns (N, K) into (K, N)).
    """
    order = [name for name in uses or [] if name in params]
    used = set(order)
    order += [name for name in params if name not in used]
    names: dict[str, list[str]] = {}
    for name in order:
        value = params[name]
        names.setdefault(fingerprint(value), []).append(name)
        if value.ndim == 2:
            names.setdefault(fingerprint(value.T), []).append(name)
    return names


def from_onnx(model, input_shapes: dict | None = None, keep_params_in_input: bool = False) -> ImportedModel:
    """Import an ONNX file or ModelProto with static input shapes.

    ``keep_params_in_input=False`` (default) binds weights as constants, the
    mode :class:`~tvm_tasd.transform.TASDRewrite` decomposes on its own.
    ``True`` leaves them as named function inputs; pass the returned
    ``params`` to ``TASDRewrite(..., params=...)`` then.
    """
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
    uses = [name for node in proto.graph.node for name in node.input]
    mod = mod.with_attr(WEIGHT_NAMES_ATTR, weight_name_map(params, uses))
    outputs = [o.name for o in proto.graph.output]
    return ImportedModel(mod, params, shapes, outputs)


def model_format(path, given: str | None = None) -> str:
    """``"onnx"`` or ``"pt2"`` (from the suffix unless given), once the file is known to exist."""
    path = Path(path)
    if not path.is_file():
        raise ModelImportError(f"model file {path} does not exist")
    return given or ("pt2" if path.suffix == ".pt2" else "onnx")


def import_model(path, input_shapes: dict | None = None, fmt: str | None = None):
    """ONNX or PyTorch ``.pt2`` → :class:`~tvm_tasd.frontend.ImportedModel` (weights bound, source names kept)."""
    path = Path(path)
    if model_format(path, fmt) == "pt2":
        return from_pt2(path, input_shapes)
    return from_onnx(path, input_shapes)


#: Archive members torch reads with plain ``pickle`` (Python objects, not tensors): loading them runs code.
_PICKLED_OBJECTS = ("data/constants/custom_obj_", "data/constants/opaque_obj_")


@contextlib.contextmanager
def _weights_only_loads():
    """Make every ``torch.load`` inside the block weights-only, even where torch's .pt2 reader asks for
    ``weights_only=False``: a weight file cannot smuggle a pickle payload in."""
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


def _check_pt2_archive(path) -> None:
    """A .pt2 is a zip; refuse one holding pickled Python objects before torch opens it."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        raise ModelImportError(f"{path} is not a PyTorch exported program (torch.export.save writes a zip archive)") from None
    pickled = [name for name in names if any(marker in name for marker in _PICKLED_OBJECTS)]
    if pickled:
        raise ModelImportError(f"{path} holds pickled Python objects ({pickled[0]}), which loading would execute; "
                               "only programs whose constants are tensors are read")


def from_pt2(path, input_shapes: dict | None = None) -> ImportedModel:
    """A ``torch.export`` program; layers are named by their PyTorch parameter names.

    Loaded the safest way torch allows: the archive is refused if it holds
    pickled objects, and every tensor is read weights-only.
    """
    try:
        import torch
    except ImportError:
        raise ModelImportError("reading a PyTorch .pt2 program needs torch: pip install -e '.[models]'") from None
    from tvm.relax.frontend.torch import from_exported_program  # imports torch: only for .pt2 programs

    _check_pt2_archive(path)
    try:
        with _weights_only_loads():
            program = torch.export.load(str(path))
    except Exception as err:  # noqa: BLE001 — torch raises many types for a file that is no program
        raise ModelImportError(f"{path} is not a PyTorch exported program (torch.export.save), or holds more than "
                               f"tensors: {type(err).__name__}") from None
    placeholders = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    inputs = {}
    for name in program.graph_signature.user_inputs:
        value = placeholders[name].meta["val"]
        if not all(isinstance(d, int) for d in value.shape):
            raise ModelImportError(f"input {name!r} of {path} has a dynamic shape {tuple(value.shape)}; "
                                   "export it with fixed shapes")
        inputs[name] = (tuple(value.shape), str(value.dtype).removeprefix("torch."))
    wanted = {name: tuple(shape) for name, shape in (input_shapes or {}).items()}
    if any(inputs.get(name, (None,))[0] != shape for name, shape in wanted.items()):
        fixed = ", ".join(f"{n}:{list(s)}" for n, (s, _) in inputs.items())
        raise ModelImportError(f"a .pt2 program fixes its input shapes when exported ({fixed}); re-export to change them")
    params = {name: tensor.detach().numpy() for name, tensor in program.state_dict.items()}
    mod = from_exported_program(program).with_attr(WEIGHT_NAMES_ATTR, weight_name_map(params))
    return ImportedModel(mod, params, inputs, list(program.graph_signature.user_outputs))

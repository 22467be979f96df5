"""Shared helpers for exporting PyTorch models to ONNX at fixed shapes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


def cache_dir() -> Path:
    """Where exported models are cached (``$TASD_CACHE`` or ~/.cache/tvm_tasd)."""
    path = Path(os.environ.get("TASD_CACHE", Path.home() / ".cache" / "tvm_tasd"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def rename_initializers(model, named_tensors: dict[str, np.ndarray]) -> None:
    """Give each ONNX initializer the source name of the tensor it holds.

    The dynamo exporter folds ``W.T`` into anonymous constants (``val_56``);
    a value equal to a source tensor or its transpose takes that tensor's
    name, so plans can name layers as PyTorch does.
    """
    from onnx import numpy_helper

    from tvm_tasd.frontend import fingerprint

    by_print = {}
    for name, value in named_tensors.items():
        by_print.setdefault(fingerprint(value), name)
        if value.ndim == 2:
            by_print.setdefault(fingerprint(np.ascontiguousarray(value.T)), name)
    renames = {}
    for init in model.graph.initializer:
        source = by_print.get(fingerprint(numpy_helper.to_array(init)))
        if source and source not in renames.values():
            renames[init.name] = source
    for init in model.graph.initializer:
        init.name = renames.get(init.name, init.name)
    for node in model.graph.node:
        node.input[:] = [renames.get(i, i) for i in node.input]


def export_onnx(module, args: tuple, path: Path, input_names, output_names, named_tensors) -> Path:
    """``torch.onnx.export(dynamo=True)`` at fixed shapes, atomically written, names restored."""
    import onnx
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        with torch.no_grad():
            torch.onnx.export(
                module.eval(), args, str(raw), dynamo=True, input_names=input_names,
                output_names=output_names, verbose=False,
            )
        model = onnx.load(str(raw))
        rename_initializers(model, named_tensors)
        final = Path(tmp) / "final.onnx"
        onnx.save(model, str(final))
        os.replace(final, path)
    return path

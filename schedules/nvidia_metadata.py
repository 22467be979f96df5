"""NVIDIA's 2:4 sparse operand format: what ``mma.sp`` reads, from this project's terms.

This project stores an N:M term as kept values plus uint8 positions inside
each group of M (``tvm_tasd.decompose``). NVIDIA's 2:4 sparse tensor core
(PTX ISA §9.7.14.6 "Sparse matrix storage"; the CUTLASS / cuSPARSELt format)
wants, for a row-major operand A (rows × K) that is sparse along K:

* **values** — per row, the 2 kept values of every 4-wide chunk, ascending
  by position: a (rows, K/2) matrix;
* **metadata** — per kept value its 2-bit position in the chunk; a chunk's
  two positions form a nibble (first kept value in bits 0–1, second in bits
  2–3), and the 4 chunks of 16 columns form one 16-bit word per row: the
  logical metadata matrix (rows, K/16) uint16 (:func:`row_metadata`). CUTLASS
  stores this matrix reordered for its tile loaders (PyTorch's
  ``_semi_structured_conversions`` re-implements that reordering);
* **per mma.sp.m16n8k16 (.f16) tile** (16 rows × 16 columns) the metadata
  register of the selected thread of quad g (lanes 4g…4g+3) holds row g in
  bits 0–15 and row g + 8 in bits 16–31; the A fragment of lane 4g + t
  holds the compressed columns 2t, 2t+1 of rows g (a0, a1) and g + 8 (a2,
  a3) (:func:`mma_sp_operands`).

The two positions of a chunk must differ (PTX: metadata nibbles 0b0000,
0b0101, 0b1010, 0b1111 are invalid), and ``mma.sp::ordered_metadata`` wants
them ascending; a chunk with fewer than two nonzeros is therefore completed
with zero values at its lowest free positions. Any tensor whose aligned
4-chunks hold ≤ 2 nonzeros converts: 2:4, 1:4, 1:8, 2:8, 1:2 terms all do.
"""

from __future__ import annotations

import numpy as np

from .nm_pack import pad_to

#: Rows and columns of A that one mma.sp.m16n8k16 covers.
TILE_ROWS = 16
TILE_K = 16
CHUNK = 4


def to_2of4(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense rows (R, K), sparse along K → (values (R, K4/2), positions uint8 (R, K4/2)).

    K4 is K padded with zeros to a multiple of 4. Raises if an aligned
    4-chunk holds more than two nonzeros.
    """
    chunks = pad_to(np.asarray(rows), 1, CHUNK).reshape(rows.shape[0], -1, CHUNK)
    nonzero = chunks != 0
    worst = int(nonzero.sum(axis=2).max(initial=0))
    if worst > 2:
        raise ValueError(f"not a 2:4 tensor: an aligned chunk of 4 holds {worst} nonzeros")
    # nonzeros first, then the lowest free positions; keep two, ascending
    order = np.argsort(np.where(nonzero, 0, CHUNK) + np.arange(CHUNK), axis=2, kind="stable")
    positions = np.sort(order[:, :, :2], axis=2)
    values = np.take_along_axis(chunks, positions, axis=2)
    return values.reshape(rows.shape[0], -1), positions.reshape(rows.shape[0], -1).astype(np.uint8)


def from_2of4(values: np.ndarray, positions: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`to_2of4`: the dense rows (R, k)."""
    r = values.shape[0]
    dense = np.zeros((r, values.shape[1] // 2, CHUNK), values.dtype)
    np.put_along_axis(dense, positions.reshape(r, -1, 2).astype(np.intp), values.reshape(r, -1, 2), axis=2)
    return dense.reshape(r, -1)[:, :k]


def _pad_positions(positions: np.ndarray, multiple: int, rows: int = 1) -> np.ndarray:
    """Pad the compressed axis to ``multiple`` and the rows to ``rows`` with chunks at
    positions (0, 1), the valid empty chunk."""
    positions = np.asarray(positions, np.uint8)
    shape = (positions.shape[0] + (-positions.shape[0]) % rows, positions.shape[1] + (-positions.shape[1]) % multiple)
    padded = np.tile(np.array([0, 1], np.uint8), (shape[0], shape[1] // 2))
    padded[: positions.shape[0], : positions.shape[1]] = positions
    return padded


def row_metadata(positions: np.ndarray) -> np.ndarray:
    """2:4 positions (R, K4/2) → NVIDIA's logical metadata matrix (R, K16/16) uint16.

    Bit 2·e of a row's word for columns 16c…16c+15 starts the position of its
    compressed entry 8c + e. Chunks past K (padding to 16) get positions (0, 1).
    """
    bits = _pad_positions(positions, TILE_K // 2).astype(np.uint16)
    words = bits.reshape(bits.shape[0], -1, TILE_K // 2) << (2 * np.arange(TILE_K // 2, dtype=np.uint16))
    return np.bitwise_or.reduce(words, axis=2).astype(np.uint16)


def row_positions(metadata: np.ndarray) -> np.ndarray:
    """Inverse of :func:`row_metadata`: positions (R, 8 · metadata columns) uint8."""
    words = np.asarray(metadata, np.uint16)[:, :, None] >> (2 * np.arange(TILE_K // 2, dtype=np.uint16))
    return (words & 3).astype(np.uint8).reshape(words.shape[0], -1)


def mma_sp_operands(values: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2:4 values/positions (R, K4/2) → operands of mma.sp.m16n8k16 tiles, in register order.

    Returns ``a`` (R16/16, K16/16, 32, 4) float16 — lane 4g + t's four A
    registers halves: (row g, cols 2t, 2t+1), (row g+8, cols 2t, 2t+1) — and
    ``e`` (R16/16, K16/16, 8) uint32 — the metadata word of quad g (row g in
    the low half, row g + 8 in the high half). Rows are padded to 16 and K
    to 16 with zero values at positions (0, 1).
    """
    vals = pad_to(pad_to(np.asarray(values, np.float16), 1, TILE_K // 2), 0, TILE_ROWS)
    pos = _pad_positions(positions, TILE_K // 2, TILE_ROWS)
    row_tiles, k_tiles = vals.shape[0] // TILE_ROWS, vals.shape[1] // (TILE_K // 2)
    # (row tile, half h, g, k tile, t, slot) → (row tile, k tile, g, t, h, slot)
    a = vals.reshape(row_tiles, 2, 8, k_tiles, 4, 2).transpose(0, 3, 2, 4, 1, 5).reshape(row_tiles, k_tiles, 32, 4)
    meta = row_metadata(pos).astype(np.uint32).reshape(row_tiles, 2, 8, k_tiles)
    e = (meta[:, 0] | (meta[:, 1] << 16)).transpose(0, 2, 1)
    return np.ascontiguousarray(a), np.ascontiguousarray(e)

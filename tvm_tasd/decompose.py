"""TASD decomposition: N:M terms, greedy series, compressed storage, errors.

Everything here is plain numpy, vectorised over groups (no Python loop over
groups), and follows ``docs/semantics.md`` §1–§4 exactly:

* groups of M run along the reduction axis; K is zero-padded to a multiple
  of M and padding never counts as a kept value;
* a term keeps the N entries of each group with the largest score, ties to
  the lower index; entries already zero in the residual are never preferred
  over a nonzero one, so a series whose N's reach M is exact under any score;
* a series is greedy on the residual: ``T1 = NM(W)``, ``T2 = NM(W − T1)``, …;
* the kept values are always the tensor's own; the score only decides which.

Scores: ``"magnitude"`` (|w|, the paper's rule) or a per-channel scale vector
``s`` of length K (``|w|·s_k``, the activation-aware Wanda-style rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import NMPattern, TASDConfig

#: Reduction axis of each weight layout the project knows (docs/semantics.md §1).
LAYOUT_AXIS = {
    "matmul": 0,  # (K, N) constant of matmul(x, W)
    "linear": 1,  # (N, K) PyTorch Linear / ONNX Gemm transB=1
    "oihw": 1,  # conv2d weight: groups along input channels
    "activation": -1,  # (…, K) runtime tensor
}

Score = "str | np.ndarray | None"


def _float_array(x, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.name not in ("float16", "float32", "float64", "bfloat16"):
        raise TypeError(
            f"{what} must be float16, bfloat16, float32 or float64, got {arr.dtype}; "
            "integer (quantised) and complex tensors are not decomposed — cast to float first"
        )
    if arr.ndim == 0:
        raise ValueError(f"{what} is a scalar; N:M groups need at least one axis")
    if not np.all(np.isfinite(arr.astype(np.float32))):
        raise ValueError(f"{what} contains NaN or inf; N:M selection is undefined for it")
    return arr


def resolve_axis(axis: "int | str", ndim: int) -> int:
    """Accept an int axis or a layout name from :data:`LAYOUT_AXIS`."""
    if isinstance(axis, str):
        if axis not in LAYOUT_AXIS:
            raise ValueError(f"unknown layout {axis!r}; choose one of {sorted(LAYOUT_AXIS)} or an int axis")
        axis = LAYOUT_AXIS[axis]
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise ValueError(f"axis must be an int or a layout name ({', '.join(sorted(LAYOUT_AXIS))}), got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} out of range for a {ndim}-d tensor")
    return axis % ndim


def channel_scale(score: Score, k: int, name: str | None = None) -> np.ndarray | None:
    """Validate a score: None/"magnitude" → None, else a length-K scale vector."""
    where = f" for layer {name!r}" if name else ""
    if score is None or (isinstance(score, str) and score == "magnitude"):
        return None
    if isinstance(score, str):
        if score == "activation":
            raise ValueError(
                f"score 'activation'{where} needs the per-channel scale vector s "
                "(collect it from calibration data, or take it from a plan)"
            )
        raise ValueError(f"unknown score {score!r}{where}; use 'magnitude' or a scale vector")
    s = np.asarray(score, dtype=np.float64).reshape(-1)
    if s.shape[0] != k:
        raise ValueError(f"scale vector{where} has {s.shape[0]} entries, the reduction axis has {k}")
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise ValueError(f"scale vector{where} must be finite and non-negative")
    return s.astype(np.float32)


def _padded(x: np.ndarray, axis: int, multiple: int) -> np.ndarray:
    """Zero-pad ``axis`` to a multiple of ``multiple`` (contiguous result)."""
    pad = (-x.shape[axis]) % multiple
    if not pad:
        return np.ascontiguousarray(x)
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return np.pad(x, widths)


def _grouped(x: np.ndarray, axis: int, m: int) -> np.ndarray:
    """View a contiguous, padded tensor as (before, G, m, after): groups on axis 2.

    A free reshape for any axis, so no transpose is ever made.
    """
    before = int(np.prod(x.shape[:axis], dtype=np.int64))
    after = int(np.prod(x.shape[axis + 1 :], dtype=np.int64))
    return x.reshape(before, x.shape[axis] // m, m, after)


def _first_argmax(score: np.ndarray) -> np.ndarray:
    """argmax over axis 2 of (before, G, m, after), first maximum on ties, shape (…, 1, …).

    When groups are strided (after > 1) a running max over the m slices
    streams contiguous memory and beats ``np.argmax`` on a non-last axis.
    """
    if score.shape[3] == 1:
        return np.expand_dims(np.argmax(score, axis=2), 2)
    best = score[:, :, 0, :].copy()
    position = np.zeros(best.shape, np.intp)
    for j in range(1, score.shape[2]):
        candidate = score[:, :, j, :]
        better = candidate > best  # strict: an earlier equal score keeps the pick
        position[better] = j
        np.maximum(best, candidate, out=best)
    return np.expand_dims(position, 2)


def _top_n_positions(score: np.ndarray, n: int) -> np.ndarray:
    """Positions (ascending) of the n best scores along axis 2, ties to lower index.

    ``score`` is a (before, G, m, after) view that this function overwrites
    at the positions it picks (with -inf). Repeated argmax over the tiny group
    axis — n passes — beats a full argsort; for n > m/2 it instead drops the
    m − n worst (negated argmax from the back, so ties keep the lower index).
    """
    m = score.shape[2]
    if n <= m - n:
        picks = []
        for _ in range(n):
            best = _first_argmax(score)
            np.put_along_axis(score, best, -np.inf, axis=2)
            picks.append(best)
        return picks[0] if n == 1 else np.sort(np.concatenate(picks, axis=2), axis=2)
    negated_reversed = -score[:, :, ::-1, :]
    keep = np.ones(score.shape, bool)
    for _ in range(m - n):
        worst_reversed = _first_argmax(negated_reversed)  # first in reversed order = last minimum
        np.put_along_axis(negated_reversed, worst_reversed, -np.inf, axis=2)
        np.put_along_axis(keep, m - 1 - worst_reversed, False, axis=2)
    rank = np.cumsum(keep, axis=2, dtype=np.int16)
    slots = [np.argmax(rank > r, axis=2) for r in range(n)]  # position of the (r+1)-th kept entry
    return np.stack(slots, axis=2)


@dataclass(frozen=True)
class NMTerm:
    """One N:M term in compressed storage (docs/semantics.md §4).

    ``values`` and ``indices`` have the tensor's shape with the reduction axis
    shrunk from K to ceil(K/M)·N; ``indices`` are uint8 positions in 0…M−1,
    ascending within each group.
    """

    pattern: NMPattern
    axis: int
    shape: tuple[int, ...]
    values: np.ndarray
    indices: np.ndarray

    @property
    def n(self) -> int:
        return self.pattern.n

    @property
    def m(self) -> int:
        return self.pattern.m

    def dense(self) -> np.ndarray:
        """The term as a dense tensor of the original shape."""
        return decompress(self.values, self.indices, self.pattern, self.axis, self.shape[self.axis])

    def transposed(self) -> "NMTerm":
        """The term of the transposed 2-D tensor (a (N, K) weight's term as the (K, N) one's)."""
        if len(self.shape) != 2:
            raise ValueError(f"only a 2-D term transposes; this one has shape {self.shape}")
        axis = 1 - self.axis
        values, indices = compress(self.dense().T, self.pattern, axis)
        return NMTerm(self.pattern, axis, self.shape[::-1], values, indices)

    @property
    def nonzero_density(self) -> float:
        """Share of the tensor's entries this term really holds as nonzeros."""
        return float(np.count_nonzero(self.values)) / max(1, int(np.prod(self.shape)))


def _series(w: np.ndarray, patterns, axis: int, scale: np.ndarray | None) -> tuple[list[NMTerm], np.ndarray]:
    """Greedy extraction of every pattern from a padded working copy of w.

    Returns the terms and the final residual (padded along ``axis``).
    """
    multiple = int(np.lcm.reduce([p.m for p in patterns]))
    residual = _padded(w, axis, multiple)
    residual = residual.copy() if residual is w else residual
    # float64 tensors are scored in float64: float32 would flush tiny values to 0 and tie them
    score = np.abs(residual) if residual.dtype == np.float64 else np.abs(residual, dtype=np.float32)
    if scale is not None:
        shape = [1] * w.ndim
        shape[axis] = residual.shape[axis]
        padded_scale = np.zeros(residual.shape[axis], score.dtype)
        padded_scale[: scale.shape[0]] = scale
        score *= padded_scale.reshape(shape)
    score[residual == 0] = -1.0  # zeros (and padding) never beat a nonzero entry
    out_shape = list(w.shape)
    terms = []
    for pattern in patterns:
        n, m = pattern.n, pattern.m
        groups = _grouped(residual, axis, m)
        positions = _top_n_positions(_grouped(score, axis, m), n)
        values = np.take_along_axis(groups, positions, axis=2)
        np.put_along_axis(groups, positions, 0, axis=2)
        np.put_along_axis(_grouped(score, axis, m), positions, -1.0, axis=2)
        kept_groups = -(-w.shape[axis] // m)  # drop groups that are all padding of a larger lcm
        out_shape[axis] = kept_groups * n
        values = values[:, :kept_groups].reshape(out_shape)
        indices = positions[:, :kept_groups].astype(np.uint8).reshape(out_shape)
        terms.append(NMTerm(pattern, axis, w.shape, values, indices))
    return terms, residual


# ---------------------------------------------------------------- error-compensated (OBS) series

#: Columns per lazy update of the OBS sweep (rounded up to the series' lcm).
_OBS_BLOCK = 128


def _owners(score: np.ndarray, patterns) -> np.ndarray:
    """Which term keeps each entry of a (rows, L) block of scores: the greedy series on ``score``
    (−1: dropped). ``score`` is overwritten; exact zeros must already score −1."""
    rows, width = score.shape
    owner = np.full((rows, width), -1, np.int8)
    for index, pattern in enumerate(patterns):
        view = score.reshape(rows, width // pattern.m, pattern.m, 1)
        positions = _top_n_positions(view, pattern.n)
        slots = owner.reshape(rows, width // pattern.m, pattern.m, 1)
        free = np.take_along_axis(slots, positions, axis=2) < 0  # a full group may pick an owned slot: keep its owner
        np.put_along_axis(slots, positions, np.where(free, index, np.take_along_axis(slots, positions, axis=2)), axis=2)
        np.put_along_axis(view, positions, -np.inf, axis=2)
    return owner


def _checked_hessian(hessian, k: int, name: str | None) -> np.ndarray:
    where = f" of layer {name!r}" if name else ""
    h = np.asarray(hessian, dtype=np.float64)
    if h.shape != (k, k):
        raise ValueError(f"hessian{where} must be {k}×{k} (K×K: for a conv, K = kh·kw·C), got {h.shape}")
    if not np.all(np.isfinite(h)):
        raise ValueError(f"hessian{where} holds NaN or inf")
    if np.any(np.diag(h) < 0):
        raise ValueError(f"hessian{where} has a negative diagonal: it is not XᵀX of the layer's inputs")
    return (h + h.T) / 2


def _reconstructed(w: np.ndarray, patterns, axis: int, hessian, damp: float, name: str | None,
                   refine: bool = False) -> list[NMTerm]:
    """The series' mask and values that minimise ‖(W − Ŵ)X‖ given H = XᵀX: an OBS column sweep.

    Columns are the reduction axis (a conv's is its patch, ordered (kh, kw, C)
    as :func:`_as_rows` says). At the start of every block of L = lcm(M)
    columns the mask of that block is chosen by the greedy series on the OBS
    scores w²/[H⁻¹]²ᵢᵢ of the weights as updated so far; each column is then
    pruned to its mask and the error it leaves is pushed onto the columns not
    yet visited (Frantar & Alistarh, SparseGPT, 2023), in float64. The kept
    values are then re-fitted together to the final mask (:func:`_refit`);
    ``refine`` adds passes of swaps inside groups (:func:`_swap`), each
    re-fitted. Input channels that never fire (zero diagonal) get zero
    weights. A row whose result would have a larger error on H than the
    plain series' mask re-fitted the same way keeps the latter.
    """
    lcm = int(np.lcm.reduce([p.m for p in patterns]))
    rows = _as_rows(w, axis, lcm).astype(np.float64)
    k = rows.shape[1]
    h = _checked_hessian(hessian, k, name)
    if not isinstance(damp, (int, float)) or isinstance(damp, bool) or not 0 <= damp < 1 or not np.isfinite(damp):
        raise ValueError(f"damp is a share of the mean Hessian diagonal, in [0, 1); got {damp!r}")
    width = -(-k // lcm) * lcm
    weights = np.zeros((rows.shape[0], width))
    weights[:, :k] = rows
    full = np.zeros((width, width))
    full[:k, :k] = h
    dead = np.diag(full) == 0
    full[dead, dead] = 1.0
    weights[:, dead] = 0.0
    target = weights.copy()
    full[np.diag_indices(width)] += damp * np.mean(np.diag(full))
    owner = _sweep(weights, _inverse_factor(full, damp, name), patterns, lcm)
    reconstructed = _fitted(target, weights, owner, patterns, full, refine)
    plain = [np.zeros_like(weights) for _ in patterns]
    for term, rows_of_term in zip(_series(w, patterns, axis, None)[0], plain):
        rows_of_term[:, :k] = _as_rows(term.dense(), axis, lcm)
    # Rows are independent problems: where the sweep's greedy masks lose to the plain series (it happens with
    # few calibration rows), a row takes the plain series' mask re-fitted the same way instead, so the layer
    # never does worse than without H.
    plain_wins = np.flatnonzero(_row_errors(rows, plain, h, k) < _row_errors(rows, reconstructed, h, k))
    if plain_wins.size:
        owner = np.full((plain_wins.size, width), -1, np.int8)
        for index, rows_of_term in enumerate(plain):
            owner[rows_of_term[plain_wins] != 0] = index
        refitted = _fitted(target[plain_wins], sum(plain)[plain_wins], owner, patterns, full, refine)
        for mine, theirs in zip(reconstructed, refitted):
            mine[plain_wins] = theirs
    terms = []
    for pattern, rows_of_term in zip(patterns, reconstructed):
        dense = _from_rows(rows_of_term[:, :k], w.shape, axis).astype(w.dtype)
        values, indices = compress(dense, pattern, axis)
        terms.append(NMTerm(pattern, axis, w.shape, values, indices))
    return terms


#: (damped H, its factor) of the last reconstruction: a search reconstructs every series of a layer from one H.
_last_factor: tuple[np.ndarray, np.ndarray] | None = None
#: Largest H kept between calls (two float64 copies of 2048² are 64 MiB); larger ones are factored every time.
_CACHED_FACTOR_MAX_K = 2048


def _inverse_factor(h: np.ndarray, damp: float, name: str | None) -> np.ndarray:
    """The upper Cholesky factor of H⁻¹ that OBS sweeps with (``h`` damped already); reused while H repeats."""
    global _last_factor
    cached = _last_factor
    if cached is not None and np.array_equal(cached[0], h):
        return cached[1]
    try:
        upper = np.linalg.cholesky(np.linalg.inv(h)).T
    except np.linalg.LinAlgError:
        raise ValueError(f"hessian{f' of layer {name!r}' if name else ''} is not positive definite even after "
                         f"damping (damp={damp}); raise damp, or check it is XᵀX of the layer's inputs") from None
    if len(h) <= _CACHED_FACTOR_MAX_K:
        upper.setflags(write=False)
        _last_factor = (h.copy(), upper)
    return upper


def _sweep(weights: np.ndarray, upper: np.ndarray, patterns, lcm: int) -> np.ndarray:
    """SparseGPT's column sweep, in place on ``weights`` (rows × width): which term keeps each entry (−1:
    dropped), ``upper`` being the upper Cholesky factor of H⁻¹."""
    width = weights.shape[1]
    owner = np.full(weights.shape, -1, np.int8)
    block = -(-_OBS_BLOCK // lcm) * lcm
    # Two levels of lazy updates: a column's error reaches the rest of its group at once, the rest of its
    # block after the group (one product), the columns after the block after the block (one product).
    for start in range(0, width, block):
        stop = min(start + block, width)
        local, errors = weights[:, start:stop].copy(), np.zeros((weights.shape[0], stop - start))
        u = upper[start:stop, start:stop]
        for group in range(0, stop - start, lcm):
            end = group + lcm
            columns = local[:, group:end]
            score = np.where(columns != 0, columns**2 / np.diag(u)[group:end] ** 2, -1.0)
            owner[:, start + group : start + end] = owners = _owners(score, patterns)
            for i in range(group, end):
                kept = np.where(owners[:, i - group] >= 0, local[:, i], 0.0)
                errors[:, i] = (local[:, i] - kept) / u[i, i]
                local[:, i + 1 : end] -= np.outer(errors[:, i], u[i, i + 1 : end])
                local[:, i] = kept
            local[:, end:] -= errors[:, group:end] @ u[group:end, end:]
        weights[:, start:stop] = local
        weights[:, stop:] -= errors @ upper[start:stop, stop:]
    return owner


#: Conjugate-gradient steps of the least-squares re-fit: on MiniLM's layers the output error after 12 is within
#: 0.3 % of its value after 30.
_REFIT_STEPS = 12
#: Swap passes over all groups when ``refine`` is asked for (each followed by a re-fit).
_SWAP_PASSES = 2


def _fitted(target: np.ndarray, weights: np.ndarray, owner: np.ndarray, patterns, h: np.ndarray,
            refine: bool) -> list[np.ndarray]:
    """Each term's rows once the kept values are re-fitted to the mask (with ``refine``, after swap passes
    too); ``weights`` and ``owner`` are updated in place."""
    _refit(target, weights, owner >= 0, h)
    for _ in range(_SWAP_PASSES if refine else 0):
        _swap(target, weights, owner, patterns, h)
        _refit(target, weights, owner >= 0, h)
    return [np.where(owner == index, weights, 0.0) for index in range(len(patterns))]


def _refit(target: np.ndarray, weights: np.ndarray, kept: np.ndarray, h: np.ndarray) -> None:
    """The kept values that minimise ‖(target − weights)·X‖² (H = XᵀX) for the mask ``kept``, in place:
    every row's least-squares problem H_SS x = (H·target)_S, solved together by Jacobi-preconditioned conjugate
    gradients from the current values (the OBS sweep fixes the mask column by column and never revisits the
    values it kept early; this fits them all to the final mask). The search directions are multiplied by H in
    float32 (2–3× faster; the output error moves in the fourth digit), everything accumulated in float64."""
    residual = ((target - weights) @ h) * kept
    scale = np.where(kept, np.diag(h), 1.0)
    z = residual / scale
    direction, rz = z.copy(), (residual * z).sum(axis=1)
    h_single = h.astype(np.float32)
    first = np.sqrt((residual**2).sum(axis=1))
    for _ in range(_REFIT_STEPS):
        product = (direction.astype(np.float32) @ h_single) * kept
        curvature = (direction * product).sum(axis=1)
        alpha = np.divide(rz, curvature, out=np.zeros_like(rz), where=curvature > 0)
        weights += alpha[:, None] * direction
        residual -= alpha[:, None] * product
        if np.all(np.sqrt((residual**2).sum(axis=1)) <= 1e-6 * first):
            break
        z = residual / scale
        rz, previous = (residual * z).sum(axis=1), rz
        beta = np.divide(rz, previous, out=np.zeros_like(rz), where=previous > 0)
        direction = z + beta[:, None] * direction


def _swap(target: np.ndarray, weights: np.ndarray, owner: np.ndarray, patterns, h: np.ndarray) -> None:
    """Mask refinement, in place: group by group, the swap of a kept entry for a dropped one that its term's
    pattern allows (same group of that term's M) lowering ‖(target − weights)·X‖² most in each row, the new
    entry at its best value; a row with no improving swap keeps its group."""
    rows = np.arange(weights.shape[0])
    lcm = int(np.lcm.reduce([p.m for p in patterns]))
    m_of_term = np.array([p.m for p in patterns])
    position = np.arange(lcm)
    diag = np.diag(h)
    gradient = (target - weights) @ h  # the error's gradient in the weights is −2·gradient
    tolerance = 1e-12 * np.abs(((target - weights) * gradient).sum(axis=1))
    for start in range(0, weights.shape[1], lcm):
        span = slice(start, start + lcm)
        block, w, g, kept = h[span, span], weights[:, span], gradient[:, span], owner[:, span] >= 0
        # i (kept) → j (dropped): ΔE = 2wᵢgᵢ + wᵢ²Hᵢᵢ − (gⱼ + wᵢHᵢⱼ)²/Hⱼⱼ
        m = np.where(kept, m_of_term[np.maximum(owner[:, span], 0)], 1)[:, :, None]
        allowed = kept[:, :, None] & ~kept[:, None, :] & (position[:, None] // m == position[None, :] // m)
        refill = (g[:, None, :] + w[:, :, None] * block) ** 2 / np.diag(block)  # the dropped j's best gain
        change = (2 * w * g + w**2 * np.diag(block))[:, :, None] - refill
        change = np.where(allowed, change, np.inf).reshape(len(rows), -1)
        best = change.argmin(axis=1)
        swap = change[rows, best] < -tolerance
        r, i, j = rows[swap], best[swap] // lcm + start, best[swap] % lcm + start
        value = (gradient[r, j] + weights[r, i] * h[i, j]) / diag[j]
        gradient[r] += weights[r, i][:, None] * h[i] - value[:, None] * h[j]
        weights[r, i], weights[r, j] = 0.0, value
        owner[r, j], owner[r, i] = owner[r, i], -1


def _as_rows(w: np.ndarray, axis: int, lcm: int) -> np.ndarray:
    """The weight as (outputs, K) rows, K in the order OBS sweeps and the Hessian's: a matrix's reduction
    axis; an OIHW conv's (kh, kw, C), C fastest, so that groups of input channels stay contiguous."""
    if w.ndim == 2:
        return np.moveaxis(w, axis, -1)
    if w.ndim == 4 and axis == 1:
        if w.shape[1] % lcm:
            raise ValueError(f"conv reconstruction needs input channels in whole groups of {lcm}; this weight has "
                             f"{w.shape[1]}")
        return w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
    raise ValueError(f"reconstruction takes a matmul weight (2-D) or an OIHW conv weight grouped along axis 1; "
                     f"got shape {w.shape}, axis {axis}")


def _from_rows(rows: np.ndarray, shape: tuple, axis: int) -> np.ndarray:
    """Inverse of :func:`_as_rows`."""
    if len(shape) == 2:
        return np.moveaxis(rows, -1, axis)
    o, c, kh, kw = shape
    return rows.reshape(o, kh, kw, c).transpose(0, 3, 1, 2)


def _row_errors(rows: np.ndarray, terms: list[np.ndarray], h: np.ndarray, k: int) -> np.ndarray:
    """‖(w − Σ terms)·X‖² of every row, from H = XᵀX (the terms' first ``k`` columns)."""
    delta = rows - sum(terms)[:, :k]
    return ((delta @ h) * delta).sum(axis=1)


def nm_term(w, pattern: "NMPattern | str", axis: "int | str" = 0, score: Score = None, name=None) -> NMTerm:
    """One N:M term of ``w``: the N best-scoring entries of each group of M."""
    pattern = pattern if isinstance(pattern, NMPattern) else NMPattern.parse(pattern)
    return decompose(w, TASDConfig((pattern,)), axis=axis, score=score, name=name)[0]


def decompose(w, config: "TASDConfig | str", axis: "int | str" = 0, score: Score = None, name=None, *,
              hessian=None, damp: float = 0.01, refine: bool = False) -> list[NMTerm]:
    """Greedy TASD series of ``w``: the list of compressed N:M terms.

    ``axis`` is the reduction axis (an int, or a layout name: ``"matmul"``,
    ``"linear"``, ``"oihw"``, ``"activation"``). ``dense`` returns ``[]``.
    With ``hessian`` (H = XᵀX of the layer's inputs, K×K along the reduction
    axis; for an OIHW conv, of its im2col patches with columns ordered
    (kh, kw, C), C fastest, K = kh·kw·C, and C a multiple of the series'
    lcm(M)) the terms' mask and values minimise the layer's output error
    instead (OBS reconstruction, damped by ``damp`` × the mean diagonal):
    the values are then no longer the weight's own. ``refine`` also swaps
    kept and dropped entries inside groups while that lowers the error
    (slower; it gains little on top of the re-fit, see docs/semantics.md §3).
    """
    w = _float_array(w, f"tensor {name!r}" if name else "tensor")
    config = TASDConfig.parse(config)
    axis = resolve_axis(axis, w.ndim)
    scale = channel_scale(score, w.shape[axis], name)
    if not config.terms:
        return []
    if hessian is not None:
        if scale is not None:
            raise ValueError("give score= or hessian=, not both: with a Hessian, OBS decides which entries to keep")
        return _reconstructed(w, config.terms, axis, hessian, damp, name, refine)
    return _series(w, config.terms, axis, scale)[0]


def approximate(w, config: "TASDConfig | str", axis: "int | str" = 0, score: Score = None, name=None, *,
                hessian=None, damp: float = 0.01, refine: bool = False) -> np.ndarray:
    """Σ of the series' terms as a dense array of ``w``'s dtype (``dense``: a copy of w).

    ``hessian``/``damp``: as for :func:`decompose`.
    """
    w = _float_array(w, f"tensor {name!r}" if name else "tensor")
    config = TASDConfig.parse(config)
    if config.is_dense:
        return w.copy()
    if hessian is not None:
        terms = decompose(w, config, axis, score, name, hessian=hessian, damp=damp, refine=refine)
        return sum(term.dense() for term in terms)
    axis = resolve_axis(axis, w.ndim)
    _, residual = _series(w, config.terms, axis, channel_scale(score, w.shape[axis], name))
    residual = np.take(residual, np.arange(w.shape[axis]), axis=axis) if residual.shape != w.shape else residual
    # Kept entries are exact copies, so w − residual is exactly Σ terms (x − x = 0, x − 0 = x).
    return w - residual


def decompose_activation(x, config: "TASDConfig | str") -> list[NMTerm]:
    """Run-time activation terms: the same top-N-of-M rule along the last axis."""
    return decompose(x, config, axis=-1)


def compress(term_dense, pattern: "NMPattern | str", axis: "int | str" = 0) -> tuple[np.ndarray, np.ndarray]:
    """Dense tensor satisfying N:M → (values, uint8 indices). Raises if it violates N:M."""
    pattern = pattern if isinstance(pattern, NMPattern) else NMPattern.parse(pattern)
    x = _float_array(term_dense, "term")
    axis = resolve_axis(axis, x.ndim)
    groups = _grouped(_padded(x, axis, pattern.m), axis, pattern.m)
    worst = int(np.count_nonzero(groups, axis=2).max(initial=0))
    if worst > pattern.n:
        raise ValueError(f"tensor is not {pattern}: a group holds {worst} nonzeros")
    (term,), _ = _series(x, (pattern,), axis, None)
    return term.values, term.indices


def decompress(values, indices, pattern: "NMPattern | str", axis: int, k: int) -> np.ndarray:
    """(values, indices) → dense tensor whose reduction axis has length ``k``."""
    pattern = pattern if isinstance(pattern, NMPattern) else NMPattern.parse(pattern)
    values = np.asarray(values)
    indices = np.asarray(indices)
    if values.shape != indices.shape:
        raise ValueError(f"values {values.shape} and indices {indices.shape} differ in shape")
    if indices.dtype.kind not in "iu":
        raise ValueError(f"indices must be integers (uint8 positions inside a group), got {indices.dtype}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k, the length of the reduction axis, must be a positive integer, got {k!r}")
    axis = resolve_axis(axis, values.ndim)
    n, m = pattern.n, pattern.m
    groups_count = -(-k // m)
    if values.shape[axis] != groups_count * n:
        raise ValueError(f"compressed axis has {values.shape[axis]} entries; {pattern} over K={k} needs {groups_count * n}")
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= m):
        raise ValueError(f"indices must lie in 0…{m - 1} (positions in a group of M={m}); found "
                         f"{int(indices.min())}…{int(indices.max())}")
    grouped = np.sort(_grouped(np.ascontiguousarray(indices), axis, n), axis=2)
    if n > 1 and np.any(grouped[:, :, 1:] == grouped[:, :, :-1]):
        raise ValueError("a group lists the same position twice: the indices of a term are distinct within each group")
    last_group = _grouped(np.ascontiguousarray(values), axis, n)[:, -1]
    beyond = (_grouped(np.ascontiguousarray(indices), axis, n)[:, -1] >= k - (groups_count - 1) * m) & (last_group != 0)
    if np.any(beyond):
        raise ValueError(f"a kept value sits past K={k} in the last group: these terms come from a longer axis")
    padded_shape = list(values.shape)
    padded_shape[axis] = groups_count * m
    out = np.zeros(padded_shape, values.dtype)
    np.put_along_axis(
        _grouped(out, axis, m),
        _grouped(np.ascontiguousarray(indices), axis, n).astype(np.intp),
        _grouped(np.ascontiguousarray(values), axis, n),
        axis=2,
    )
    return np.ascontiguousarray(np.take(out, np.arange(k), axis=axis)) if groups_count * m != k else out


# ---------------------------------------------------------------- error metrics


def output_error(w, approx, axis: int, hessian) -> float:
    """The layer's relative output error on its calibration inputs, from H = XᵀX (laid out as for
    :func:`decompose`): sqrt(tr(ΔHΔᵀ) / tr(WHWᵀ)), Δ = W − approx (0 for a layer with no output)."""
    rows = _as_rows(np.asarray(w, np.float64), axis, 1)
    delta = rows - _as_rows(np.asarray(approx, np.float64), axis, 1)
    error, norm = ((delta @ hessian) * delta).sum(), ((rows @ hessian) * rows).sum()
    return float(np.sqrt(max(error, 0.0) / norm)) if norm > 0 else 0.0


def relative_error(w, approx) -> float:
    """‖W − ΣT‖_F / ‖W‖_F (0 for an all-zero W)."""
    w64 = np.asarray(w, np.float64)
    norm = np.linalg.norm(w64)
    return float(np.linalg.norm(w64 - np.asarray(approx, np.float64)) / norm) if norm else 0.0


def kept_magnitude_share(w, approx) -> float:
    """Σ|ΣT| / Σ|W|: the share of W's L1 mass the series keeps."""
    total = float(np.abs(np.asarray(w, np.float64)).sum())
    return float(np.abs(np.asarray(approx, np.float64)).sum()) / total if total else 1.0


def pseudo_density(x, m: int, mass: float = 0.99) -> float:
    """Effective N:M density of an activation from its magnitude mass.

    For each group of ``m`` along the last axis, the fewest entries (largest
    first) that hold ``mass`` of the group's L1 mass; the estimate is their
    mean count divided by ``m``. All-zero groups count 0. For ReLU outputs
    and ``mass=1`` this is exactly the nonzero density; for GELU/SiLU, whose
    many small negatives are never exactly zero, it says how many entries
    per group matter. The search uses it to pick activation series; the
    run-time extraction itself is the plain N:M rule.
    """
    if not 0 < mass <= 1:
        raise ValueError(f"mass must be in (0, 1], got {mass}")
    x = _float_array(x, "activation").astype(np.float32)
    groups = np.abs(_grouped(_padded(x, x.ndim - 1, m), x.ndim - 1, m))[..., 0]
    ordered = -np.sort(-groups, axis=-1)
    cumulative = np.cumsum(ordered, axis=-1)
    total = cumulative[..., -1:]
    needed = np.count_nonzero(cumulative < mass * total * (1 - 1e-6), axis=-1) + 1
    needed = np.where(total[..., 0] > 0, needed, 0)
    return float(needed.sum() / x.size)

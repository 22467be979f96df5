"""Semantics of TASD decomposition (docs/semantics.md), as properties and exact cases."""

from itertools import combinations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tvm_tasd import (
    NMPattern,
    TASDConfig,
    approximate,
    compress,
    decompose,
    decompress,
    kept_magnitude_share,
    pseudo_density,
    relative_error,
)
from tvm_tasd.decompose import _REFIT_STEPS

# Small integers as floats give plenty of ties, which is where selection rules differ.
values = st.integers(-4, 4).map(float)
matrices = hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=11), elements=values)
patterns = st.sampled_from(["1:2", "1:4", "2:4", "3:4", "1:8", "2:8", "4:8", "3:5"])


def groups_nonzeros(term, m, axis):
    """Nonzeros per group of m along axis (padding K with zeros), brute force."""
    moved = np.moveaxis(term, axis, -1)
    k = moved.shape[-1]
    padded = np.concatenate([moved, np.zeros(moved.shape[:-1] + ((-k) % m,))], axis=-1)
    return np.count_nonzero(padded.reshape(padded.shape[:-1] + (-1, m)), axis=-1)


@settings(max_examples=150, deadline=None)
@given(matrices, patterns, st.integers(0, 1))
def test_term_satisfies_pattern_and_compress_roundtrips(w, pattern, axis):
    (term,) = decompose(w, pattern, axis=axis)
    p = NMPattern.parse(pattern)
    dense = term.dense()
    assert groups_nonzeros(dense, p.m, axis).max(initial=0) <= p.n
    # values are the weight's own, at the positions kept
    kept = dense != 0
    assert np.array_equal(dense[kept], w[kept])
    values, indices = compress(dense, p, axis=axis)
    assert indices.dtype == np.uint8
    assert np.array_equal(decompress(values, indices, p, axis, w.shape[axis]), dense)
    assert values.shape[axis] == -(-w.shape[axis] // p.m) * p.n


@settings(max_examples=150, deadline=None)
@given(matrices, st.integers(0, 1), st.booleans())
def test_split_terms_equal_single_term(w, axis, with_scale):
    scale = np.arange(1, w.shape[axis] + 1, dtype=np.float32)[::-1] % 3 if with_scale else None
    assert np.array_equal(
        approximate(w, "1:4+1:4", axis=axis, score=scale), approximate(w, "2:4", axis=axis, score=scale)
    )
    assert np.array_equal(
        approximate(w, "2:8+1:8", axis=axis, score=scale), approximate(w, "3:8", axis=axis, score=scale)
    )


@settings(max_examples=150, deadline=None)
@given(matrices, st.sampled_from(["2:4+2:4", "1:4+3:4", "4:8+4:8", "3:8+3:8+2:8", "1:2+1:2"]), st.integers(0, 1))
def test_series_reaching_m_is_exact_under_any_score(w, config, axis):
    scale = (np.arange(w.shape[axis]) % 3).astype(np.float32)  # includes zero scales
    assert np.array_equal(approximate(w, config, axis=axis), w)
    assert np.array_equal(approximate(w, config, axis=axis, score=scale), w)


@settings(max_examples=100, deadline=None)
@given(matrices, st.lists(patterns, min_size=1, max_size=4), st.integers(0, 1))
def test_each_extra_term_never_increases_error(w, terms, axis):
    errors = [relative_error(w, approximate(w, "+".join(terms[:i]) if i else "dense", axis=axis)) for i in range(1, len(terms) + 1)]
    assert all(b <= a + 1e-12 for a, b in zip(errors, errors[1:]))


def apex_m4n2_1d(w_nk):
    """Independent 2:4 reference (apex ASP m4n2_1d): try all 6 masks per group of 4
    along K of an (N, K) Linear weight and keep the one with the largest Σ|w|;
    among equal sums the first pattern in lexicographic order (lower indices)."""
    masks = [np.isin(np.arange(4), c) for c in combinations(range(4), 2)]
    out = np.zeros_like(w_nk)
    for r in range(w_nk.shape[0]):
        for g in range(0, w_nk.shape[1], 4):
            group = w_nk[r, g : g + 4]
            sums = [np.abs(group[mk]).sum() for mk in masks]
            best = masks[int(np.argmax(sums))]
            out[r, g : g + 4] = np.where(best, group, 0)
    return out


def test_two_four_matches_apex_asp_semantics():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 32)).astype(np.float32)
    assert np.array_equal(approximate(w, "2:4", axis="linear"), apex_m4n2_1d(w))
    ties = rng.integers(-2, 3, (16, 32)).astype(np.float32)
    assert np.array_equal(approximate(ties, "2:4", axis="linear"), apex_m4n2_1d(ties))


def test_ties_go_to_lower_index_and_short_groups_keep_nonzeros():
    w = np.array([[1.0, -1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 5.0]], np.float32)
    assert approximate(w, "2:4", axis=1).tolist() == [[1.0, -1.0, 0, 0, 0, 0, 0, 5.0]]
    (term,) = decompose(w, "2:4", axis=1)
    assert term.indices.tolist() == [[0, 1, 0, 3]]


def test_padding_is_never_kept_and_layouts_agree():
    rng = np.random.default_rng(1)
    w_kn = rng.standard_normal((10, 6)).astype(np.float32)  # K = 10: padded to 12 for M = 4
    approx = approximate(w_kn, "1:4", axis="matmul")
    assert approx.shape == w_kn.shape
    assert np.count_nonzero(approx) == 3 * 6  # groups: 4, 4, and 2 real + 2 padding
    assert np.array_equal(approximate(w_kn.T, "1:4", axis="linear"), approx.T)
    conv = rng.standard_normal((4, 8, 3, 3)).astype(np.float32)
    per_position = np.stack(
        [approximate(conv[:, :, i, j], "2:4", axis=1) for i in range(3) for j in range(3)], axis=-1
    ).reshape(4, 8, 3, 3)
    assert np.array_equal(approximate(conv, "2:4", axis="oihw"), per_position)


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float32, np.float64])
def test_float_dtypes_are_kept(dtype):
    w = np.random.default_rng(2).standard_normal((8, 16)).astype(dtype)
    approx = approximate(w, "2:8+1:8", axis=1)
    assert approx.dtype == w.dtype
    assert np.array_equal(approximate(w, "4:8+4:8", axis=1), w)


@pytest.mark.parametrize("bad", [np.arange(8).reshape(2, 4), np.ones((2, 4), np.complex64), np.ones((2, 4), bool)])
def test_non_float_tensors_are_rejected(bad):
    with pytest.raises(TypeError, match="cast to float"):
        decompose(bad, "2:4", axis=1)


def test_non_finite_is_rejected():
    with pytest.raises(ValueError, match="NaN or inf"):
        decompose(np.array([[np.nan, 1, 2, 3]], np.float32), "2:4", axis=1)


def test_metrics():
    w = np.array([[3.0, -4.0, 0.0, 0.0]], np.float32)
    approx = approximate(w, "1:4", axis=1)
    assert relative_error(w, approx) == pytest.approx(3 / 5)
    assert kept_magnitude_share(w, approx) == pytest.approx(4 / 7)
    (term,) = decompose(w, "1:4", axis=1)
    assert term.nonzero_density == pytest.approx(0.25)


def test_activation_score_changes_selection_but_not_values():
    w = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
    scale = np.array([10.0, 1.0, 1.0, 1.0], np.float32)
    assert approximate(w, "1:4", axis=1, score=scale).tolist() == [[1.0, 0, 0, 0]]
    assert np.array_equal(approximate(w, "1:4", axis=1, score=np.ones(4)), approximate(w, "1:4", axis=1))


@pytest.mark.parametrize(
    "score, match",
    [
        (np.ones(3), "has 3 entries"),
        (np.array([1.0, -1.0, 1.0, 1.0]), "non-negative"),
        (np.array([1.0, np.inf, 1.0, 1.0]), "finite"),
        ("activation", "needs the per-channel scale vector"),
    ],
)
def test_bad_scores_name_the_layer(score, match):
    with pytest.raises(ValueError, match=match) as info:
        decompose(np.ones((2, 4), np.float32), "2:4", axis=1, score=score, name="encoder.fc1.weight")
    assert "encoder.fc1.weight" in str(info.value)


def test_pseudo_density():
    relu = np.array([[0.0, 0.0, 3.0, 1.0, 0.0, 0.0, 0.0, 0.0]], np.float32)
    assert pseudo_density(relu, 4, mass=1.0) == pytest.approx(2 / 8)
    assert pseudo_density(relu, 4, mass=0.7) == pytest.approx(1 / 8)  # 3 of 4 is 75 % of the mass
    gelu_like = np.array([[2.0, -0.01, -0.02, 1.0]], np.float32)
    assert pseudo_density(gelu_like, 4, mass=0.99) == pytest.approx(2 / 4)


def test_config_parse_and_errors():
    cfg = TASDConfig.parse(" 2:8 + 1:8 ")
    assert str(cfg) == "2:8+1:8" and cfg.density == pytest.approx(0.375)
    assert TASDConfig.parse(str(cfg)) == cfg
    assert TASDConfig.parse("dense").is_dense and TASDConfig.parse("dense").density == 1.0
    for bad, match in [
        ("3:2", "N must be in 1…M"),
        ("0:4", "N must be in 1…M"),
        ("2:4+", "stray"),
        ("a:b", "cannot read"),
        ("1:512", "M must be in"),
        ("1:4+1:4+1:4+1:4+1:4", "at most 4 terms"),
        ("", "empty"),
    ]:
        with pytest.raises(ValueError, match=match) as info:
            TASDConfig.parse(bad)
        assert "valid examples" in str(info.value)


def test_float64_tensors_keep_their_precision_when_scored():
    w = np.array([1e-50, 3e-50, 2e-50, 4e-50])  # all 0 in float32
    np.testing.assert_array_equal(approximate(w, "2:4"), [0, 3e-50, 0, 4e-50])


@pytest.mark.parametrize(
    "values, indices, k, match",
    [
        ([[1.0, 2.0]], [[0, 4]], 4, "0…3"),
        ([[1.0, 2.0]], [[-1, 2]], 4, "0…3"),
        ([[1.0, 2.0]], [[1, 1]], 4, "same position twice"),
        ([[1.0, 2.0]], [[0.0, 2.0]], 4, "integers"),
        ([[1.0, 2.0]], [[0, 3]], 3, "past K=3"),
        ([[1.0, 2.0]], [[0, 1]], 0, "positive integer"),
    ],
)
def test_decompress_refuses_indices_that_are_no_term(values, indices, k, match):
    with pytest.raises(ValueError, match=match):
        decompress(np.asarray(values, np.float32), np.asarray(indices), "2:4", axis=1, k=k)


def test_bad_arguments_are_one_clear_error():
    with pytest.raises(ValueError, match="axis must be an int"):
        decompose(np.ones((4, 4), np.float32), "2:4", axis=1.5)
    with pytest.raises(ValueError, match="tuple of NMPattern"):
        TASDConfig((NMPattern(2, 4), "1:4"))


# ---------------------------------------------------------------- error-compensated (OBS) series

SERIES = ["2:4", "1:4", "4:8", "2:8+1:8", "2:4+1:8", "1:8+1:8"]


def _layer(draw_seed: int, k: int, n: int, rows: int, dead: bool):
    rng = np.random.default_rng(draw_seed)
    x = rng.standard_normal((rows, k)) * rng.uniform(0.01, 5, k)
    if dead:
        x[:, rng.integers(0, k)] = 0.0  # an input channel that never fires
    return rng.standard_normal((k, n)).astype(np.float32), x


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), k=st.sampled_from([8, 16, 24, 40]), n=st.integers(1, 9),
       config=st.sampled_from(SERIES))
def test_with_an_identity_hessian_the_series_is_the_plain_one(seed, k, n, config):
    w, _ = _layer(seed, k, n, 1, False)
    np.testing.assert_array_equal(approximate(w, config, axis=0, hessian=np.eye(k)), approximate(w, config, axis=0))


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 10**6), k=st.sampled_from([8, 16, 24, 40]), n=st.integers(1, 9),
       rows=st.integers(1, 60), dead=st.booleans(), config=st.sampled_from(SERIES))
def test_reconstruction_never_raises_the_output_error_and_keeps_every_pattern(seed, k, n, rows, dead, config):
    w, x = _layer(seed, k, n, rows, dead)
    hessian = x.T @ x
    terms = decompose(w, config, axis=0, hessian=hessian)
    for term in terms:
        groups = term.dense().reshape(k // term.m, term.m, n)  # every k drawn is a multiple of every M
        assert np.count_nonzero(groups, axis=1).max() <= term.n
        np.testing.assert_array_equal(decompress(term.values, term.indices, term.pattern, 0, k), term.dense())
    error = lambda approx: np.linalg.norm(x @ (w.astype(np.float64) - approx))  # noqa: E731
    assert error(sum(t.dense() for t in terms)) <= error(approximate(w, config, axis=0)) * (1 + 1e-9) + 1e-9


def test_reconstruction_compensates_real_structure_and_is_deterministic():
    w, x = _layer(0, 256, 64, 1024, True)
    hessian = x.T @ x
    plain = approximate(w, "2:4", axis=0)
    rebuilt = approximate(w, "2:4", axis=0, hessian=hessian)
    error = lambda approx: np.linalg.norm(x @ (w - approx)) / np.linalg.norm(x @ w)  # noqa: E731
    assert error(rebuilt) < 0.85 * error(plain)  # the kept values move to absorb the dropped ones' error
    np.testing.assert_array_equal(rebuilt, approximate(w, "2:4", axis=0, hessian=hessian))
    linear = approximate(np.ascontiguousarray(w.T), "2:4", axis=1, hessian=hessian)  # (N, K) layout, same layer
    np.testing.assert_allclose(linear.T, rebuilt, rtol=1e-6, atol=1e-6)


def test_reconstructed_values_are_the_least_squares_fit_of_their_mask():
    """Independent of how the sweep chose the mask: on it, each output's kept values solve
    min ‖X(w − ŵ)‖ (numpy lstsq on the kept input columns) — exactly where the re-fit's conjugate-gradient steps
    cover the kept count (2:4: 12 of 24 kept), to 1e-4 of the optimal error where they stop short (2:4+1:8: 15)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 24)) @ (np.eye(24) + 0.4 * rng.standard_normal((24, 24)))  # correlated inputs
    w = rng.standard_normal((24, 5))
    for config in ("2:4", "2:8+1:8", "2:4+1:8"):
        rebuilt = approximate(w, config, axis=0, hessian=x.T @ x, damp=0.0)
        for column in range(w.shape[1]):
            kept = rebuilt[:, column] != 0
            best, *_ = np.linalg.lstsq(x[:, kept], x @ w[:, column], rcond=None)
            error = np.linalg.norm(x @ w[:, column] - x[:, kept] @ rebuilt[kept, column])
            optimum = np.linalg.norm(x @ w[:, column] - x[:, kept] @ best)
            assert optimum * (1 - 1e-12) <= error <= optimum * (1 + 1e-4)
            if kept.sum() <= _REFIT_STEPS:
                np.testing.assert_allclose(rebuilt[kept, column], best, rtol=1e-5, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), k=st.sampled_from([8, 16, 24, 40]), n=st.integers(1, 6),
       rows=st.integers(1, 60), dead=st.booleans(), config=st.sampled_from(SERIES))
def test_mask_refinement_keeps_the_patterns_and_never_raises_the_error_above_the_plain_series(seed, k, n, rows, dead,
                                                                                            config):
    w, x = _layer(seed, k, n, rows, dead)
    terms = decompose(w, config, axis=0, hessian=x.T @ x, refine=True)
    for term in terms:
        assert np.count_nonzero(term.dense().reshape(k // term.m, term.m, n), axis=1).max() <= term.n
    error = lambda approx: np.linalg.norm(x @ (w.astype(np.float64) - approx))  # noqa: E731
    assert error(sum(t.dense() for t in terms)) <= error(approximate(w, config, axis=0)) * (1 + 1e-9) + 1e-9
    np.testing.assert_array_equal(approximate(w, config, axis=0, hessian=np.eye(k), refine=True),
                                  approximate(w, config, axis=0))


def test_mask_refinement_lowers_the_error_of_a_real_layer():
    w, x = _layer(0, 128, 32, 1024, True)
    x = x @ (np.eye(128) + 0.3 * np.random.default_rng(1).standard_normal((128, 128)))  # correlated inputs
    error = lambda approx: np.linalg.norm(x @ (w - approx)) / np.linalg.norm(x @ w)  # noqa: E731
    for config in ("4:8", "2:4+1:8"):
        swept = approximate(w, config, axis=0, hessian=x.T @ x)
        assert error(approximate(w, config, axis=0, hessian=x.T @ x, refine=True)) < 0.999 * error(swept)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"hessian": np.eye(7)}, "8×8"),
        ({"hessian": np.full((8, 8), np.nan)}, "NaN"),
        ({"hessian": np.eye(8) * np.array([1, 1, 1, 1, 1, 1, 1, -50.0])}, "negative diagonal"),
        ({"hessian": np.ones((8, 8)) - 2 * np.eye(8) + np.diag([3.0] + [1.0] * 7), "damp": 0.0}, "positive definite"),
        ({"hessian": np.eye(8), "score": np.ones(8)}, "not both"),
        ({"hessian": np.eye(8), "damp": 2.0}, "damp"),
    ],
)
def test_a_bad_hessian_is_one_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        decompose(np.ones((8, 4), np.float32), "2:4", axis=0, **kwargs)


def _conv_layer(seed, channels, out_channels, samples):
    """An OIHW 3×3 conv weight and im2col rows of its input, columns ordered (kh, kw, C)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, channels, 6, 6)) * rng.uniform(0.05, 3, channels)[None, :, None, None]
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    taps = np.stack([padded[:, :, i : i + 6, j : j + 6] for i in range(3) for j in range(3)], axis=-1)
    rows = taps.transpose(0, 2, 3, 4, 1).reshape(-1, 9 * channels)
    return rng.standard_normal((out_channels, channels, 3, 3)).astype(np.float32), rows


def _conv_out(w, rows):
    return rows @ np.asarray(w, np.float64).transpose(0, 2, 3, 1).reshape(w.shape[0], -1).T


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), channels=st.sampled_from([8, 16]), out_channels=st.integers(1, 6),
       config=st.sampled_from(["2:8", "2:8+1:8", "2:4+1:8", "4:8+2:8"]))
def test_conv_reconstruction_keeps_channel_groups_and_never_raises_the_output_error(seed, channels, out_channels,
                                                                                    config):
    w, rows = _conv_layer(seed, channels, out_channels, 4)
    hessian = rows.T @ rows
    terms = decompose(w, config, axis=1, hessian=hessian)
    for term in terms:  # groups run along input channels, at every (kh, kw)
        groups = term.dense().reshape(out_channels, channels // term.m, term.m, 3, 3)
        assert np.count_nonzero(groups, axis=2).max() <= term.n
    error = lambda approx: np.linalg.norm(_conv_out(w, rows) - _conv_out(approx, rows))  # noqa: E731
    plain = approximate(w, config, axis=1)
    assert error(sum(t.dense() for t in terms)) <= error(plain) * (1 + 1e-9) + 1e-9
    np.testing.assert_array_equal(approximate(w, config, axis=1, hessian=np.eye(9 * channels)), plain)


def test_conv_reconstruction_needs_whole_channel_groups():
    w, rows = _conv_layer(0, 12, 2, 2)
    with pytest.raises(ValueError, match="whole groups of 8"):
        decompose(w, "2:8", axis=1, hessian=rows.T @ rows)


def test_the_reused_inverse_factor_never_outlives_its_hessian():
    """The factor of H⁻¹ is kept between calls (a search reconstructs every series of a layer from one H): a
    Hessian changed in place must not get the old factor."""
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((200, 16)), rng.standard_normal((16, 3))
    h = x.T @ x
    approximate(w, "2:4", axis=0, hessian=h)
    h[:8, :8] *= 3.0  # the same array object, other values
    fresh = h.copy()
    assert np.array_equal(approximate(w, "2:4", axis=0, hessian=h), approximate(w, "2:4", axis=0, hessian=fresh))

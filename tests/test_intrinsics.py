"""N:M tensor intrinsics: every registered tile, tensorized, against its untensorized form and numpy.

Shapes are chosen so that no size is a multiple of a tile: m, n, K (and the
conv's channels) all leave edge tiles and padded groups.
"""

import numpy as np
import pytest
from tvm_tasd.schedules import intrin_nm
from tvm_tasd.schedules.cuda_mma_sp import mma_sp_conv2d, mma_sp_matmul
from tvm_tasd.schedules.llvm import build, nm_conv2d, nm_matmul
from tvm_tasd.schedules.llvm_tensorized import (
    nm_conv2d_tensorized,
    nm_matmul_tensorized,
)

from tvm_tasd import decompose

M, K, N = 37, 70, 29  # K = 70: not a multiple of M = 4, 8, 16 nor of any tile
CONV = {"strides": (2, 1), "padding": (1, 0, 2, 1), "dilation": (1, 2)}
X_SHAPE, W_SHAPE = (2, 10, 9, 11), (7, 10, 3, 2)


def rel_err(out, ref) -> float:
    return float(np.abs(out.astype(np.float64) - ref).max() / np.abs(ref).max())


def conv_reference(x, w, strides, padding, dilation):
    """Direct NCHW/OIHW convolution in float64, one kernel tap at a time."""
    (sh, sw), (dh, dw), (pt, pl, pb, pr) = strides, dilation, padding
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    o, _, kh, kw = w.shape
    oh, ow = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1, (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((x.shape[0], o, oh, ow))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw]
            out += np.einsum("bchw,oc->bohw", patch, w[:, :, i, j].astype(np.float64))
    return out


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return {
        "x": rng.standard_normal((M, K)).astype(np.float32),
        "w": rng.standard_normal((K, N)).astype(np.float32),
        "xc": rng.standard_normal(X_SHAPE).astype(np.float32),
        "wc": rng.standard_normal(W_SHAPE).astype(np.float32),
    }


def run(kernel, x, terms):
    return build(kernel)(x, *kernel.pack(terms))


@pytest.mark.parametrize("pattern", intrin_nm.STANDARD_PATTERNS)
def test_group_intrinsic_is_exact_tensorized_and_untensorized(pattern, data):
    terms = decompose(data["w"], pattern, axis=0)
    tensorized = nm_matmul_tensorized(M, K, N, pattern)
    out = run(tensorized, data["x"], terms)
    reference = run(nm_matmul_tensorized(M, K, N, pattern, tensorize=False), data["x"], terms)
    assert np.array_equal(out, reference)  # same loop nest, same summation order
    assert rel_err(out, data["x"].astype(np.float64) @ terms[0].dense()) < 1e-5
    intrinsic = intrin_nm.nm_group(pattern, tensorized.params["cols"], tensorized.params["positions"])
    assert tensorized.params["intrinsics"] == [intrinsic.name("llvm")]
    assert tensorized.params["issued_macs"] == tensorized.params["calls"][0] * intrinsic.macs
    assert tensorized.executed_macs == M * N * (-(-K // intrinsic.pattern.m)) * intrinsic.pattern.n


@pytest.mark.parametrize("config", ["2:8+1:8", "1:4+1:8"])
def test_tensorized_series_matches_the_plain_kernel_and_numpy(config, data):
    terms = decompose(data["w"], config, axis=0)
    patterns = [t.pattern for t in terms]
    out = run(nm_matmul_tensorized(M, K, N, patterns), data["x"], terms)
    plain = run(nm_matmul(M, K, N, patterns), data["x"], terms)
    ref = data["x"].astype(np.float64) @ sum(t.dense() for t in terms)
    assert rel_err(out, ref) < 1e-5 and rel_err(plain, ref) < 1e-5
    assert rel_err(out, plain) < 1e-5


def test_tensorized_conv2d_by_implicit_gemm(data):
    terms = decompose(data["wc"], "2:8+1:8", axis=1)
    patterns = [t.pattern for t in terms]
    ref = conv_reference(data["xc"], sum(t.dense() for t in terms), CONV["strides"], CONV["padding"], CONV["dilation"])
    out = run(nm_conv2d_tensorized(X_SHAPE, W_SHAPE, patterns, **CONV), data["xc"], terms)
    plain = run(nm_conv2d(X_SHAPE, W_SHAPE, patterns, **CONV), data["xc"], terms)
    assert out.shape == ref.shape and rel_err(out, ref) < 1e-5 and rel_err(plain, ref) < 1e-5


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_mma_sp_tile_on_the_host_matches_numpy(steps, data):
    """The GPU kernel's instruction stream (fragments, metadata words) through the tile's llvm body."""
    terms = decompose(data["w"], "2:8+1:8", axis=0)  # both terms are valid 2:4 tensors
    kernel = mma_sp_matmul(M, K, N, [t.pattern for t in terms], dtype="float32", target="llvm", steps=steps)
    assert kernel.params["intrinsic"] == intrin_nm.mma_sp(steps).name("llvm")
    x16, w16 = data["x"].astype(np.float16), sum(t.dense() for t in terms).astype(np.float16)
    assert rel_err(run(kernel, data["x"], terms), x16.astype(np.float64) @ w16) < 1e-5


def test_mma_sp_conv2d_on_the_host(data):
    terms = decompose(data["wc"], "2:4", axis=1)
    kernel = mma_sp_conv2d(X_SHAPE, W_SHAPE, ["2:4"], dtype="float32", target="llvm", **CONV)
    w16 = terms[0].dense().astype(np.float16)
    ref = conv_reference(data["xc"].astype(np.float16), w16, CONV["strides"], CONV["padding"], CONV["dilation"])
    assert rel_err(run(kernel, data["xc"], terms), ref) < 1e-5


def test_registry_names_one_implementation_per_target_kind():
    names = {i.key: i.names for i in intrin_nm.registered()}
    assert names, "nothing registered"
    for intrinsic in intrin_nm.registered():
        assert "llvm" in intrinsic.names
        if intrinsic.family == intrin_nm.MMA_SP:
            assert set(intrinsic.names) == {"llvm", "cuda"}
    with pytest.raises(KeyError, match="no cuda implementation"):
        intrin_nm.nm_group("2:4", 4, 8).name("cuda")
    with pytest.raises(ValueError, match="not a valid 2:4 tensor"):
        mma_sp_matmul(M, K, N, "3:8", target="llvm")

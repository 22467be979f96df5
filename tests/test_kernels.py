"""CPU N:M kernels (tvm_tasd.schedules.llvm) against numpy.

Every N:M kernel must equal ``x @ approximate(W)`` (matmul) or a plain numpy
convolution of ``approximate(W)`` (conv2d) to fp32 rounding, for any shape:
K not a multiple of M (the last group's padding positions must not read
past x), m = 1, odd n, bias, strides, asymmetric padding, dilation.
Shapes are small so the whole file compiles and runs in seconds.
"""

from __future__ import annotations

import numpy as np
import pytest

from tvm_tasd import approximate, decompose

tvm = pytest.importorskip("tvm")
import tvm_ffi  # noqa: E402  (installed with tvm)

from tvm_tasd.hardware import load_target  # noqa: E402
from tvm_tasd.schedules.llvm import (  # noqa: E402
    build,
    dense_conv2d,
    dense_matmul,
    layout_transform_reuse,
    nm_conv2d,
    nm_kernel_pays,
    nm_matmul,
)
from tvm_tasd.schedules.llvm_blocked import (  # noqa: E402
    MAX_TILE_POSITIONS,
    blocked_depthwise_conv2d,
    blocked_conv2d,
    blocked_tile,
    from_blocked,
    from_blocked_func,
    reduction_chunk,
    to_blocked,
    to_blocked_func,
)
from tvm_tasd.schedules.llvm_common import CACHE_LINE, L1_BYTES, L1_WAYS, host_target, vectorize_run  # noqa: E402
from tvm_tasd.schedules.llvm_conv2d import STACK_BYTES, _Geometry  # noqa: E402
from tvm_tasd.schedules.selection import kernels_for  # noqa: E402


def close(out, ref, rtol=1e-4):
    """fp32 agreement: max abs error ≤ rtol × max |ref| (and ≥ 1e-6 slack for tiny outputs)."""
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= rtol * max(np.abs(ref).max(), 1e-2)


def conv_reference(x, w, bias, strides, padding, dilation):
    """Direct NCHW/OIHW convolution in float64, one kernel tap at a time."""
    (sh, sw), (dh, dw), (top, left, bottom, right) = strides, dilation, padding
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    _, _, hp, wp = xp.shape
    o, _, kh, kw = w.shape
    oh, ow = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((x.shape[0], o, oh, ow))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw]
            out += np.einsum("bchw,oc->bohw", patch, w[:, :, i, j].astype(np.float64))
    return out if bias is None else out + bias[None, :, None, None]


@pytest.mark.parametrize(
    "config, m, k, n, bias",
    [
        ("2:4", 64, 128, 48, False),
        ("1:8", 1, 100, 33, True),  # m = 1, K % 8 ≠ 0, odd n
        ("2:8+1:8", 37, 203, 29, False),  # odd everything, two terms in one kernel
        ("4:8", 5, 16, 1, True),  # a single output column
        ("1:4+1:4", 70, 258, 65, True),  # equals 2:4, K % 4 ≠ 0
        ("2:4+1:8", 130, 1000, 17, False),  # mixed M, several reduction tiles
        ("1:4+1:8+1:16", 37, 70, 29, False),  # three M's, K no multiple of their lcm: a short last tile
    ],
)
def test_nm_matmul_matches_numpy(config, m, k, n, bias):
    rng = np.random.default_rng(m + k + n)
    w = rng.standard_normal((k, n)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    kernel = nm_matmul(m, k, n, config, bias=bias)
    packed = kernel.pack(decompose(w, config, axis=0))
    out = build(kernel)(x, *packed, *([b] if bias else []))
    close(out, x @ approximate(w, config, axis=0) + (b if bias else 0))


def test_entry_table_pads_short_tiles_with_zero_values():
    from tvm_tasd.schedules.nm_pack import tiled_table

    tile = np.array([[1, 1], [0, 0], [0, 0]])  # two entries in tile 0, one in tile 1, per column
    key = np.array([[20, 21], [7, 3], [5, 9]])
    values = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    keys, vals, per_tile = tiled_table(tile, key, values, 2)
    assert per_tile == 2
    np.testing.assert_array_equal(keys, [[5, 3], [7, 9], [20, 21], [20, 21]])  # sorted in a tile; pad repeats a key
    np.testing.assert_array_equal(vals, [[5, 4], [3, 6], [1, 2], [0, 0]])  # … with value 0


def test_nm_matmul_interface():
    m, k, n = 16, 64, 24
    kernel = nm_matmul(m, k, n, ["2:8", "1:8"], bias=True)
    assert [p.name for p in kernel.func.params] == ["x", "vals", "rows", "bias", "out"]
    assert bool(kernel.func.attrs["tirx.noalias"])
    assert kernel.out_shape == (m, n)
    # K is a whole number of reduction tiles here, so no padding entries are executed
    assert kernel.executed_macs == m * (k // 8 * 2 + k // 8 * 1) * n
    w = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)
    vals, rows = kernel.pack(decompose(w, "2:8+1:8", axis=0))
    assert vals.dtype == np.float32 and rows.dtype == np.int32 and vals.shape == rows.shape
    with pytest.raises(ValueError, match="built for 2:8\\+1:8"):
        kernel.pack(decompose(w, "2:4", axis=0))
    with pytest.raises(ValueError, match="at least one N:M term"):
        nm_matmul(m, k, n, "dense")


def test_nm_matmul_float64_and_float16():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((40, 9))
    x = rng.standard_normal((3, 40))
    for dtype, rtol in (("float64", 1e-12), ("float16", 2e-3)):
        kernel = nm_matmul(3, 40, 9, "2:4", dtype=dtype)
        wd, xd = w.astype(dtype), x.astype(dtype)
        out = build(kernel)(xd, *kernel.pack(decompose(wd, "2:4", axis=0)))
        assert out.dtype == np.dtype(dtype)
        close(out.astype(np.float64), xd.astype(np.float64) @ approximate(wd, "2:4", axis=0).astype(np.float64), rtol)


@pytest.mark.parametrize("m, k, n, bias", [(64, 256, 64, False), (7, 45, 33, True), (120, 64, 5, True)])
def test_dense_matmul_matches_numpy(m, k, n, bias):
    rng = np.random.default_rng(k)
    w = rng.standard_normal((k, n)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    kernel = dense_matmul(m, k, n, bias=bias)
    out = build(kernel)(x, *kernel.pack(w), *([b] if bias else []))
    close(out, x @ w + (b if bias else 0))


def test_a_narrow_dense_matmul_tiles_one_vector_wide_without_padding_rows():
    """A classifier head (5 outputs) fills one vector per row, not two; 120 rows in 15 tiles of 8 run in parallel
    chunks that divide the 15 tiles, not in 8 or 16 (which would read a padded copy of x)."""
    kernel = dense_matmul(120, 512, 5)
    assert kernel.params["cols_per_panel"] == kernel.params["lanes"] and kernel.params["rows_per_tile"] == 8
    assert 15 % kernel.params["row_chunks"] == 0 and "x_padded" not in kernel.func.script(), kernel.params


CONV_CASES = [
    # x shape, w shape, config, strides, padding (top, left, bottom, right), dilation, bias
    ((1, 16, 9, 11), (8, 16, 3, 3), "2:4", (1, 1), (1, 1, 1, 1), (1, 1), False),
    ((2, 20, 13, 1), (5, 20, 5, 1), "1:8", (1, 1), (2, 0, 3, 0), (1, 1), True),  # CREPE-like 1-D, C % 8 ≠ 0
    ((1, 12, 10, 12), (7, 12, 3, 2), "2:8+1:8", (2, 3), (1, 0, 2, 1), (1, 2), False),
    ((2, 8, 7, 7), (9, 8, 3, 3), "1:4+1:4", (2, 2), (1, 1, 1, 1), (2, 1), True),
    ((1, 32, 6, 6), (3, 32, 1, 1), "4:8", (1, 1), (0, 0, 0, 0), (1, 1), False),
    ((1, 8, 30, 10), (10, 8, 1, 1), "2:4", (1, 1), (0, 0, 0, 0), (1, 1), True),  # 300 positions: two row groups
    ((2, 16, 3, 64), (13, 16, 1, 1), "2:8", (1, 1), (0, 0, 0, 0), (1, 1), True),  # tasks write their output tiles
    ((3, 12, 5, 7), (10, 12, 1, 1), "2:8", (1, 1), (0, 0, 0, 0), (1, 1), True),  # 35-position planes: batch folded
    ((2, 24, 4, 32), (20, 24, 1, 1), "4:8", (1, 1), (0, 0, 0, 0), (1, 1), True),  # whole tiles: reads x itself
    ((2, 16, 64, 1), (12, 16, 7, 1), "2:8", (1, 1), (3, 0, 3, 0), (1, 1), True),  # 1-D: tasks write their output
    ((2, 24, 12, 12), (40, 24, 1, 1), "2:8", (1, 1), (0, 0, 0, 0), (1, 1), True),  # task tiles span rows of 12
]


@pytest.mark.parametrize("x_shape, w_shape, config, strides, padding, dilation, bias", CONV_CASES)
def test_nm_conv2d_matches_reference(x_shape, w_shape, config, strides, padding, dilation, bias):
    rng = np.random.default_rng(sum(x_shape))
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32)
    kernel = nm_conv2d(x_shape, w_shape, config, bias=bias, strides=strides, padding=padding, dilation=dilation)
    out = build(kernel)(x, *kernel.pack(decompose(w, config, axis=1)), *([b] if bias else []))
    ref = conv_reference(x, approximate(w, config, axis=1), b if bias else None, strides, padding, dilation)
    assert kernel.out_shape == ref.shape
    close(out, ref)


@pytest.mark.parametrize("layout", ["positions", "channels"])
@pytest.mark.parametrize("x_shape, w_shape, _config, strides, padding, dilation, bias", CONV_CASES)
def test_dense_conv2d_matches_reference(x_shape, w_shape, _config, strides, padding, dilation, bias, layout):
    rng = np.random.default_rng(sum(w_shape))
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32)
    kernel = dense_conv2d(x_shape, w_shape, bias=bias, strides=strides, padding=padding, dilation=dilation,
                          layout=layout)
    assert kernel.params["layout"] == layout
    out = build(kernel)(x, *kernel.pack(w), *([b] if bias else []))
    close(out, conv_reference(x, w, b if bias else None, strides, padding, dilation))


@pytest.mark.parametrize("target, registers", [({"kind": "llvm", "mattr": ["+avx2", "+fma"]}, 16),
                                               ({"kind": "llvm", "mcpu": "znver4"}, 32)])
def test_dense_conv_vectorises_small_planes_over_channels(target, registers):
    """The digits CNN's 16→32 conv on 8×8 planes is vectorised over output channels (over positions it
    would compute the phase rows' padding columns), in whole register tiles; a 64×64 plane over positions.
    An SE block's 1×1 planes of 8 images are one run of 8 positions with the batch folded in: one whole
    AVX2 vector (positions), half an AVX-512 one (channels). Every tile fits the registers with one to spare."""
    target = tvm.target.Target(target)
    se_layout = "positions" if registers == 16 else "channels"
    cases = [((120, 16, 8, 8), (32, 16, 3, 3), 1, "channels"), ((8, 22, 1, 1), (88, 22, 1, 1), 0, se_layout),
             ((1, 16, 64, 64), (32, 16, 3, 3), 1, "positions")]
    for x_shape, w_shape, padding, layout in cases:
        tiles = dense_conv2d(x_shape, w_shape, padding=padding, target=target).params
        assert tiles["layout"] == layout, (x_shape, tiles)
        if layout == "channels":
            accumulators, vectors = tiles["positions"] * tiles["cols"] // tiles["lanes"], tiles["cols"] // tiles["lanes"]
        else:
            vectors = tiles["rows_per_task"] // tiles["lanes"]
            accumulators = vectors * tiles["cols"]
        assert accumulators + vectors + 2 <= registers, tiles
    digits = dense_conv2d((120, 16, 8, 8), (32, 16, 3, 3), padding=1, target=target).params
    assert 8 % digits["positions"] == 0 and 32 % digits["cols"] == 0, digits  # no padding computed
    assert digits["rows"] == 1  # padded rows: a task's positions stay in one row
    # a 1×1 conv's 7×7 plane is one run of 49 positions: tiles may run across rows instead of restarting at
    # each, so an image computes fewer extra positions than one tile holds
    pointwise = dense_conv2d((16, 192, 7, 7), (1152, 192, 1, 1), target=target, layout="channels").params
    rows, positions = pointwise["rows"], pointwise["positions"]
    assert 7 // rows * -(-rows * 7 // positions) * positions - 49 < positions, pointwise
    # over positions, the 16 images' 49-position planes are one run of 784: whole tiles, no lanes past a plane
    folded = dense_conv2d((16, 192, 7, 7), (1152, 192, 1, 1), target=target).params
    assert folded["layout"] == "positions" and folded["batch_folded"], folded
    assert 16 * 49 % folded["rows_per_task"] == 0, folded
    single = dense_conv2d((1, 192, 7, 7), (1152, 192, 1, 1), target=target, layout="positions").params
    assert not single["batch_folded"]
    with pytest.raises(ValueError, match="layout"):
        dense_conv2d((1, 8, 6, 6), (4, 8, 3, 3), layout="nhwc", target=target)


def test_pointwise_reduction_tiles_leave_l1_room_and_spread_over_its_sets():
    """A pointwise conv's reduction tile keeps its channels' runs in half the L1 (the weights stream through the
    rest), and takes fewer channels where the channel pitch maps every run to a few of the L1's sets: 16 images'
    14 × 14 planes folded into one row are 12544 bytes apart, a multiple of 256, so 16 of the 64 sets."""
    avx2 = tvm.target.Target({"kind": "llvm", "mattr": ["+avx2", "+fma"]})
    aliased = dense_conv2d((16, 672, 14, 14), (112, 672, 1, 1), target=avx2).params
    spread = dense_conv2d((16, 1152, 7, 7), (192, 1152, 1, 1), target=avx2).params  # 3136 bytes apart: every set
    for tiles in (aliased, spread):
        assert tiles["batch_folded"] and tiles["rows_per_task"] * 4 <= CACHE_LINE, tiles  # one line per channel
    assert aliased["k_tile"] <= 16 * L1_WAYS // 2, aliased  # half the lines of the 16 sets
    assert spread["k_tile"] * spread["rows_per_task"] * 4 <= L1_BYTES // 2 < 2 * spread["k_tile"] * CACHE_LINE
    # a strided conv's tile still fills the L1 with its phase rows
    strided = _Geometry((1, 32, 56, 56), (64, 32, 3, 3), 2, 1, 1)
    assert strided.tile_channels(16, 4) == L1_BYTES // strided.channel_bytes(16, 4)


@pytest.mark.parametrize("target", [{"kind": "llvm", "mattr": ["+avx2", "+fma"]}, {"kind": "llvm", "mcpu": "znver4"}])
def test_tasks_write_their_own_output_tile_where_rows_carry_no_padding(target):
    """A 1×1 conv's positions are its plane's own order: each task writes its output tile while it is in cache
    (EfficientNet-Lite0's 56×56 and 112×112 planes), and its accumulators fit the stack — with a tile that stays
    in one row where one fits, else one spanning rows that ends with the plane (56 is no multiple of AVX-512's
    16 lanes); a padded conv's rows carry pitch padding, so its output is a separate pass — unless its rows
    are single positions (a 1-D conv), whose padding lies above and below."""
    target = tvm.target.Target(target)
    for width in (56, 112, 12):
        tiles = dense_conv2d((16, 24, width, width), (144, 24, 1, 1), target=target, layout="positions").params
        assert tiles["output_in_task"] and tiles["rows_per_task"] * tiles["cols"] * 4 <= STACK_BYTES, tiles
        positions = tiles["rows_per_task"]
        assert width * width % positions == 0 and (width % positions == 0) == (width % tiles["lanes"] == 0), tiles
    padded = dense_conv2d((16, 24, 56, 56), (24, 24, 3, 3), padding=1, target=target, layout="positions").params
    assert not padded["output_in_task"]
    nm = nm_conv2d((2, 16, 3, 64), (13, 16, 1, 1), "2:8", target=target).params
    assert nm["output_in_task"] and 3 * 64 % nm["rows_per_task"] == 0, nm  # within rows or across them
    # 1-D convs (CREPE: H × 1 planes): a tile of positions runs down the rows of one position each
    column = nm_conv2d((2, 16, 64, 1), (12, 16, 7, 1), "2:8", padding=(3, 0, 3, 0), target=target).params
    assert column["output_in_task"] and 64 % column["rows_per_task"] == 0, column


@pytest.mark.parametrize("target", [{"kind": "llvm", "mattr": ["+avx2", "+fma"]}, {"kind": "llvm", "mcpu": "znver4"}])
def test_pointwise_convs_read_the_input_itself(target):
    """A 1×1 conv without stride or padding whose position tiles end with each plane reads x in place (its
    phase buffer would be a plain copy: 26 MB for EfficientNet-Lite0's 32 → 16 conv at 16 images); padded,
    strided and batch-folded convs, planes no tile ends with, 16-bit inputs (cast to fp32) and convs with many
    output channels (READS_INPUT_MAX_CHANNELS: the copy weighs little beside their FMAs) still copy."""
    target = tvm.target.Target(target)
    assert dense_conv2d((16, 32, 112, 112), (16, 32, 1, 1), target=target).params["reads_input"]
    assert nm_conv2d((1, 32, 64, 64), (24, 32, 1, 1), "2:8", target=target).params["reads_input"]
    copies = [((1, 32, 56, 56), (24, 32, 3, 3), dict(padding=1)), ((1, 32, 56, 56), (24, 32, 1, 1), dict(strides=2)),
              ((16, 32, 7, 7), (24, 32, 1, 1), {}), ((1, 32, 5, 5), (24, 32, 1, 1), {}),
              ((1, 32, 56, 56), (24, 32, 1, 1), dict(dtype="float16")), ((1, 32, 64, 64), (384, 32, 1, 1), {})]
    for x_shape, w_shape, options in copies:
        tiles = dense_conv2d(x_shape, w_shape, target=target, layout="positions", **options).params
        assert not tiles["reads_input"], (x_shape, w_shape, options, tiles)


@pytest.mark.parametrize("extent, vectors", [(13, [8, 5]), (16, [8]), (5, [5]), (196, [8, 4])])
def test_runs_vectorise_whole_and_their_remainder_apart(extent, vectors):
    """A run no vector width divides is a loop of whole vectors and a vectorised remainder, not one loop with a
    predicated last vector (a bounds test per lane); every element is still computed once."""
    x = tvm.te.placeholder((3, extent), "float32", name="x")
    y = tvm.te.compute((3, extent), lambda i, j: x[i, j] * 2.0 + 1.0, name="y")
    s = tvm.s_tir.Schedule(tvm.te.create_prim_func([x, y]))
    vectorize_run(s, s.get_loops(s.get_sblock("y"))[-1], 8)
    loops = []
    tvm_ffi.structural_walk(s.mod["main"].body, [(tvm.tirx.For, loops.append)], order="pre")
    assert [int(loop.extent) for loop in loops if loop.kind == tvm.tirx.ForKind.VECTORIZED] == vectors
    values = np.random.default_rng(0).standard_normal((3, extent)).astype(np.float32)
    out = tvm.runtime.tensor(np.zeros_like(values))
    tvm.tirx.build(s.mod["main"], target=host_target())["main"](tvm.runtime.tensor(values), out)
    close(out.numpy(), values * 2 + 1)


def test_conv_padding_forms_and_dense_conv():
    x_shape, w_shape = (1, 8, 6, 5), (4, 8, 3, 3)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    ref = conv_reference(x, w, None, (1, 1), (1, 2, 1, 2), (1, 1))
    kernel = dense_conv2d(x_shape, w_shape, padding=(1, 2))  # (h, w) form
    close(build(kernel)(x, *kernel.pack(w)), ref)
    assert nm_conv2d(x_shape, w_shape, "2:4", padding=1).out_shape == (1, 4, 6, 5)
    with pytest.raises(ValueError, match="input channels"):
        nm_conv2d(x_shape, (4, 6, 3, 3), "2:4")


@pytest.mark.parametrize(
    "shape, config, channels_first",
    [
        ((6, 20), "2:8+1:8", False),  # K % 8 ≠ 0: the short last group is zero padded
        ((2, 3, 16), "1:4", False),  # leading axes flattened into rows
        ((2, 16, 5, 7), "2:8+1:8", True),  # a conv input: groups along channels at every position
        ((1, 12, 4, 4), "1:8", True),  # 12 channels: a short last group of channels
    ],
)
def test_nm_activation_is_the_greedy_series_along_its_axis(shape, config, channels_first):
    from tvm_tasd.schedules.llvm_activation import nm_activation

    # small integers: ties and exact zeros, where the rank rule matters
    x = np.random.default_rng(len(shape)).integers(-3, 4, size=shape).astype(np.float32)
    kernel = nm_activation(shape, config, channels_first=channels_first)
    out = build(kernel)(x if channels_first else x.reshape(-1, shape[-1]))
    np.testing.assert_array_equal(out.reshape(shape), approximate(x, config, axis=1 if channels_first else -1))


def test_nm_activation_channels_first_needs_nchw():
    from tvm_tasd.schedules.llvm_activation import nm_activation

    with pytest.raises(ValueError, match="NCHW"):
        nm_activation((4, 16), "2:8", channels_first=True)


NUMPY_ACTIVATIONS = {
    "relu": lambda v: np.maximum(v, 0),
    "relu6": lambda v: np.clip(v, 0, 6),
    "hardswish": lambda v: v * np.clip(v + 3, 0, 6) / 6,
}


@pytest.mark.parametrize("activation", sorted(NUMPY_ACTIVATIONS))
@pytest.mark.parametrize("kind", ["nm_matmul", "dense_matmul", "nm_conv2d", "dense_conv2d", "dense_conv2d_channels"])
def test_output_activation_follows_the_bias(kind, activation):
    """Every CPU kernel applies its output activation after the bias, in its own output stage (outputs spread
    over the activations' kinks at 0, ±3 and 6)."""
    rng = np.random.default_rng(len(kind) + len(activation))
    if kind.endswith("matmul"):
        x, w = rng.standard_normal((13, 48)).astype(np.float32), rng.standard_normal((48, 20)).astype(np.float32)
        weight = approximate(w, "2:8", axis=0) if kind == "nm_matmul" else w
        kernel = (nm_matmul(13, 48, 20, "2:8", bias=True, output_activation=activation) if kind == "nm_matmul"
                  else dense_matmul(13, 48, 20, bias=True, output_activation=activation))
        packed = kernel.pack(decompose(w, "2:8", axis=0) if kind == "nm_matmul" else w)
        b = rng.standard_normal(20).astype(np.float32) * 4
        ref = x @ weight + b
    else:
        x = rng.standard_normal((2, 16, 7, 9)).astype(np.float32)
        w = rng.standard_normal((10, 16, 3, 3)).astype(np.float32)
        weight = approximate(w, "2:8", axis=1) if kind == "nm_conv2d" else w
        kernel = (nm_conv2d(x.shape, w.shape, "2:8", bias=True, padding=1, output_activation=activation)
                  if kind == "nm_conv2d" else
                  dense_conv2d(x.shape, w.shape, bias=True, padding=1, output_activation=activation,
                               layout="channels" if kind.endswith("channels") else "positions"))
        packed = kernel.pack(decompose(w, "2:8", axis=1) if kind == "nm_conv2d" else w)
        b = rng.standard_normal(10).astype(np.float32) * 4
        ref = conv_reference(x, weight, b, (1, 1), (1, 1, 1, 1), (1, 1))
    out = build(kernel)(x, *packed, b)
    close(out, NUMPY_ACTIVATIONS[activation](ref))
    assert (out == 0).any() if activation != "hardswish" else (out < 0).any()  # the activation did bite


def test_unknown_output_activation_names_the_known_ones():
    with pytest.raises(ValueError, match="hardswish, relu, relu6"):
        dense_matmul(4, 8, 8, output_activation="gelu")


def _blocked_epilogue(kernel, out_channels: int, activation: str | None, rng) -> tuple[list, callable]:
    """The bias operand of a blocked kernel (if ``activation`` asks for an output stage) and the numpy epilogue."""
    if activation is None:
        return [], lambda ref: ref
    bias = rng.standard_normal(out_channels).astype(np.float32)
    return [kernel.pack_bias(bias)], lambda ref: NUMPY_ACTIVATIONS[activation](ref + bias[None, :, None, None])


@pytest.mark.parametrize("x_shape, outputs, activation", [((2, 32, 7, 7), 48, None), ((1, 16, 12, 10), 64, "relu6"),
                                                          ((3, 64, 4, 4), 16, None), ((1, 64, 14, 14), 112, None),
                                                          ((2, 24, 6, 5), 40, "hardswish"), ((1, 8, 1, 1), 20, "relu")])
def test_blocked_pointwise_conv_matches_numpy(x_shape, outputs, activation):
    """The NCHW{L}c pointwise conv computes the NCHW conv, whichever register tile its plane and channel
    blocks allow (7 × 7 planes: 7 positions; 16 × 12: up to 28; 112 outputs with 16 lanes: 2 × 7, its
    reduction cut into chunks), channels no multiple of L zero-padded, bias and activation in its output stage."""
    rng = np.random.default_rng(len(x_shape) + outputs)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal((outputs, x_shape[1], 1, 1)).astype(np.float32)
    kernel = blocked_conv2d(x.shape, w.shape, bias=activation is not None, output_activation=activation)
    lanes = kernel.params["blocked_lanes"]
    extra, epilogue = _blocked_epilogue(kernel, outputs, activation, rng)
    out = build(kernel)(to_blocked(x, lanes), *kernel.pack(w), *extra)
    assert out.shape == (x_shape[0], -(-outputs // lanes), *x_shape[2:], lanes)
    close(from_blocked(out, outputs), epilogue(np.einsum("bchw,oc->bohw", x, w[:, :, 0, 0])))


@pytest.mark.parametrize("x_shape, outputs, k, stride, pad, blocked_input", [
    ((2, 3, 15, 15), 32, 3, 2, (0, 0, 1, 1), False), ((1, 16, 8, 8), 32, 3, 1, 1, True),
    ((2, 12, 9, 7), 20, 5, 2, 2, True), ((1, 1, 10, 12), 24, 3, 1, 1, False), ((2, 24, 9, 9), 40, 1, 2, 0, True),
    ((1, 3, 17, 19), 16, 7, 2, (3, 3, 2, 2), False)])
def test_blocked_window_conv_matches_torch(x_shape, outputs, k, stride, pad, blocked_input):
    """A conv with a window (strided, zero padding also uneven) or a strided 1 × 1 conv writes blocked channels
    from blocked or NCHW input (a stem on 3 channels, or 1)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(sum(x_shape) + outputs)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal((outputs, x_shape[1], k, k)).astype(np.float32)
    kernel = blocked_conv2d(x.shape, w.shape, strides=stride, padding=pad, bias=True, output_activation="relu6",
                            blocked_input=blocked_input)
    lanes = kernel.params["blocked_lanes"]
    extra, epilogue = _blocked_epilogue(kernel, outputs, "relu6", rng)
    out = build(kernel)(to_blocked(x, lanes) if blocked_input else x, *kernel.pack(w), *extra)
    top, left, bottom, right = (pad,) * 4 if isinstance(pad, int) else pad
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    ref = torch.nn.functional.conv2d(torch.from_numpy(padded), torch.from_numpy(w), stride=stride).numpy()
    close(from_blocked(out, outputs), epilogue(ref))


@pytest.mark.parametrize("activation", [None, "relu", "relu6"])
def test_a_blocked_conv_pools_in_its_output_stage(activation):
    """``output_pool``: the 2 × 2 / 2 max pooling of the activated output (taken first: the activations never
    decrease), written blocked at half the plane; an odd plane or a hardswish is refused."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 20, 10, 6)).astype(np.float32)
    w = rng.standard_normal((24, 20, 3, 3)).astype(np.float32)
    kernel = blocked_conv2d(x.shape, w.shape, padding=1, bias=True, output_activation=activation, output_pool=True)
    lanes = kernel.params["blocked_lanes"]
    assert kernel.out_shape == (3, -(-24 // lanes), 5, 3, lanes)
    assert kernel.params["rows"] % 2 == kernel.params["cols"] % 2 == 0  # whole windows in every register tile
    bias = rng.standard_normal(24).astype(np.float32)
    out = build(kernel)(to_blocked(x, lanes), *kernel.pack(w), kernel.pack_bias(bias))
    conv = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(bias), padding=1)
    activated = NUMPY_ACTIVATIONS[activation](conv.numpy()) if activation else conv.numpy()
    close(from_blocked(out, 24), torch.nn.functional.max_pool2d(torch.from_numpy(activated), 2).numpy())
    with pytest.raises(ValueError, match="even output plane"):
        blocked_conv2d((1, 20, 9, 6), w.shape, padding=1, output_activation=activation, output_pool=True)
    with pytest.raises(ValueError, match="activation"):
        blocked_conv2d(x.shape, w.shape, padding=1, output_activation="hardswish", output_pool=True)


def test_an_nm_conv_in_a_blocked_build_must_pay_for_its_layout_transforms():
    """Against the blocked dense conv a series pays only at 1/8 density and with enough MACs per value the two
    transforms move (C · KH · KW · O / (C + O)); without blocked channels the plain density rule holds."""
    assert layout_transform_reuse((64, 64, 3, 3)) == 288 and layout_transform_reuse((32, 200, 1, 1)) < 28
    assert nm_kernel_pays("conv2d", 1 / 8, 3136, transform_reuse=288)  # 3 × 3, 64 → 64
    assert not nm_kernel_pays("conv2d", 1 / 8, 3136, transform_reuse=28)  # 1 × 1, 200 → 32
    assert not nm_kernel_pays("conv2d", 1 / 4, 3136, transform_reuse=288)
    assert nm_kernel_pays("conv2d", 1 / 4, 3136) and nm_kernel_pays("conv2d", 1 / 2, 3136)


def test_which_convs_run_blocked():
    """Depthwise convs and windows up to 5 × 5; a stem on at most 4 channels up to 7 × 7; no long 1-D windows."""
    kernels = kernels_for(load_target("cpu-emulated"))
    conv = dict(groups=1, strides=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1))

    def kind(x_shape, w_shape, **changes):
        return kernels.has_blocked_conv2d(x_shape, w_shape, "float32", {**conv, **changes})

    assert kind((1, 32, 9, 9), (32, 1, 3, 3), groups=32) == "depthwise"
    assert kind((1, 32, 9, 9), (64, 32, 5, 5)) == kind((1, 3, 64, 64), (64, 3, 7, 7)) == "conv"
    assert kind((1, 32, 9, 9), (64, 32, 7, 7)) is kind((1, 1, 1024, 1), (128, 1, 512, 1)) is None
    assert kind((1, 32, 9, 9), (64, 32, 3, 3), dilation=(2, 2)) is None


def test_blocked_tiles_divide_and_fit_the_registers():
    for height, width, blocks, registers in [(14, 14, 42, 32), (7, 7, 72, 32), (14, 14, 7, 32), (56, 56, 9, 32),
                                             (14, 14, 84, 16), (1, 1, 5, 16)]:
        rows, cols, b = blocked_tile(height, width, blocks, registers)
        assert height % rows == 0 and width % cols == 0 and blocks % b == 0
        assert rows * cols * b + b + 1 <= registers and rows * cols <= MAX_TILE_POSITIONS
    assert blocked_tile(14, 14, 42, 32) == (2, 2, 6)  # 24 FMAs per 10 loads
    assert blocked_tile(7, 7, 72, 32) == (1, 7, 3)  # a 7 × 7 plane has no tile between a row and the plane
    assert blocked_tile(56, 56, 1, 32) == (1, 28, 1)  # the longer run along a row of equal tiles
    assert reduction_chunk(2, 7, 42, 16, 16) == 3  # 2 × 7 tiles: 3 input blocks of 7 KB each per chunk
    assert reduction_chunk(2, 7, 42, 16, 9 * 16) == 1  # a 3 × 3 window: 63 KB per input block
    assert reduction_chunk(4, 6, 7, 16, 16) == 7 and reduction_chunk(1, 1, 2, 16, 16) == 2  # uncut


def test_a_cut_reduction_at_one_image_still_runs_in_parallel():
    """At one image a tile of 2 × 7 blocks (112 outputs) cuts its reduction into chunks, and the tasks then walk
    the plane once per chunk: the plane's rows are shared out among them (one task before: 0.5× the speed)."""
    avx512 = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})
    kernel = blocked_conv2d((1, 672, 14, 14), (112, 672, 1, 1), target=avx512)
    assert kernel.params["reduction_chunk"] < 42
    extents = []
    tvm_ffi.structural_walk(kernel.func.body, [(tvm.tirx.For, lambda loop: extents.append(int(loop.extent))
                                                if loop.kind == tvm.tirx.ForKind.PARALLEL else None)], order="post")
    assert extents and min(extents) > 1, extents


def test_blocked_layout_transforms_round_trip():
    """``to_blocked_func``/``from_blocked_func`` compute the numpy transforms, zero-padding and cropping channels."""
    x = np.random.default_rng(3).standard_normal((2, 20, 3, 5)).astype(np.float32)
    target = tvm.target.Target({"kind": "llvm"})
    into = tvm.tirx.build(to_blocked_func(x.shape, 8), target=target)
    blocked = tvm.runtime.tensor(np.full((2, 3, 3, 5, 8), np.nan, np.float32))
    into(tvm.runtime.tensor(x), blocked)
    np.testing.assert_array_equal(blocked.numpy(), to_blocked(x, 8))
    assert not blocked.numpy()[:, 2, :, :, 4:].any()  # the padding channels are zeros
    back = tvm.tirx.build(from_blocked_func(blocked.shape, 20), target=target)
    out = tvm.runtime.tensor(np.zeros_like(x))
    back(blocked, out)
    np.testing.assert_array_equal(out.numpy(), x)
    np.testing.assert_array_equal(from_blocked(to_blocked(x, 8), 20), x)


@pytest.mark.parametrize("x_shape, k, stride, pad, activation", [
    ((2, 32, 9, 9), 3, 1, 1, None), ((1, 16, 12, 10), 5, 2, 2, None), ((2, 48, 7, 7), 5, 1, 2, "relu6"),
    ((1, 16, 8, 8), 3, 2, 0, None), ((1, 16, 9, 10), 3, 2, (0, 1, 1, 0), None), ((2, 24, 6, 6), 3, 1, 1, "relu")])
def test_blocked_depthwise_conv_matches_numpy(x_shape, k, stride, pad, activation):
    """Each channel's window sum, zero padding read through the bounds test (also uneven: Relax's (top, left,
    bottom, right)), strided rows and columns, channels no multiple of L, bias and activation."""
    rng = np.random.default_rng(sum(x_shape) + k)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal((x_shape[1], 1, k, k)).astype(np.float32)
    kernel = blocked_depthwise_conv2d(x.shape, w.shape, strides=stride, padding=pad, bias=activation is not None,
                                      output_activation=activation)
    extra, epilogue = _blocked_epilogue(kernel, x_shape[1], activation, rng)
    out = build(kernel)(to_blocked(x, kernel.params["blocked_lanes"]), *kernel.pack(w), *extra)
    top, left, bottom, right = (pad,) * 4 if isinstance(pad, int) else pad
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    oh, ow = out.shape[2:4]
    ref = np.zeros((x_shape[0], x_shape[1], oh, ow), np.float32)
    for i in range(k):
        for j in range(k):
            ref += padded[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride] * w[None, :, 0, i, j, None, None]
    close(from_blocked(out, x_shape[1]), epilogue(ref))

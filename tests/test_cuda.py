"""The CUDA path: NVIDIA 2:4 metadata, the mma.sp fragments, CUDA codegen and nvcc (no GPU needed).

The metadata layout is checked two independent ways: against PyTorch's
CPU re-implementation of CUTLASS's format, and by a warp-level simulator
of ``mma.sp.m16n8k16`` written here from the PTX ISA text (§9.7.14.6:
fragment layouts of A, B, C/D and the metadata figure), fed the way the
kernel's ``cuda`` implementation loads its registers.
"""

import shutil
import warnings

import numpy as np
import pytest
import tvm
from tvm.target import codegen
from tvm_tasd.schedules import nvidia_metadata as nv
from tvm_tasd.schedules.cuda_mma_sp import cuda_source, mma_sp_matmul
from tvm_tasd.schedules.selection import kernels_for

import tvm_tasd
from tvm_tasd import decompose
from tvm_tasd.frontend import from_onnx
from tvm_tasd.hardware import load_target
from tvm_tasd.models.digits import model_path
from tvm_tasd.pipeline import as_tvm_target
from tvm_tasd.policy import TASDWarning
from tvm_tasd.schedules.llvm_common import host_target

NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH: CUDA source is generated but not compiled")


def random_2of4(rng, rows, k, exactly_two=True):
    """Rows whose 4-chunks hold exactly two (or at most two) nonzeros."""
    dense = rng.standard_normal((rows, k // 4, 4)).astype(np.float16)
    keep = np.argsort(rng.random(dense.shape), axis=2)[:, :, : 2 if exactly_two else 1]
    mask = np.zeros(dense.shape, bool)
    np.put_along_axis(mask, keep, True, axis=2)
    return (dense * mask).reshape(rows, k)


# ------------------------------------------------------------ metadata


def test_2of4_conversion_round_trips_and_completes_short_chunks():
    rng = np.random.default_rng(0)
    dense = random_2of4(rng, 24, 40, exactly_two=False)  # one nonzero per chunk: a filler each
    values, positions = nv.to_2of4(dense)
    assert np.array_equal(nv.from_2of4(values, positions, 40), dense)
    pairs = positions.reshape(24, -1, 2)
    assert np.all(pairs[:, :, 0] < pairs[:, :, 1])  # distinct and ascending: valid ordered metadata
    assert np.array_equal(nv.row_positions(nv.row_metadata(positions))[:, :20], positions)
    with pytest.raises(ValueError, match="3 nonzeros"):
        nv.to_2of4(np.array([[1.0, 1.0, 1.0, 0.0]]))


def test_terms_that_fit_2of4_convert():
    w = np.random.default_rng(1).standard_normal((40, 12)).astype(np.float32)
    for config in ("1:8", "2:8", "1:4", "1:2"):
        (term,) = decompose(w, config, axis=0)
        values, positions = nv.to_2of4(term.dense().T)
        assert np.array_equal(nv.from_2of4(values, positions, 40), term.dense().T)


def test_row_metadata_matches_pytorch_cutlass_layout():
    conversions = pytest.importorskip("torch.sparse._semi_structured_conversions")
    import torch

    rows, k = 64, 128  # CUTLASS's tile multiples for fp16
    dense = random_2of4(np.random.default_rng(2), rows, k)
    sparse, reordered = conversions.sparse_semi_structured_from_dense_cutlass(torch.from_numpy(dense))
    values, positions = nv.to_2of4(dense)
    assert np.array_equal(sparse.numpy(), values)
    # undo CUTLASS's reordering with PyTorch's own offsets: the logical (rows, K/16) int16 matrix
    offsets = conversions._calculate_meta_reordering_scatter_offsets(rows, k // 16, reordered.dtype, "cpu")
    logical = reordered.view(-1)[offsets].view(rows, k // 16).numpy().view(np.uint16)
    assert np.array_equal(logical, nv.row_metadata(positions))


def mma_sp_m16n8k16(a_regs, b_regs, c_regs, e_regs, selector=0):
    """D = A·B + C for one warp, from the PTX ISA's fragment description (f16 in, f32 accumulate).

    a_regs (32, 4) fp16: lane 4g+t holds the two kept values of the 4-chunk t of
    rows g (a0, a1) and g+8 (a2, a3). e_regs (32,) uint32: the thread 4g+selector
    of each quad holds the metadata of rows g (bits 0-15) and g+8 (bits 16-31),
    4 bits per chunk, 2 bits per kept value. b_regs (32, 4) fp16: b_i at row
    2t + (i & 1) + 8·(i ≥ 2), column g. c_regs (32, 4): c_i at row g + 8·(i ≥ 2),
    column 2t + (i & 1).
    """
    a = np.zeros((16, 16), np.float64)
    b = np.zeros((16, 8), np.float64)
    c = np.zeros((16, 8), np.float64)
    for lane in range(32):
        g, t = divmod(lane, 4)
        meta = int(e_regs[4 * g + selector])
        for i in range(4):
            half, slot = divmod(i, 2)
            position = (meta >> (16 * half + 4 * t + 2 * slot)) & 3
            a[g + 8 * half, 4 * t + position] = a_regs[lane, i]
            b[2 * t + (i & 1) + 8 * half, g] = b_regs[lane, i]
            c[g + 8 * half, 2 * t + (i & 1)] = c_regs[lane, i]
    d = a @ b + c
    return np.array([[d[lane // 4 + 8 * (i // 2), lane % 4 * 2 + (i & 1)] for i in range(4)] for lane in range(32)])


def test_mma_sp_operands_follow_the_ptx_isa():
    """Pack a 2:4 A (32×48) and feed each 16×16 tile as the kernel's cuda body loads it."""
    rng = np.random.default_rng(3)
    dense = random_2of4(rng, 32, 48)
    x = rng.standard_normal((8, 48)).astype(np.float16)  # B stored as (positions j, k): B[k, j] = x[j, k]
    a, e = nv.mma_sp_operands(*nv.to_2of4(dense))
    assert a.shape == (2, 3, 32, 4) and e.shape == (2, 3, 8) and e.dtype == np.uint32
    lanes = np.arange(32)
    for rt in range(2):
        d = np.zeros((32, 4))
        for kt in range(3):
            cols = 16 * kt + lanes[:, None] % 4 * 2 + np.array([0, 1, 8, 9])  # the impl's two half2 loads
            b_regs = x[lanes[:, None] // 4, cols]
            d = mma_sp_m16n8k16(a[rt, kt], b_regs, d, e[rt, kt][lanes // 4])  # every lane loads its quad's word
        expected = dense[16 * rt : 16 * rt + 16].astype(np.float64) @ x.T.astype(np.float64)
        expected_regs = [[expected[lane // 4 + 8 * (i // 2), lane % 4 * 2 + i % 2] for i in range(4)] for lane in range(32)]
        np.testing.assert_allclose(d, expected_regs, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------ codegen


def nvcc_compiles(source: str, arch: str) -> None:
    """Compile with TVM's own CUDA compile path (what a GPU machine runs at module load), via nvcc."""
    from tvm.support.nvcc import compile_cuda

    with tvm.target.Target({"kind": "cuda", "arch": arch}):
        assert len(compile_cuda(source, target_format="cubin", compiler="nvcc")) > 0


@needs_nvcc
def test_mma_sp_kernel_source_compiles_for_sm80_and_sm90():
    kernel = mma_sp_matmul(40, 70, 24, "2:8+1:8")
    for arch in ("sm_80", "sm_90"):
        source = cuda_source(kernel, {"kind": "cuda", "arch": arch})
        assert "mma.sp::ordered_metadata.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32" in source
        nvcc_compiles(source, arch)


def device_sources(executable) -> list[str]:
    found, stack = [], [executable.mod]
    while stack:
        module = stack.pop()
        stack.extend(module.imports)
        if module.kind == "cuda":
            found.append(module.inspect_source())
    return found


@pytest.mark.parametrize("target", [{"kind": "cuda", "arch": "sm_80"}, "cuda -arch=sm_90"])
def test_build_for_stc_2of4_emits_mma_sp(target):
    mod = from_onnx(model_path("digits-mlp"), {"input": [8, 64]}).mod
    ex = tvm_tasd.build(mod, "stc-2of4", config="2:4", target=target)
    assert all(layer["weight"] == "2:4" for layer in ex.layers)
    (source,) = device_sources(ex)
    assert "mma.sp" in source
    if NVCC is not None:
        nvcc_compiles(source, as_tvm_target(target).attrs["arch"])


def test_gpu_benchmark_fails_clearly_without_a_gpu(monkeypatch, capsys):
    if tvm.cuda(0).exist:
        pytest.skip("a GPU is present: the benchmark would run")
    from tvm_tasd.benchmarks import gpu_mma_sp

    monkeypatch.setenv("TVM_CUDA_COMPILE_MODE", "nvcc")
    assert gpu_mma_sp.main([]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "no CUDA GPU" in line


def test_host_target_and_the_generic_cpu_warning():
    """``host`` is this machine's CPU; a bare ``llvm`` (generic x86-64, SSE2) warns, a named CPU or ISA does not."""
    assert as_tvm_target("host").attrs.get("mcpu") == host_target().attrs.get("mcpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for named in ("host", "llvm -mattr=+avx2,+fma", "llvm -mcpu=znver3", tvm.target.Target("llvm")):
            as_tvm_target(named)  # a Target object is the caller's own choice: no warning either
    if codegen.llvm_get_system_triple().startswith("x86_64"):
        with pytest.warns(TASDWarning, match="names no CPU"):
            as_tvm_target("llvm")


def test_target_parsing_and_kernel_selection():
    assert as_tvm_target("cuda -arch=sm_90").attrs["arch"] == "sm_90"
    assert list(as_tvm_target("llvm -mattr=+avx2,+fma").attrs["mattr"]) == ["+avx2", "+fma"]
    assert as_tvm_target({"kind": "llvm"}).kind.name == "llvm"
    cuda = tvm.target.Target({"kind": "cuda", "arch": "sm_80"})
    assert kernels_for(load_target("stc-2of4"), cuda).family == "mma_sp"
    assert kernels_for(load_target("stc-2of4"), tvm.target.Target("llvm")).family == "plain"
    assert kernels_for(load_target("vegeta-m8")).family == "nm_emulated"
    with pytest.raises(ValueError, match="no CUDA implementation"):
        kernels_for(load_target("vegeta-m8"), cuda)

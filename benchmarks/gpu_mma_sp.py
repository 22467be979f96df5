"""2:4 sparse tensor core (mma.sp) vs dense fp16 GEMM on an NVIDIA GPU: numerics and speed.

Shapes (m, k, n): a 4096×4096×4096 GEMM and MiniLM-L6's Linear layers at
batch·seq = 8·128 = 1024 rows, (k, n) ∈ {(384, 384), (384, 1536), (1536, 384)}.
For each, with a random weight pruned to 2:4 (``decompose(W, "2:4")``):

* **2:4** — the TASD kernel of ``schedules/cuda_mma_sp.py`` (PTX
  ``mma.sp.m16n8k16``, fp16 operands, fp32 accumulation, fp16 output),
  compiled for this GPU's architecture;
* **dense** — ``torch.matmul`` (cuBLAS) when torch has CUDA, else TVM's
  fp16 matmul scheduled by dlight (``dl.gpu.Matmul``);

both checked against numpy (fp16 operands, float32 reference; relative
error ≤ 1e-2 of the output's largest value) and timed with TVM's
``time_evaluator`` / CUDA events (median of repeats). Results go to
``benchmarks/results/gpu_mma_sp.{md,json}`` with the GPU's name.

Without a GPU the script exits with status 2 and one line on stderr.
``--compile-only`` needs no GPU: it generates every kernel for sm_80 and
sm_90 and compiles it with nvcc through TVM's own CUDA compile path.

    python benchmarks/gpu_mma_sp.py [--compile-only] [--repeat R]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import sys

import numpy as np

SHAPES = [(4096, 4096, 4096), (1024, 384, 384), (1024, 384, 1536), (1024, 1536, 384)]
TOLERANCE = 1e-2


def _compile_mode() -> None:
    """TVM compiles CUDA at module load with NVRTC (needs cuda-bindings); fall back to nvcc."""
    if importlib.util.find_spec("cuda") is None and shutil.which("nvcc"):
        os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")


def sparse_kernel(m, k, n, target):
    from tvm_tasd.schedules.cuda_mma_sp import mma_sp_matmul

    return mma_sp_matmul(m, k, n, "2:4", dtype="float16", target=target)


def dense_func(m, k, n, target):
    """TVM's dense fp16 matmul (fp32 accumulation), scheduled by dlight."""
    import tvm
    from tvm import te
    from tvm.s_tir import dlight as dl

    x = te.placeholder((m, k), "float16", name="x")
    w = te.placeholder((k, n), "float16", name="w")
    r = te.reduce_axis((0, k), "r")
    acc = te.compute((m, n), lambda i, j: te.sum(x[i, r].astype("float32") * w[r, j].astype("float32"), axis=r))
    out = te.compute((m, n), lambda i, j: acc[i, j].astype("float16"), name="out")
    mod = tvm.IRModule({"main": te.create_prim_func([x, w, out])})
    with target:
        mod = dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.Fallback())(mod)
    return mod["main"]


def compile_only() -> None:
    """Generate and nvcc-compile every kernel for sm_80 and sm_90 (no GPU needed)."""
    import tvm
    from tvm.support.nvcc import compile_cuda
    from tvm_tasd.schedules.cuda_mma_sp import cuda_source

    for arch in ("sm_80", "sm_90"):
        target = tvm.target.Target({"kind": "cuda", "arch": arch})
        for m, k, n in SHAPES:
            source = cuda_source(sparse_kernel(m, k, n, target), target)
            assert "mma.sp" in source, "no mma.sp in the generated source"
            dense = tvm.tirx.build(dense_func(m, k, n, target), target=target).imports[0].inspect_source()
            with target:
                sizes = [len(compile_cuda(s, target_format="cubin", compiler="nvcc")) for s in (source, dense)]
            print(f"{arch} {m}x{k}x{n}: 2:4 and dense kernels compile (cubin {sizes[0]} / {sizes[1]} bytes)")


class Runner:
    """Build, run and time TVM PrimFuncs on the GPU."""

    def __init__(self, target, device, repeat: int):
        self.target, self.device, self.repeat = target, device, repeat

    def __call__(self, func, inputs, out_shape, out_dtype="float16"):
        import tvm

        module = tvm.tirx.build(func, target=self.target)
        args = [tvm.runtime.tensor(np.ascontiguousarray(a), self.device) for a in inputs]
        args.append(tvm.runtime.tensor(np.zeros(out_shape, out_dtype), self.device))
        name = str(func.attrs["global_symbol"]) if func.attrs and "global_symbol" in func.attrs else "main"
        module[name](*args)
        self.device.sync()
        timer = module.time_evaluator(name, self.device, number=10, repeat=self.repeat, min_repeat_ms=50)
        return args[-1].numpy(), statistics.median(timer(*args).results)


def torch_dense(x, w, repeat: int):
    """cuBLAS through torch.matmul, or None when torch has no CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    xt, wt = torch.from_numpy(x).cuda(), torch.from_numpy(w).cuda()
    out = torch.matmul(xt, wt)
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(10):
            torch.matmul(xt, wt)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 10 / 1e3)
    return out.cpu().numpy(), statistics.median(times)


def rel_error(out, ref) -> float:
    return float(np.abs(out.astype(np.float32) - ref).max() / np.abs(ref).max())


def measure(shape, run: Runner, repeat: int, rng) -> dict:
    from tvm_tasd import decompose

    m, k, n = shape
    x = rng.standard_normal((m, k)).astype(np.float16)
    (term,) = decompose(rng.standard_normal((k, n)).astype(np.float32), "2:4", axis=0)
    w = term.dense().astype(np.float16)
    reference = x.astype(np.float32) @ w.astype(np.float32)
    kernel = sparse_kernel(m, k, n, run.target)
    sparse_out, sparse_s = run(kernel.func, [x, *kernel.pack([term])], (m, n))
    dense = torch_dense(x, w, repeat)
    backend = "torch.matmul (cuBLAS)"
    if dense is None:
        dense, backend = run(dense_func(m, k, n, run.target), [x, w], (m, n)), "TVM dense (dlight gpu.Matmul)"
    dense_out, dense_s = dense
    errors = {"2:4": rel_error(sparse_out, reference), "dense": rel_error(dense_out, reference)}
    return {
        "shape": shape,
        "ms": {"2:4": 1e3 * sparse_s, "dense": 1e3 * dense_s},
        "speedup": dense_s / sparse_s,
        "dense_tflops": 2 * m * k * n / dense_s / 1e12,
        "sparse_effective_tflops": 2 * m * k * n / sparse_s / 1e12,
        "dense_backend": backend,
        "rel_error": errors,
        "ok": all(e <= TOLERANCE for e in errors.values()),
        "kernel": {key: kernel.params[key] for key in ("steps", "warps", "calls")},
    }


def markdown(meta: dict, rows: list[dict]) -> str:
    from tvm_tasd.benchmarks.common import stamp_markdown

    lines = [
        "# 2:4 sparse tensor core (mma.sp) vs dense fp16 GEMM (measured)",
        "",
        *stamp_markdown(meta),
        f"- GPU: **{meta['gpu']}** (compute {meta['compute_version']}, target arch {meta['arch']})",
        "",
        ("fp16 operands, fp32 accumulation, fp16 output; weight pruned to 2:4 (magnitude). 2:4: "
         "`schedules/cuda_mma_sp.py` (one warp per 16×8 tile, accumulator in global memory between "
         "k-chunks: simple, not tuned). Median of repeats. Error: max |out − ref| / max |ref| against "
         f"float32 numpy on the same fp16 operands (pass ≤ {TOLERANCE})."),
        "",
        ("| m×k×n | 2:4 ms | dense ms | dense backend | 2:4 speed-up | dense TFLOP/s | 2:4 effective TFLOP/s "
         "| rel. error 2:4 / dense | numerics |"),
        "|---|---:|---:|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {'×'.join(map(str, r['shape']))} | {r['ms']['2:4']:.3f} | {r['ms']['dense']:.3f} | {r['dense_backend']} "
            f"| **{r['speedup']:.2f}×** | {r['dense_tflops']:.1f} | {r['sparse_effective_tflops']:.1f} "
            f"| {r['rel_error']['2:4']:.1e} / {r['rel_error']['dense']:.1e} | {'ok' if r['ok'] else 'FAILED'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile-only", action="store_true", help="no GPU: generate and nvcc-compile the kernels")
    parser.add_argument("--repeat", type=int, default=20, help="timing repeats (default 20)")
    args = parser.parse_args(argv)
    _compile_mode()
    import tvm
    import tvm.support.nvcc

    if args.compile_only:
        compile_only()
        return 0
    device = tvm.cuda(0)
    if not device.exist:
        print("gpu_mma_sp: no CUDA GPU visible to TVM (tvm.cuda(0).exist is False); run it on a GPU machine, "
              "or use --compile-only", file=sys.stderr)
        return 2
    from tvm_tasd.benchmarks.common import stamp, write

    arch = "sm_" + device.compute_version.replace(".", "")
    run = Runner(tvm.target.Target({"kind": "cuda", "arch": arch}), device, args.repeat)
    rng = np.random.default_rng(0)
    rows = []
    for shape in SHAPES:
        rows.append(measure(shape, run, args.repeat, rng))
        r = rows[-1]
        print(f"{shape}: 2:4 {r['ms']['2:4']:.3f} ms, dense {r['ms']['dense']:.3f} ms, "
              f"error {r['rel_error']['2:4']:.1e}", flush=True)
    meta = stamp("2:4 sparse tensor core vs dense fp16 GEMM", gpu=device.device_name,
                 compute_version=device.compute_version, arch=arch)
    write("gpu_mma_sp", {"meta": meta, "rows": rows}, markdown(meta, rows))
    failed = [r["shape"] for r in rows if not r["ok"]]
    if failed:
        print(f"gpu_mma_sp: numerics FAILED for {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

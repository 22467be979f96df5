"""Where an N:M kernel stops paying on this CPU: the evidence behind ``schedules.llvm_common.nm_kernel_pays``.

For each layer shape and series the fused N:M kernel and the dense kernel of
the same loop nest (``tvm_tasd.schedules.llvm``), both tiled and compiled
for the ``cpu-emulated`` TVM target as a build would (``--target host``:
for this machine's CPU), are timed side by side in
interleaved rounds (``benchmarks/kernel_speed.py``'s timing: one sample of each per
round, ratios within the round, the median over rounds). Shapes: MiniLM's
three GEMMs (K × N = 384 × 384, 384 × 1536, 1536 × 384) at 40 activation rows
(one sentence) and 320 (8 sentences); a CREPE-full-like 64 × 1 conv (16
frames), a 3 × 3 conv and a 1 × 1 conv. Then convs a CPU build runs in
blocked channels when dense (``llvm_blocked``; EfficientNet, PP-OCR and
ResNet shapes): there the dense kernel is the blocked conv and the N:M kernel
(NCHW) pays for a layout transform on each side, timed with it. The table
marks each case with what ``nm_kernel_pays`` decides for it, so a wrong
threshold shows as an N:M kernel kept where it is slower (or dropped where it
is faster).

    python benchmarks/kernel_choice.py [--rounds R] [--max-wait S] [--target cpu-emulated|host] [--name STEM]
"""

from __future__ import annotations

import argparse

from tvm_tasd.threads import default_tvm_threads

default_tvm_threads()  # before TVM starts its thread pool: TVM alone would use half the cores here

import numpy as np  # noqa: E402

from tvm_tasd import TASDConfig, decompose  # noqa: E402
from tvm_tasd.benchmarks.common import CPU_TARGETS, stamp, stamp_markdown, write  # noqa: E402
from tvm_tasd.benchmarks.kernel_speed import interleave, tvm_timer  # noqa: E402
from tvm_tasd.schedules.llvm import (  # noqa: E402
    build,
    dense_conv2d,
    dense_matmul,
    layout_transform_reuse,
    nm_conv2d,
    nm_kernel_pays,
    nm_matmul,
)
from tvm_tasd.schedules.llvm_blocked import blocked_conv2d, from_blocked_func, to_blocked, to_blocked_func  # noqa: E402
from tvm_tasd.schedules.llvm_common import NMKernel  # noqa: E402
from tvm_tasd.schedules.llvm_default import default_schedule  # noqa: E402

CONFIGS = ("1:8", "2:8", "2:8+1:8", "4:8", "4:8+1:8", "4:8+2:8")
GEMMS = [(m, k, n) for m in (40, 320) for k, n in ((384, 384), (384, 1536), (1536, 384))]
CONVS = [  # (name, x NCHW, w OIHW, padding top/left/bottom/right)
    ("conv 64×1, 256→256, 16 frames", (16, 256, 128, 1), (256, 256, 64, 1), (31, 0, 32, 0)),
    ("conv 3×3, 128→128, 32×32", (1, 128, 32, 32), (128, 128, 3, 3), (1, 1, 1, 1)),
    ("conv 1×1, 64→128, 24×24", (1, 64, 24, 24), (128, 64, 1, 1), (0, 0, 0, 0)),
]

BLOCKED_CONVS = [  # (name, x NCHW, w OIHW, padding)
    ("blocked 1×1, 40→240, 28×28, 16 images", (16, 40, 28, 28), (240, 40, 1, 1), (0, 0, 0, 0)),
    ("blocked 1×1, 672→112, 14×14, 16 images", (16, 672, 14, 14), (112, 672, 1, 1), (0, 0, 0, 0)),
    ("blocked 1×1, 672→112, 14×14, 1 image", (1, 672, 14, 14), (112, 672, 1, 1), (0, 0, 0, 0)),
    ("blocked 1×1, 200→32, 2×96, 8 images", (8, 200, 2, 96), (32, 200, 1, 1), (0, 0, 0, 0)),
    ("blocked 3×3, 64→64, 28×28, 16 images", (16, 64, 28, 28), (64, 64, 3, 3), (1, 1, 1, 1)),
]


def race(x, nm_kernel, w, axis, dense_kernel, config, rounds, max_wait, target) -> float:
    """Median over interleaved rounds of t(dense kernel) / t(N:M kernel), both compiled for ``target``."""
    timers = {"nm": tvm_timer(build(nm_kernel, target), x, *nm_kernel.pack(decompose(w, config, axis=axis))),
              "dense": tvm_timer(build(dense_kernel, target), x, *dense_kernel.pack(w))}
    samples, _ = interleave(timers, rounds, max_wait)
    return float(np.median(np.asarray(samples["dense"]) / np.asarray(samples["nm"])))


def _transform(func, out_shape, target):
    """A layout transform as a kernel to time, with the default CPU schedule a build gives it."""
    return build(NMKernel(default_schedule(func, target).mod["main"], lambda: [], 0, "", out_shape), target)


def race_blocked(x, w, padding, config, rounds, max_wait, target) -> float:
    """Median over interleaved rounds of t(blocked dense conv) / t(from_blocked + N:M conv + to_blocked)."""
    dense = blocked_conv2d(x.shape, w.shape, padding=padding, target=target)
    lanes = dense.params["blocked_lanes"]
    nm = nm_conv2d(x.shape, w.shape, config, padding=padding, target=target)
    xb, out = to_blocked(x, lanes), np.zeros(nm.out_shape, np.float32)
    timers = {"dense": tvm_timer(build(dense, target), xb, *dense.pack(w)),
              "nm": tvm_timer(build(nm, target), x, *nm.pack(decompose(w, config, axis=1))),
              "from": tvm_timer(_transform(from_blocked_func(xb.shape, x.shape[1]), x.shape, target), xb),
              "to": tvm_timer(_transform(to_blocked_func(out.shape, lanes), dense.out_shape, target), out)}
    samples, _ = interleave(timers, rounds, max_wait)
    samples = {name: np.asarray(times) for name, times in samples.items()}
    return float(np.median(samples["dense"] / (samples["from"] + samples["nm"] + samples["to"])))


def measure(rounds: int, max_wait: float, target) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for m, k, n in GEMMS:
        x, w = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)
        dense = dense_matmul(m, k, n, target=target)
        for config in CONFIGS:
            speedup = race(x, nm_matmul(m, k, n, config, target=target), w, 0, dense, config, rounds, max_wait,
                           target)
            rows.append(_row(f"GEMM {m}×{k}×{n}", "matmul", m, config, speedup))
    for name, x_shape, w_shape, padding in CONVS:
        x, w = rng.standard_normal(x_shape).astype(np.float32), rng.standard_normal(w_shape).astype(np.float32)
        dense = dense_conv2d(x_shape, w_shape, padding=padding, target=target)
        rows_ = int(np.prod(dense.out_shape)) // w_shape[0]  # the implicit GEMM's M: batch × output positions
        for config in CONFIGS:
            speedup = race(x, nm_conv2d(x_shape, w_shape, config, padding=padding, target=target), w, 1, dense,
                           config, rounds, max_wait, target)
            rows.append(_row(name, "conv2d", rows_, config, speedup))
    for name, x_shape, w_shape, padding in BLOCKED_CONVS:
        x, w = rng.standard_normal(x_shape).astype(np.float32), rng.standard_normal(w_shape).astype(np.float32)
        rows_ = x_shape[0] * x_shape[2] * x_shape[3]  # stride 1, same padding: one row per input position
        for config in CONFIGS:
            speedup = race_blocked(x, w, padding, config, rounds, max_wait, target)
            rows.append(_row(name, "conv2d", rows_, config, speedup, layout_transform_reuse(w_shape)))
    return rows


def _row(layer: str, op: str, rows: int, config: str, speedup: float, transform_reuse: float | None = None) -> dict:
    density = TASDConfig.parse(config).density
    row = {"layer": layer, "op": op, "rows": rows, "config": config, "density": density,
           "transform_reuse": transform_reuse, "nm_speedup_vs_dense_kernel": speedup,
           "nm_kernel_pays": nm_kernel_pays(op, density, rows, transform_reuse)}
    print(f"{layer} {config}: N:M {speedup:.2f}× the dense kernel; "
          f"{'N:M' if row['nm_kernel_pays'] else 'dense'} kernel chosen", flush=True)
    return row


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = [
        "# Kernel choice on this CPU: N:M kernel vs the dense kernel, per layer shape and series (measured)",
        "",
        *stamp_markdown(meta),
        f"- LLVM target `{meta['llvm_target']}` (`--target {meta['target']}`: kernels tiled and compiled for it); "
        f"{meta['rounds']} interleaved rounds "
        "per case, the median ratio quoted",
        "",
        "Cell: the N:M kernel's speed-up over the dense kernel of the same loop nest (> 1: the series pays); in "
        "brackets the kernel `nm_kernel_pays` picks for that case (`schedules/llvm_common.py`). A case where the "
        "pick is the slower kernel by more than 10 % is marked **slower**. \"blocked\" rows: the dense kernel is "
        "the conv in blocked channels (NCHW{L}c) a CPU build runs, and the N:M kernel's time includes the two "
        "layout transforms it needs there.",
        "",
        "| layer | rows | " + " | ".join(CONFIGS) + " |",
        "|---|---:|" + "---:|" * len(CONFIGS),
    ]
    for layer in dict.fromkeys(r["layer"] for r in rows):
        cells = {r["config"]: r for r in rows if r["layer"] == layer}
        first = next(iter(cells.values()))
        lines.append(f"| {layer} | {first['rows']} | " + " | ".join(_cell(cells[c]) for c in CONFIGS) + " |")
    return "\n".join(lines) + "\n"


def _cell(row: dict) -> str:
    speedup, pays = row["nm_speedup_vs_dense_kernel"], row["nm_kernel_pays"]
    slower = (pays and speedup < 1 / 1.1) or (not pays and speedup > 1.1)
    return f"{speedup:.2f}× ({'N:M' if pays else 'dense'}{', **slower**' if slower else ''})"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="timing rounds per case (default 7)")
    parser.add_argument("--max-wait", type=float, default=1.0, help="seconds a round may wait for a quiet machine")
    parser.add_argument("--target", choices=list(CPU_TARGETS), default="cpu-emulated",
                        help="the TVM target the kernels are tiled and compiled for (default cpu-emulated: AVX2)")
    parser.add_argument("--name", default="kernel_choice", help="results file stem under benchmarks/results/")
    args = parser.parse_args(argv)
    target = CPU_TARGETS[args.target]()
    rows = measure(args.rounds, args.max_wait, target)
    meta = stamp("kernel choice (measured)", llvm_target=str(target), target=args.target, rounds=args.rounds)
    write(args.name, {"meta": meta, "rows": rows}, markdown(meta, rows))


if __name__ == "__main__":
    main()

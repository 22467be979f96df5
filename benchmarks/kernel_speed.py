"""Kernel speed on this CPU: fused TASD N:M kernels vs the best dense kernel.

For each series the N:M kernel (``tvm_tasd.schedules.llvm``), the scheduled
dense TVM kernel and numpy (OpenBLAS) are timed side by side in one run.
Each round takes one sample of every contender (a sample: ~20 ms of calls
after a warm-up call, with a pause before it so the previous contender's
spinning worker threads go quiet); ratios are formed within a round and the
median over rounds is quoted. The machine is shared, so a round first waits
(up to ``--max-wait`` s) for other processes to go quiet, their load is
measured before each sample, and rounds where it was not ≈ 0 are left out
(kept, and the row flagged, if fewer than 3 rounds were quiet).

(Not named ``kernels.py``: run as a script, its folder comes first on
``sys.path``, and a module ``kernels`` there shadows the ``kernels`` package
that transformers imports, which broke MiniLM's end-to-end benchmark.)

    efficiency = density × t(best dense) / t(N:M kernel)

with t(best dense) the faster of numpy and the dense TVM kernel. 1.0 would
mean the N:M kernel turns every skipped MAC into saved time; the goal is
≥ 0.5. Shapes: GEMM 256×1024×1024 fp32; the CREPE-tiny conv2 layer
(torchcrepe ``tiny``: 128 → 16 channels, kernel 64×1, padding 31/32 rows)
on a batch of 16 frames; and a generic 3×3 conv (1×128×64×64 → 128, pad 1).
numpy's conv is im2col (sliding window) + GEMM, its im2col included.

    python benchmarks/kernel_speed.py [--quick] [--rounds R] [--max-wait S]
"""

from __future__ import annotations

import argparse
import os
import time

from tvm_tasd.threads import default_tvm_threads

default_tvm_threads()  # before TVM starts its thread pool: TVM alone would use half the cores here

import numpy as np  # noqa: E402
from numpy.lib.stride_tricks import sliding_window_view  # noqa: E402

from tvm_tasd import TASDConfig, approximate, decompose  # noqa: E402
from tvm_tasd.benchmarks.common import stamp, stamp_markdown, write  # noqa: E402
from tvm_tasd.schedules.llvm import build, dense_conv2d, dense_matmul, host_target, nm_conv2d, nm_matmul  # noqa: E402
from tvm_tasd.schedules.llvm_common import CPUShape  # noqa: E402

CONFIGS = ("1:8", "1:4", "2:8+1:8", "2:4")
GOAL = 0.5
SAMPLE_S = 0.02  # aim for samples of ~20 ms
SETTLE_S = 0.15  # OpenBLAS and TVM workers busy-wait after a call (OpenBLAS ~0.1 s); let them park
QUIET_CORES = 0.2  # a round counts as quiet if other processes used < 0.2 core before each sample


def tvm_timer(compiled, *inputs):
    """Timer for a built kernel, calls per sample sized to ~SAMPLE_S."""
    probe = compiled.timer(*inputs, number=1, repeat=3)
    number = max(1, int(SAMPLE_S / max(min(probe()), 1e-6)))
    timer = compiled.timer(*inputs, number=number, repeat=1)

    def sample():
        timer()  # warm-up: wakes the thread pool and the caches
        return timer()[0]

    return sample


def numpy_timer(fn):
    time.sleep(SETTLE_S)
    once = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        once.append(time.perf_counter() - start)
    number = max(1, int(SAMPLE_S / max(min(once), 1e-6)))

    def sample():
        fn()
        start = time.perf_counter()
        for _ in range(number):
            fn()
        return (time.perf_counter() - start) / number

    return sample


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    return sum(fields), fields[3] + fields[4]  # total, idle + iowait


def foreign_load(window: float = 0.1) -> float:
    """Cores kept busy by *other* processes while this one sleeps for ``window`` (Linux; else 0).

    Niced jobs count too: with the scheduler's autogroups, nice only ranks a
    job within its own session, so another session's niced job still takes
    its share of the cores.
    """
    try:
        total0, idle0 = _cpu_times()
        time.sleep(window)
        total1, idle1 = _cpu_times()
    except OSError:
        time.sleep(window)
        return 0.0
    return (os.cpu_count() or 1) * (1 - (idle1 - idle0) / max(total1 - total0, 1))


def wait_for_quiet(max_wait: float) -> None:
    """Poll the load of other processes for up to ``max_wait`` seconds until it is ≈ 0."""
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline and foreign_load(0.2) >= QUIET_CORES:
        pass


def interleave(timers: dict, rounds: int, max_wait: float = 0.0) -> tuple[dict, list[bool]]:
    """One sample per contender per round, and whether the round ran on a quiet machine.

    A round starts once the machine is quiet (or after ``max_wait`` s); before
    each sample the previous contender's threads get SETTLE_S to stop
    spinning, then the load of other processes is measured.
    """
    samples = {name: [] for name in timers}
    quiet = []
    for _ in range(rounds):
        wait_for_quiet(max_wait)
        loads = []
        for name, timer in timers.items():
            time.sleep(SETTLE_S)
            loads.append(foreign_load())
            samples[name].append(timer())
        quiet.append(max(loads) < QUIET_CORES)
    return samples, quiet


def relative_error(out, ref) -> float:
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30))


def gemm_case(m, k, n, config, rounds, max_wait, rng):
    w = rng.standard_normal((k, n)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    kernel = nm_matmul(m, k, n, config)
    sparse = build(kernel)
    packed = kernel.pack(decompose(w, config, axis=0))
    error = relative_error(sparse(x, *packed), x @ approximate(w, config, axis=0))
    samples = race(x, sparse, packed, dense_matmul(m, k, n), w, lambda: x @ w, rounds, max_wait)
    return samples, error, kernel


def race(x, sparse, packed, dense, w, numpy_fn, rounds, max_wait):
    """Time the N:M kernel, the dense TVM kernel and numpy side by side (see :func:`interleave`)."""
    dense_built = build(dense)
    dense_w = dense.pack(w)
    time.sleep(SETTLE_S)
    timers = {
        "nm": tvm_timer(sparse, x, *packed),
        "dense_tvm": tvm_timer(dense_built, x, *dense_w),
        "numpy": numpy_timer(numpy_fn),
    }
    return interleave(timers, rounds, max_wait)


def im2col_conv(x, w, padding):
    top, left, bottom, right = padding
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    windows = sliding_window_view(xp, w.shape[2:], axis=(2, 3))  # B, C, OH, OW, KH, KW
    b, c, oh, ow, kh, kw = windows.shape
    cols = windows.transpose(0, 2, 3, 1, 4, 5).reshape(b * oh * ow, c * kh * kw)
    return (cols @ w.reshape(w.shape[0], -1).T).reshape(b, oh, ow, -1).transpose(0, 3, 1, 2)


def conv_case(x_shape, w_shape, padding, config, rounds, max_wait, rng):
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    kernel = nm_conv2d(x_shape, w_shape, config, padding=padding)
    sparse = build(kernel)
    packed = kernel.pack(decompose(w, config, axis=1))
    error = relative_error(sparse(x, *packed), im2col_conv(x, approximate(w, config, axis=1), padding))
    dense = dense_conv2d(x_shape, w_shape, padding=padding)
    samples = race(x, sparse, packed, dense, w, lambda: im2col_conv(x, w, padding), rounds, max_wait)
    return samples, error, kernel


def summarise(layer, config, timed, error, kernel, dense_macs):
    """Ratios per round (samples taken moments apart), then medians over the quiet rounds.

    Falls back to all rounds, flagged, when fewer than 3 were quiet.
    """
    samples, quiet = timed
    use = np.array(quiet) if sum(quiet) >= 3 else np.ones(len(quiet), bool)
    t = {name: np.asarray(s)[use] for name, s in samples.items()}
    best = np.minimum(t["dense_tvm"], t["numpy"])
    density = TASDConfig.parse(config).density
    med = {name: float(np.median(v)) for name, v in t.items()}
    return {
        "layer": layer,
        "config": config,
        "density": density,
        "rounds_used": int(use.sum()),
        "rounds": len(quiet),
        "contended": bool(sum(quiet) < 3),
        "median_s": med,
        "min_s": {name: float(np.min(v)) for name, v in samples.items()},
        "best_dense": min(("dense_tvm", "numpy"), key=med.get),
        "speedup_vs_best_dense": float(np.median(best / t["nm"])),
        "dense_tvm_vs_numpy": float(np.median(t["numpy"] / t["dense_tvm"])),
        "efficiency": float(np.median(density * best / t["nm"])),
        "efficiency_min_times": float(density * np.min(best) / np.min(t["nm"])),
        "nm_gflops_useful": 2 * density * dense_macs / med["nm"] / 1e9,
        "executed_macs": int(kernel.executed_macs),
        "tiles": kernel.params,
        "relative_error_vs_numpy": error,
    }


def markdown(meta, rows) -> str:
    load = meta["load_average_1_5_15min"]
    lines = [
        "# Kernel speed: fused TASD N:M kernels vs the best dense kernel (measured)",
        "",
        *stamp_markdown(meta),
        f"- LLVM target `{meta['llvm_target']}` ({meta['vector_bits']}-bit vectors); "
        f"1-min load average {load['before'][0]:.2f} before, {load['after'][0]:.2f} after (the machine is shared)",
        "",
        "Efficiency = density × t(best dense) / t(N:M), with t(best dense) the faster of numpy (OpenBLAS) and the "
        "scheduled dense TVM kernel. The three are timed side by side: in each round every contender gives one "
        f"sample (TVM `time_evaluator`, ≥ {SAMPLE_S * 1e3:.0f} ms of calls after a warm-up call), ratios are taken "
        "within the round and the median over rounds is quoted. A round waits up to "
        f"{meta['max_wait_s']:.0f} s for other processes to go quiet; rounds in which they still "
        f"kept ≥ {QUIET_CORES} core busy are dropped (column *rounds*: used/total; all rounds are used, and the row "
        f"flagged, if fewer than 3 were quiet). Goal ≥ {GOAL}; 1.0 is the limit (every skipped MAC saved). "
        "fp32; the TVM kernels' times include their layout copies (x transpose or phase buffer, output transpose).",
        "",
        "| layer | config | density | N:M speed-up vs best dense | efficiency | goal ≥ 0.5 "
        "| dense TVM speed-up vs numpy | N:M useful GFLOP/s | rounds | rel. error vs numpy |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        rounds = f"{r['rounds_used']}/{r['rounds']}" + (" contended" if r["contended"] else "")
        lines.append(
            f"| {r['layer']} | {r['config']} | {r['density']:.3f} | {r['speedup_vs_best_dense']:.2f}× "
            f"| **{r['efficiency']:.2f}** | {'met' if r['efficiency'] >= GOAL else 'NOT met'} "
            f"| {r['dense_tvm_vs_numpy']:.2f}× | {r['nm_gflops_useful']:.0f} | {rounds} "
            f"| {r['relative_error_vs_numpy']:.1e} |"
        )
    lines += [
        "",
        "Median times behind the ratios, ms (N:M / dense TVM / numpy): "
        + "; ".join(
            f"{r['layer']} {r['config']}: {r['median_s']['nm'] * 1e3:.3f} / "
            f"{r['median_s']['dense_tvm'] * 1e3:.3f} / {r['median_s']['numpy'] * 1e3:.3f}"
            for r in rows
        )
        + ".",
        "",
        "`kernels.json` also has each N:M kernel's tiles (rows_per_task × cols register tile; k_tile = "
        "reduction rows, or input channels for conv, kept in L1), executed MACs and the efficiency from "
        "minimum times.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, GEMM and CREPE conv only")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds per row (default 15, quick 5)")
    parser.add_argument("--max-wait", type=float, default=10.0, help="seconds a round may wait for a quiet machine")
    args = parser.parse_args(argv)
    rounds = args.rounds or (5 if args.quick else 15)
    load_before = os.getloadavg()
    rng = np.random.default_rng(0)
    m, k, n = 256, 1024, 1024
    crepe = ((16, 128, 128, 1), (16, 128, 64, 1), (31, 0, 32, 0))
    square = ((1, 128, 64, 64), (128, 128, 3, 3), (1, 1, 1, 1))
    rows = []
    for config in CONFIGS:
        timed, error, kernel = gemm_case(m, k, n, config, rounds, args.max_wait, rng)
        rows.append(summarise(f"GEMM {m}×{k}×{n}", config, timed, error, kernel, m * k * n))
        print(rows[-1]["layer"], config, f"efficiency {rows[-1]['efficiency']:.2f}", flush=True)
    convs = [("CREPE-tiny conv2, 16 frames", crepe)] + ([] if args.quick else [("conv 3×3 128→128, 64×64", square)])
    for name, (x_shape, w_shape, padding) in convs:
        b, _, h, w = x_shape
        o, c, kh, kw = w_shape
        oh, ow = h + padding[0] + padding[2] - kh + 1, w + padding[1] + padding[3] - kw + 1
        for config in CONFIGS:
            timed, error, kernel = conv_case(x_shape, w_shape, padding, config, rounds, args.max_wait, rng)
            rows.append(summarise(name, config, timed, error, kernel, b * oh * ow * o * c * kh * kw))
            print(name, config, f"efficiency {rows[-1]['efficiency']:.2f}", flush=True)
    target = host_target()
    meta = stamp(
        "kernel speed (measured)",
        llvm_target=str(target),
        vector_bits=CPUShape.of(target).vector_bits,
        load_average_1_5_15min={"before": load_before, "after": os.getloadavg()},
        rounds=rounds,
        max_wait_s=args.max_wait,
        gemm=[m, k, n],
        convs={name: {"x": s[0], "w": s[1], "padding_tlbr": s[2]} for name, s in convs},
    )
    write("kernels", {"meta": meta, "rows": rows}, markdown(meta, rows))


if __name__ == "__main__":
    main()

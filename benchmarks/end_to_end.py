"""End-to-end latency and build time on this CPU: onnxruntime, PyTorch, the dense TVM build, TASD builds.

For every benchmark model, at its benchmark batch and at batch 1:
onnxruntime on the original ONNX model and, where the model comes from
PyTorch (MiniLM, CREPE, EfficientNet-Lite0), the PyTorch module — both on the thread count TVM's
runtime uses (one per physical core unless ``TVM_NUM_THREADS`` is set,
:mod:`tvm_tasd.threads`); the dense TVM build for ``cpu-emulated`` (every layer through
the scheduled dense kernel, every other op through
``schedules/llvm_default.py``); the TASD build at the committed TASDER plans
(``benchmarks/results/plans/``, the quality the search accepted) for
``vegeta-m8`` and, where one is committed, for ``cpu-emulated`` itself (a plan
searched on this CPU's measured kernel speed-ups), and at a few uniform configs. All are timed side by side: blocks of
consecutive runs per contender, each block after untimed runs that let the
other runtime's spinning threads settle, interleaved over rounds; ratios are
taken within a round (the machine's load of that moment hits both) and
reported as the median over rounds with their range. Ratios are what to
quote: the same machine, the same run.

The TVM builds are compiled for ``cpu-emulated``'s portable AVX2 target and,
with ``--targets cpu-emulated host``, also for this machine's own CPU (``llvm
-mcpu=<host>``, e.g. AVX-512 on a Zen 4 host; such builds are labelled
``[host]`` and compared with the dense build of their own target), as
onnxruntime picks its kernels for the host CPU when it runs.

    python benchmarks/end_to_end.py [--models minilm crepe-tiny ...] [--batches benchmark 1] [--quick] [--tune S]
                                    [--targets cpu-emulated host]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tvm_tasd.threads import default_tvm_threads

default_tvm_threads()  # before TVM starts its thread pool: TVM alone would use half the cores here

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import tvm  # noqa: E402
from tvm import relax  # noqa: E402

from tvm_tasd import build  # noqa: E402
from tvm_tasd.benchmarks.common import CPU_TARGETS, stamp, stamp_markdown, write  # noqa: E402
from tvm_tasd.frontend import from_onnx  # noqa: E402
from tvm_tasd.tuning import Tuning  # noqa: E402

PLANS = Path(__file__).resolve().parent / "results" / "plans"
#: The targets whose committed plans are timed (``PLANS/<model>_<target>.json``, where present); the first is tuned
#: with ``--tune``.
PLAN_TARGETS = ("vegeta-m8", "cpu-emulated")
#: Consecutive timed runs of one contender per round.
BLOCK = 5
#: Builds timed per TVM contender; its build time is their median (one build's time varied by ±10 % here).
BUILD_REPEATS = 3
#: Untimed runs before each block, for at least this long: onnxruntime's and TVM's worker threads spin for a while
#: after a run, and a run right after the other runtime's loses its cores to them (a 0.03 ms digits-cnn run took
#: 40 ms right after onnxruntime's; a block of tiny runs fits inside that window).
SETTLE_S = 0.05
#: The VM runs in (at least) two speed states that switch every few seconds to a minute, and onnxruntime slows
#: more than TVM in the slow one (MiniLM at 8 × 40, 2026-12-05: onnxruntime 40 → 53 ms, the dense TVM build 36.7 →
#: 42.3 ms), so a ratio depends on the state its round ran in. Besides the median over all rounds, each row gives
#: the median over the rounds in which onnxruntime ran within this factor of its fastest round: the state least
#: favourable to TVM. At least the fastest share of the rounds counts: one outlier round is no state (PP-OCR cls
#: at 8, 2026-12-05: a single round within 1.1× read 0.73×, the median of all rounds 1.61×).
FASTEST_ROUNDS = 1.1
FASTEST_SHARE = 1 / 3
SENTENCE = "A man is playing a guitar on stage."


@dataclass(frozen=True)
class Case:
    """A benchmark model: its ONNX file and an input at a batch, the PyTorch module where there is one."""

    batch: int  # the batch of the quality benchmarks
    onnx_path: Callable[[int], Path]
    feed: Callable[[int], dict[str, np.ndarray]]
    configs: tuple[str, ...] = ()  # uniform TASD configs timed beside the plan
    torch_runner: Callable[[], Callable[[dict[str, np.ndarray]], object]] | None = None


def _minilm_torch():
    import torch

    from tvm_tasd.benchmarks.models import minilm

    module = minilm.encoder()
    return lambda feed: module(*(torch.from_numpy(feed[name]) for name in minilm.INPUT_NAMES))


def _crepe_torch(capacity: str):
    import torch

    from tvm_tasd.benchmarks.models import crepe

    network = crepe.network(capacity)
    return lambda feed: network(torch.from_numpy(feed["frames"]))


def _minilm_case() -> Case:
    from tvm_tasd.benchmarks.models import minilm

    return Case(8, lambda batch: minilm.onnx_path(batch, 40),
                lambda batch: minilm.Tokenizer(40)([SENTENCE] * batch),
                ("4:8+2:8", "2:8+1:8"), _minilm_torch)


def _crepe_case(capacity: str, configs: tuple[str, ...]) -> Case:
    from tvm_tasd.benchmarks.models import crepe

    return Case(64, lambda batch: crepe.onnx_path(capacity, batch),
                lambda batch: {"frames": crepe.synthetic_tones(batch, seed=0)[0]},
                configs, lambda: _crepe_torch(capacity))


def _digits_case(name: str) -> Case:
    from tvm_tasd.models.digits import INPUT_NAME, load_data, model_path

    return Case(120, lambda _batch: model_path(name), lambda batch: {INPUT_NAME: load_data().test_x[:batch]})


def _ppocr_case(kind: str) -> Case:
    from tvm_tasd.benchmarks.models import ppocr

    lines = ppocr.text_lines if kind == "rec" else ppocr.orientation_lines
    return Case(8, lambda batch: ppocr.onnx_path(kind, batch), lambda batch: {"x": lines(batch, seed=0)[0]})


def _efficientnet_torch():
    import torch

    from tvm_tasd.benchmarks.models import efficientnet

    network = efficientnet.network()
    return lambda feed: network(torch.from_numpy(feed["images"]))


def _efficientnet_case() -> Case:
    from tvm_tasd.benchmarks.models import efficientnet

    return Case(16, efficientnet.onnx_path, lambda batch: {"images": efficientnet.crops("test", batch)},
                torch_runner=_efficientnet_torch)


CASES: dict[str, Callable[[], Case]] = {
    "minilm": _minilm_case,
    "crepe-tiny": lambda: _crepe_case("tiny", ("2:4+1:8", "2:8")),
    "crepe-full": lambda: _crepe_case("full", ("2:8",)),
    "digits-mlp": lambda: _digits_case("digits-mlp"),
    "digits-cnn": lambda: _digits_case("digits-cnn"),
    "ppocr-rec": lambda: _ppocr_case("rec"),
    "ppocr-cls": lambda: _ppocr_case("cls"),
    "efficientnet-lite0": _efficientnet_case,
}


def _timed_build(mod, target, **choice):
    """The executable and its build time: the median of :data:`BUILD_REPEATS` builds (one, where it tunes: a
    second would find the first's database)."""
    seconds = []
    for _ in range(1 if "tuning" in choice else BUILD_REPEATS):
        start = time.perf_counter()
        ex = build(mod, "cpu-emulated", target=target, **choice)  # the plain CPU kernels, compiled for target
        seconds.append(time.perf_counter() - start)
    return ex, float(np.median(seconds))


def _onnxruntime(path, feed):
    options = ort.SessionOptions()
    options.intra_op_num_threads = tvm.runtime.num_threads()  # the threads TVM's runtime uses
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, feed)


def _pytorch(factory, feed):
    import torch

    torch.set_num_threads(tvm.runtime.num_threads())
    forward = factory()

    def run():
        with torch.inference_mode():
            return forward(feed)

    return run


@dataclass(frozen=True)
class _Build:
    executable: object
    seconds: float
    target: str  # the TVM target it was compiled for
    dense: str  # the label of the dense build for the same target: its speed and build time reference


def _builds(mod, plans: dict[str, Path], configs, tune_s: float | None, target_name: str) -> dict[str, _Build]:
    """Every TVM build of one target, by label (labels of targets other than cpu-emulated name the target);
    ``plans``: the committed plans by the target they were searched for."""
    target = CPU_TARGETS[target_name]()

    def label(build: str) -> str:
        return build if target_name == "cpu-emulated" else f"{build} [{target_name}]"

    timed = {label("dense"): _timed_build(mod, target, config="dense")}
    for searched_for, plan in plans.items():
        timed[label(f"TASDER plan ({searched_for})")] = _timed_build(mod, target, plan=plan)
    for config in configs:
        timed[label(config)] = _timed_build(mod, target, config=config)
    if tune_s is not None:  # a fresh database per model: its build time includes tuning from scratch
        with tempfile.TemporaryDirectory() as records:
            timed[label(f"dense, tuned {tune_s:g} s")] = _timed_build(mod, target, config="dense",
                                                                     tuning=Tuning(tune_s, records))
            for searched_for, plan in list(plans.items())[:1]:  # the ops outside the layers: tuned already
                timed[label(f"TASDER plan ({searched_for}), tuned")] = _timed_build(mod, target, plan=plan,
                                                                                   tuning=Tuning(tune_s, records))
    return {name: _Build(ex, seconds, str(target), label("dense")) for name, (ex, seconds) in timed.items()}


def measure(name: str, batch: int, rounds: int, tune_s: float | None = None,
            targets: Sequence[str] = ("cpu-emulated",)) -> list[dict]:
    """Rows of every contender for model ``name`` at ``batch``; the TVM builds for each of ``targets``."""
    case = CASES[name]()
    path, feed = case.onnx_path(batch), case.feed(batch)
    imported = from_onnx(onnx.load(path), {k: list(v.shape) for k, v in feed.items()})
    args = [tvm.runtime.tensor(feed[n]) for n in imported.inputs]
    plans = {t: PLANS / f"{name}_{t}.json" for t in PLAN_TARGETS if (PLANS / f"{name}_{t}.json").exists()}
    builds = {}
    for target_name in targets:
        builds.update(_builds(imported.mod, plans, case.configs, tune_s, target_name))
    runners = {"onnxruntime": _onnxruntime(path, feed)}
    if case.torch_runner is not None:
        runners["pytorch"] = _pytorch(case.torch_runner, feed)
    for config, build in builds.items():
        vm = relax.VirtualMachine(build.executable, tvm.cpu())
        runners[config] = lambda vm=vm: vm["main"](*args)
    blocks = {c: [] for c in runners}  # per round, the median of the contender's block
    for run in runners.values():
        run()  # warm-up
    for _ in range(rounds):  # interleaved blocks, so background load hits every contender alike
        for config, run in runners.items():
            blocks[config].append(_block_median(run))
    blocks = {c: np.array(b) for c, b in blocks.items()}
    first_dense = next(iter(builds.values())).dense
    ort_fastest = fastest_rounds(blocks["onnxruntime"])
    rows = []
    for config, seconds in blocks.items():
        vs_ort = blocks["onnxruntime"] / seconds  # ratios within a round: the load of that moment hits both
        dense = builds[config].dense if config in builds else first_dense
        row = {"model": name, "batch": batch, "config": config, "median_s": float(np.median(seconds)),
               "speedup_vs_ort": float(np.median(vs_ort)), "speedup_vs_ort_range": [float(vs_ort.min()),
                                                                                     float(vs_ort.max())],
               "speedup_vs_ort_fastest": float(np.median(vs_ort[ort_fastest])),
               "speedup_vs_dense": float(np.median(blocks[dense] / seconds))}
        if config in builds:
            build = builds[config]
            layers = build.executable.layers
            row.update(build_s=build.seconds, build_vs_dense=build.seconds / builds[dense].seconds,
                       tvm_target=build.target,
                       mac_density=sum(l["executed_macs"] for l in layers) / sum(l["dense_macs"] for l in layers))
        rows.append(row)
    return rows


def fastest_rounds(seconds: np.ndarray) -> np.ndarray:
    """Which rounds count as onnxruntime's fast state: within :data:`FASTEST_ROUNDS` of its fastest round, and at
    least its fastest :data:`FASTEST_SHARE` of the rounds."""
    share = np.sort(seconds)[math.ceil(FASTEST_SHARE * len(seconds)) - 1]  # the slowest of the fastest share
    return seconds <= max(FASTEST_ROUNDS * seconds.min(), share)


def _block_median(run) -> float:
    """Seconds per run: the median of :data:`BLOCK` timed runs after :data:`SETTLE_S` of untimed ones."""
    settled = time.perf_counter() + SETTLE_S
    run()
    while time.perf_counter() < settled:
        run()
    times = []
    for _ in range(BLOCK):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _line(r: dict) -> str:
    share = f"{r['mac_density']:.3f}" if "mac_density" in r else "—"
    build_ratio = f"{r['build_vs_dense']:.2f}×" if "build_vs_dense" in r else "—"
    low, high = r["speedup_vs_ort_range"]
    return (f"| {r['model']} | {r['batch']} | {r['config']} | {share} | {r['median_s'] * 1e3:.2f} "
            f"| {r['speedup_vs_ort']:.2f}× ({low:.2f}–{high:.2f}) | {r['speedup_vs_ort_fastest']:.2f}× "
            f"| {r['speedup_vs_dense']:.2f}× | {build_ratio} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--batches", nargs="+", default=["benchmark", "1"], choices=["benchmark", "1"],
                        help="the model's benchmark batch, batch 1, or both")
    parser.add_argument("--rounds", type=int, default=6, help=f"interleaved rounds of {BLOCK} runs per contender")
    parser.add_argument("--quick", action="store_true", help="CREPE tiny at its benchmark batch, 2 rounds")
    parser.add_argument("--tune", type=float, metavar="SECONDS",
                        help="also time the dense build and the plan with MetaSchedule tuning of the other ops")
    parser.add_argument("--targets", nargs="+", choices=list(CPU_TARGETS), default=["cpu-emulated"],
                        help="compile the TVM builds for cpu-emulated's portable AVX2 target, for this machine's own "
                             "CPU (host), or both, timed side by side (default: cpu-emulated)")
    parser.add_argument("--name", default="end_to_end", help="results file stem under benchmarks/results/")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.batches, args.rounds = ["crepe-tiny"], ["benchmark"], 2
    rows = []
    for model in args.models:
        for batch in dict.fromkeys(CASES[model]().batch if b == "benchmark" else 1 for b in args.batches):
            print(f"{model} batch {batch}…", flush=True)
            rows += measure(model, batch, args.rounds, args.tune, args.targets)
    tvm_targets = {name: str(CPU_TARGETS[name]()) for name in args.targets}
    meta = stamp("end-to-end latency and build time on this CPU (measured)", tvm_targets=tvm_targets)
    lines = ["# End to end on this CPU (measured)", "", *stamp_markdown(meta),
             *(f"- TVM target {name}: `{target}`" for name, target in tvm_targets.items()), "",
             "onnxruntime = the original ONNX model; pytorch = the PyTorch module it was exported from (eager, "
             "inference mode); both on TVM's thread count. dense = the TVM build with every matmul/conv through the "
             "scheduled dense kernel; TASD = the fused N:M kernels (a committed TASDER plan: for vegeta-m8, or "
             "searched for cpu-emulated on this CPU's measured kernel speed-ups; or a uniform config); every other op "
             "through the default CPU schedules in all TVM builds (\"tuned\": "
             "or MetaSchedule's schedule where it timed faster, `--tune`; its build time includes the tuning). "
             f"Build time: the median of {BUILD_REPEATS} builds (one with `--tune`). "
             "Each round times "
             f"a block of {BLOCK} runs per contender (its median), each block after ≥ {SETTLE_S * 1e3:.0f} ms of "
             f"untimed runs; ratios are taken within a round, then the median over {args.rounds} rounds (in "
             "brackets: the lowest and highest round); ms is the median block. \"onnxruntime fastest\": the median "
             f"over the rounds in which onnxruntime ran within {FASTEST_ROUNDS:g}× of its fastest round, and at "
             f"least its fastest {FASTEST_SHARE:.0%} of the rounds (this VM "
             "switches between speed states, and onnxruntime gains more than TVM in the fast one: the conservative "
             "figure). Quote the ratios.",
             "", "| model | batch | build | executed MAC share | ms | speed vs onnxruntime (range) "
             "| speed vs onnxruntime fastest | speed vs dense TVM | build time vs dense |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    lines += [_line(r) for r in rows]
    write(args.name, {"meta": meta, "rows": rows}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

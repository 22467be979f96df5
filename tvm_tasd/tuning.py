"""Optional MetaSchedule tuning of the operators the TASD rewrite leaves to TVM (``tvmc compile --tune SECONDS``).

Where it sits: between the rewrite and compilation (:func:`tvm_tasd.build` with ``tuning=``). The module is
legalized and fused exactly as :func:`~tvm_tasd.pipeline.relax_pipeline` does; every fused function that is
not scheduled yet becomes a MetaSchedule task. The N:M and dense layer kernels arrive scheduled and are never
tuned: their tiles come from ``schedules/``.

Each task is first measured with the project's own CPU schedule (``schedules/llvm_default.py``), which
seeds the search's database (``search/``); MetaSchedule's evolutionary search then runs until the time budget
is spent. Last, the default schedule and the search's best are timed side by side in this process (medians
of interleaved rounds: the best of many noisy measurements is not compared with a single one) and the faster
goes into ``chosen/``, the database compilation applies. So a tuned build never takes a schedule that
measured slower than the default one, on the machine and under the load of the tuning run.

The databases (under ``work_dir``, one folder per TVM target) are reused: a function already chosen is not
tuned again, so a second compile of the same model, or of another with the same operators, costs no tuning
time. Delete the folder to tune afresh.

Not handled: GPU targets (the CUDA path has its own ``dlight`` rules); tuning the N:M kernels themselves;
functions with integer inputs (gathers: MetaSchedule measures on random data, and random indices read out of
bounds).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tvm
from tvm import s_tir
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.support.tar import tar

from .schedules.llvm_default import default_schedule

#: MetaSchedule candidates measured per round: small, so the budget is checked often on a 2-core machine.
TRIALS_PER_ROUND = 16
#: Seconds one candidate may take to build (LLVM on 2 cores takes a few) and to run.
BUILD_TIMEOUT_S = 60
RUN_TIMEOUT_S = 30


def default_work_dir() -> Path:
    """``$XDG_CACHE_HOME/tvm_tasd/tuning`` (``~/.cache/…`` when unset)."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "tvm_tasd" / "tuning"


@dataclass(frozen=True)
class Tuning:
    """Tune for ``seconds`` of search (after one measurement of every new function's default schedule) and
    keep the records in ``work_dir``; ``seconds=0`` only measures the defaults and applies what is recorded."""

    seconds: float
    work_dir: Path = field(default_factory=default_work_dir)

    def __post_init__(self):
        if not 0 <= self.seconds < math.inf:
            raise ValueError(f"--tune takes the seconds of search, a finite number ≥ 0, not {self.seconds!r}")
        object.__setattr__(self, "work_dir", Path(self.work_dir))

    def database_dir(self, target: tvm.target.Target) -> Path:
        """Records measured for one TVM target (CPU model and features) only apply to that target."""
        spec = json.dumps(target.export(), sort_keys=True, default=str)
        return self.work_dir / f"{target.kind.name}-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"


def tune(mod: tvm.IRModule, target: tvm.target.Target, tuning: Tuning, fused_passes, log=print) -> ms.Database:
    """Tune the unscheduled functions of the rewritten ``mod`` (``fused_passes``: the passes that legalize
    and fuse it, as compilation will); the database to compile with: one record per function, the faster of
    the default schedule and the search's best, timed side by side."""
    if target.kind.name != "llvm":
        raise ValueError(f"--tune tunes CPU (llvm) builds; the target is {target.kind.name}")
    folder = tuning.database_dir(target)
    chosen = _database(folder / "chosen")
    with target:
        fused = tvm.transform.Sequential(fused_passes)(mod)
    measure_target = _measure_target(target)
    tasks = [task for task in ms.relax_integration.extract_tasks(fused, measure_target)
             if _tunable(task) and not chosen.has_workload(task.dispatched[0])]
    if not tasks:
        log(f"tuning: nothing new to tune (operators outside the layer kernels already chosen in {folder})")
        return chosen
    log(f"tuning {len(tasks)} operators for {tuning.seconds:g} s (+ measuring each default schedule); "
        f"records → {folder}")
    search = _database(folder / "search")
    with tempfile.TemporaryDirectory(prefix="tvm_tasd_tuning_") as scratch:  # the candidates' libraries
        builder = ms.builder.LocalBuilder(f_build=_build, f_export=functools.partial(_export, scratch),
                                          timeout_sec=BUILD_TIMEOUT_S)
        runner = ms.runner.LocalRunner(timeout_sec=RUN_TIMEOUT_S)
        defaults = _record_defaults(tasks, measure_target, search, builder, runner)
        if tuning.seconds > 0:
            _search(tasks, folder, search, builder, runner, tuning.seconds)
    lines = ["operator                          default µs   tuned µs   (side by side)"]
    for task, default in zip(tasks, defaults):
        # The database skips records with empty traces: a default no rule fits leaves none behind it.
        best = next(iter(search.get_top_k(default.workload, 1)), default)
        candidates = [default] if str(best.trace) == str(default.trace) else [default, best]
        seconds = _side_by_side(task.dispatched[0], [r.trace for r in candidates], target)
        winner = min(range(len(candidates)), key=seconds.__getitem__)
        chosen.commit_tuning_record(ms.database.TuningRecord(
            candidates[winner].trace, chosen.commit_workload(task.dispatched[0]), [seconds[winner]],
            measure_target, default.args_info))
        tuned = f"{1e6 * seconds[1]:10.1f}" if len(seconds) > 1 else f"{'—':>10}"
        lines.append(f"{task.task_name[:32]:32} {1e6 * seconds[0]:11.1f} {tuned}   "
                     f"{'tuned' if winner else 'default'}")
    log("\n".join(lines))
    return chosen


def _database(folder: Path) -> ms.database.JSONDatabase:
    folder.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(work_dir=str(folder))


def _side_by_side(workload: tvm.IRModule, traces, target: tvm.target.Target, rounds: int = 5) -> list[float]:
    """Seconds per call of ``workload`` under each trace: medians over interleaved rounds in this process, so
    the search's best of many noisy measurements is not compared with one measurement of the default."""
    rng = np.random.default_rng(0)
    args = [tvm.runtime.tensor(rng.random([int(d) for d in arg.shape], dtype=np.float64).astype(arg.dtype))
            for arg in ms.arg_info.ArgInfo.from_prim_func(workload["main"])]
    timers = []
    for trace in traces:
        sch = s_tir.Schedule(workload)
        trace.apply_to_schedule(sch, remove_postproc=False)
        built = _build(sch.mod, target, None)
        timers.append(built.time_evaluator(built.entry_name, tvm.cpu(), number=10, repeat=1, min_repeat_ms=20))
    times = [[timer(*args).mean for timer in timers] for _ in range(rounds)]
    return [float(np.median(column)) for column in zip(*times)]


def _measure_target(target: tvm.target.Target) -> tvm.target.Target:
    """MetaSchedule needs the core count on the target; it does not change the code generated."""
    return tvm.target.Target({**target.export(), "num-cores": ms.utils.cpu_count(logical=False)})


def _tunable(task) -> bool:
    """Not the rewrite's kernels (``tirx.is_scheduled``: not MetaSchedule's to tune), and no integer inputs:
    MetaSchedule measures on random data, and random indices make a gather read out of bounds."""
    func = task.dispatched[0]["main"]
    if func.attrs is not None and func.attrs.get("tirx.is_scheduled", False):
        return False
    return all(str(arg.dtype).startswith("float") for arg in ms.arg_info.ArgInfo.from_prim_func(func))


def _build(mod: tvm.IRModule, target: tvm.target.Target, _params) -> tvm.runtime.Module:
    """MetaSchedule's default build without its import of every tensor intrinsic (~35 s on this machine,
    paid in every build round: the builder starts fresh worker processes each time)."""
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock  # pylint: disable=import-outside-toplevel

    return tvm.tirx.build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def _export(folder: str, built: tvm.runtime.Module) -> str:
    """Where the runner loads a built candidate from: a library in ``folder``, the tuning run's scratch folder,
    removed with it (MetaSchedule's default export leaves a temporary folder behind per candidate: 42 for the
    digits CNN's two operators and 3 s of search)."""
    path = os.path.join(tempfile.mkdtemp(dir=folder), "candidate." + tar.output_format)
    built.export_library(path, fcompile=tar)
    return path


def _record_defaults(tasks, target, database, builder, runner) -> list[ms.database.TuningRecord]:
    """Measure every task under ``schedules/llvm_default.py``'s schedule and record it like a tuned one
    (the search starts from it); the records."""
    schedules = [default_schedule(task.dispatched[0]["main"], target) for task in tasks]
    args = [ms.arg_info.ArgInfo.from_prim_func(sch.mod["main"]) for sch in schedules]
    built = builder.build([ms.builder.BuilderInput(sch.mod, target) for sch in schedules])
    failed = next((f"{task.task_name}: {b.error_msg}" for task, b in zip(tasks, built) if b.error_msg), None)
    if failed:
        raise RuntimeError(f"a default schedule did not build for measurement: {failed}")
    futures = runner.run([ms.runner.RunnerInput(b.artifact_path, "cpu", a) for b, a in zip(built, args)])
    records = []
    for task, sch, arg, future in zip(tasks, schedules, args, futures):
        result = future.result()
        if result.error_msg:
            raise RuntimeError(f"a default schedule did not run for measurement: {task.task_name}: {result.error_msg}")
        workload = database.commit_workload(task.dispatched[0])
        records.append(ms.database.TuningRecord(sch.trace, workload, result.run_secs, target, arg))
        database.commit_tuning_record(records[-1])
    return records


def _search(tasks, folder: Path, database, builder, runner, seconds: float) -> None:
    """MetaSchedule's evolutionary search over ``tasks`` until ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    stopped = []

    @derived_object
    class StopAtDeadline(ms.measure_callback.PyMeasureCallback):
        """Runs after the default callbacks have committed a round's results; past the deadline it stops the
        search by raising (the scheduler offers no other way out: it fails on tasks terminated from here)."""

        def apply(self, *_):
            if time.monotonic() > deadline:
                stopped.append(True)
                raise TimeoutError("tuning budget spent")

    # MetaSchedule's console handler takes this level when the contexts create it (its own configuration then
    # sets the logger to DEBUG for its log files): its tables go to the files, not the terminal.
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(tasks, str(folder), seed=0)
    try:
        ms.tune.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(folder), max_trials_global=1 << 30,
                           num_trials_per_iter=TRIALS_PER_ROUND, builder=builder, runner=runner, database=database,
                           measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"),
                                              StopAtDeadline()])
    except Exception:  # our stop comes back from the FFI as another exception type
        if not stopped:
            raise

"""``tvmc compile --tune``: MetaSchedule on the ops the rewrite leaves to TVM, never below the default schedule.

One tuning run of the digits CNN's remaining operators (its first conv, too short a reduction for the kernels,
with its bias and ReLU; the max pooling) with a few seconds of search; the rest checks what the database holds
and how a build uses it (the digits MLP leaves nothing to tune: each bias and ReLU runs in its layer's
kernel). Speed is measured by ``benchmarks/``, not here.
"""

import itertools
import json
import tarfile

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from tvm import relax
from tvm.s_tir import meta_schedule as ms

from tvm_tasd import TASDRewrite, build
from tvm_tasd.frontend import from_onnx
from tvm_tasd.hardware import load_target
from tvm_tasd.models.digits import load_data, model_path
from tvm_tasd.pipeline import compile_module, fusion_passes, scheduling_passes
from tvm_tasd.tuning import Tuning, tune

from test_cli import cli

CNN = model_path("digits-cnn")
MLP = model_path("digits-mlp")
BATCH = 8


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """The tuning log, the tuning folder and the tuned artifact of the digits CNN (2:8+1:8); the run's
    temporary files go to a folder of their own (``TMP``), which it must leave empty."""
    path = tmp_path_factory.mktemp("tuning")
    (path / "TMP").mkdir()
    proc = cli("tvmc", "compile", CNN, "--target", "llvm", "--input-shapes", f"input:[{BATCH},64]", "--pass", "tasd",
               "--tasd-config", "2:8+1:8", "--tune", "3", "--tune-dir", "db", "-o", "tuned.tar", cwd=path,
               env={"TMPDIR": str(path / "TMP")})
    return proc.stdout, path


def _records(folder, which="chosen"):
    (database_dir,) = (folder / "db").iterdir()
    return ms.database.JSONDatabase(work_dir=str(database_dir / which))


def test_every_remaining_operator_is_measured_and_the_kernels_are_left_alone(tuned):
    log, folder = tuned
    lines = log.splitlines()
    start = next(i for i, line in enumerate(lines) if "default µs" in line) + 1
    rows = list(itertools.takewhile(lambda row: len(row) == 4, (line.split() for line in lines[start:])))
    assert rows and all(row[-1] in ("default", "tuned") for row in rows), log
    assert not any("tasd_" in line for line in log.splitlines())  # the N:M kernels keep their own tiles
    chosen = _records(folder).get_all_tuning_records()
    assert len(chosen) == len(rows)  # one per operator, the faster of the two
    assert len(_records(folder, "search")) >= len(rows)  # the defaults and what the search measured
    for record, row in zip(sorted(chosen, key=lambda r: float(r.run_secs[0])), sorted(rows, key=_fastest)):
        assert 0 < float(record.run_secs[0]) == pytest.approx(1e-6 * _fastest(row), rel=0.01, abs=1e-7)


def test_tuned_artifact_computes_what_onnxruntime_does_up_to_the_approximation(tuned):
    _, folder = tuned
    x = load_data().test_x[:BATCH]
    cli("tvmc", "run", "tuned.tar", "--inputs", _inputs(folder, x), "--outputs", "out.npz", cwd=folder)
    tuned_out = np.load(folder / "out.npz")["logits"]
    untuned = build(from_onnx(CNN, {"input": [BATCH, 64]}).mod, "vegeta-m8", config="2:8+1:8")
    expected = relax.VirtualMachine(untuned, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(tuned_out, expected, rtol=1e-5, atol=1e-5)
    onnxruntime_out = ort.InferenceSession(str(CNN)).run(None, {"input": x})[0]
    assert np.abs(tuned_out - onnxruntime_out).max() > 1e-4  # the TASD approximation is really in it
    with tarfile.open(folder / "tuned.tar") as tar:
        meta = json.loads(tar.extractfile("metadata.json").read())
    assert meta["tuning"] == {"seconds": 3.0, "database": "db"}


def _fastest(row) -> float:
    """The faster of a log row's default and tuned µs."""
    return min(float(value) for value in row[1:3] if value != "—")


def _inputs(folder, x) -> str:
    np.savez(folder / "inputs.npz", input=x)
    return "inputs.npz"


def test_tuning_leaves_no_temporary_files(tuned):
    """MetaSchedule's own export leaves a folder per built candidate; the tuning run keeps them in one
    scratch folder and removes it."""
    _, folder = tuned
    assert not list((folder / "TMP").iterdir())


def test_a_second_compile_reuses_the_database(tuned):
    _, folder = tuned
    before = len(_records(folder))
    proc = cli("tvmc", "compile", CNN, "--target", "llvm", "--input-shapes", f"input:[{BATCH},64]", "--pass", "tasd",
               "--tasd-config", "2:8+1:8", "--tune", "60", "--tune-dir", "db", "-o", "again.tar", cwd=folder)
    assert "nothing new to tune" in proc.stdout
    assert len(_records(folder)) == before


def test_the_fastest_record_wins_over_the_default_schedule(tmp_path):
    """A record faster than the measured default replaces it in the build — and a slower one does not. The
    record: TVM's plain loop nest with a marker annotation (the database ignores a record with an empty trace)."""
    hw = load_target("cpu-emulated")
    target = hw.tvm_target()
    with target:
        rewritten = TASDRewrite(hw, config="2:8+1:8", dense_kernels=True)(from_onnx(CNN, {"input": [BATCH, 64]}).mod)
        fused = tvm.transform.Sequential(fusion_passes(target))(rewritten)
    database = tune(rewritten, target, Tuning(0, tmp_path), fusion_passes(target), log=lambda _: None)
    task = next(t for t in ms.relax_integration.extract_tasks(fused, target) if t.task_name.startswith("fused_"))
    workload = database.commit_workload(task.dispatched[0])
    (default,) = database.get_top_k(workload, 1)
    marked = tvm.s_tir.Schedule(task.dispatched[0]["main"])
    marked.annotate(marked.get_sblock("compute"), "tuning_test_marker", 1)

    def marked_in_build(run_secs) -> bool:
        database.commit_tuning_record(ms.database.TuningRecord(marked.trace, workload, run_secs, default.target,
                                                               default.args_info))
        with target, database:
            return "tuning_test_marker" in tvm.transform.Sequential(scheduling_passes(target, tuned=True))(
                rewritten).script()

    seconds = [float(s) for s in default.run_secs]
    assert not marked_in_build([10 * s for s in seconds])
    assert marked_in_build([s / 100 for s in seconds])


def test_bad_tuning_requests_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="seconds of search"):
        Tuning(-1, tmp_path)
    with pytest.raises(ValueError, match="seconds of search"):
        Tuning(float("nan"), tmp_path)
    common = ["compile", CNN, "--target", "llvm", "--input-shapes", f"input:[{BATCH},64]", "-o", "x.tar"]
    proc = cli("tvmc", *common, "--tune-dir", "db", cwd=tmp_path, expect=2)
    assert "--tune-dir needs --tune" in proc.stderr
    proc = cli("tvmc", *common, "--tune", "-5", cwd=tmp_path, expect=2)
    assert "error:" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.tar").exists()


def test_an_empty_database_compiles_like_none(tmp_path):
    """A database with no records is falsy; the build must still apply it (not ask MetaSchedule for a default
    one), and compute what the untuned build does."""
    hw = load_target("cpu-emulated")
    target = hw.tvm_target()
    empty = ms.database.JSONDatabase(work_dir=str(tmp_path))
    assert len(empty) == 0
    with target:
        rewritten = TASDRewrite(hw, config="2:8+1:8", dense_kernels=True)(from_onnx(MLP, {"input": [BATCH, 64]}).mod)
        builds = [compile_module(rewritten, target, database) for database in (empty, None)]
    x = tvm.runtime.tensor(load_data().test_x[:BATCH])
    outs = [relax.VirtualMachine(ex, tvm.cpu())["main"](x).numpy() for ex in builds]
    np.testing.assert_array_equal(*outs)


def test_a_model_with_nothing_left_to_tune_still_builds(tmp_path):
    """The digits MLP's bias adds and ReLUs all run in its layers' kernels: the database stays empty, and the
    build with it is the untuned build."""
    mlp = from_onnx(MLP, {"input": [BATCH, 64]}).mod
    x = tvm.runtime.tensor(load_data().test_x[:BATCH])
    tuned = build(mlp, "cpu-emulated", config="2:8+1:8", tuning=Tuning(1, tmp_path))
    untuned = build(mlp, "cpu-emulated", config="2:8+1:8")
    assert len(_records_in(tmp_path)) == 0
    outs = [relax.VirtualMachine(ex, tvm.cpu())["main"](x).numpy() for ex in (tuned, untuned)]
    np.testing.assert_array_equal(*outs)


def _records_in(work_dir):
    (database_dir,) = work_dir.iterdir()
    return ms.database.JSONDatabase(work_dir=str(database_dir / "chosen")).get_all_tuning_records()

"""The ``tvmc`` and ``tasd`` console scripts, run as a user runs them (subprocess).

Fast tests use the bundled digits MLP at batch 8; the slow one compiles CREPE
tiny from ONNX and from a PyTorch ``.pt2`` program. Every artifact is run by
``tvmc run`` in a fresh process and compared with the in-process API.
"""

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from tvm import relax
from tvm.target import codegen

from tvm_tasd import build
from tvm_tasd.frontend import from_onnx
from tvm_tasd.models.digits import load_data, model_path
from tvm_tasd.artifact import run_artifact
from tvm_tasd.schedules.llvm_common import host_target

BIN = Path(sys.executable).parent
MLP = model_path("digits-mlp")
BATCH = 8
SHAPES = f"input:[{BATCH},64]"


def cli(*args, cwd, expect=0, env=None) -> subprocess.CompletedProcess:
    """Run a console script of this environment (``env``: variables to set for it); check its exit code."""
    script = BIN / args[0]
    assert script.exists(), f"{script} is missing: run `pip install -e .` to install the console scripts"
    proc = subprocess.run([str(script), *map(str, args[1:])], cwd=cwd, capture_output=True, text=True, timeout=600,
                          check=False, env={**os.environ, **(env or {})})
    assert proc.returncode == expect, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def run_in_process(executable, x):
    """The first output of ``executable`` on ``x`` (PyTorch programs return a tuple even for one)."""
    out = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x))
    return (out if isinstance(out, tvm.runtime.Tensor) else out[0]).numpy()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Inputs, a calibration set, and the dense and TASD artifacts of the digits MLP."""
    path = tmp_path_factory.mktemp("cli")
    data = load_data()
    np.savez(path / "inputs.npz", input=data.test_x[:BATCH])
    np.savez(path / "calib.npz", input=data.train_x[:256], labels=data.train_y[:256])
    common = ["compile", MLP, "--input-shapes", SHAPES, "--tasd-hw", "vegeta-m8"]
    # the TASD artifact for this machine's own CPU, the dense one for a bare llvm (generic x86-64: it warns)
    tasd = cli("tvmc", *common, "--target", "host", "--pass", "tasd", "--tasd-config", "2:8+1:8", "-o", "tasd.tar",
               cwd=path)
    dense = cli("tvmc", *common, "--target", "llvm", "-o", "dense.tar", cwd=path)
    (path / "tasd.stderr").write_text(tasd.stderr)
    (path / "dense.stderr").write_text(dense.stderr)
    return path


@pytest.fixture(scope="module")
def tasd_in_process():
    """The TASD artifact's inputs and what the in-process API computes on them."""
    x = load_data().test_x[:BATCH]
    return x, run_in_process(build(from_onnx(MLP, {"input": [BATCH, 64]}).mod, "vegeta-m8", config="2:8+1:8"), x)


def members(tar_path) -> dict:
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_compile_writes_one_self_contained_artifact(work):
    files = members(work / "tasd.tar")
    assert set(files) == {"mod.so", "metadata.json", "report.json"}
    meta = json.loads(files["metadata.json"])
    assert meta["inputs"] == [{"name": "input", "shape": [BATCH, 64], "dtype": "float32"}]
    assert meta["outputs"] == [{"name": "logits", "shape": [BATCH, 10], "dtype": "float32"}]
    assert (meta["pass"], meta["config"], meta["hardware"], meta["target"]["kind"]) == ("tasd", "2:8+1:8", "vegeta-m8", "llvm")
    assert meta["target"].get("mcpu") == host_target().attrs.get("mcpu")  # --target host: this machine's CPU
    assert "names no CPU" not in (work / "tasd.stderr").read_text()
    report = json.loads(files["report.json"])
    assert [row["weight"] for row in report["layers"]] == ["2:8+1:8"] * 3
    assert report["totals"]["ratio"]["edp"] < 1
    assert not list(work.glob(".*.part")), "temporary files left behind"


def test_run_in_a_fresh_process_matches_the_in_process_api(work, tasd_in_process):
    proc = cli("tvmc", "run", "tasd.tar", "--inputs", "inputs.npz", "--outputs", "out.npz", "--print-time",
               "--repeat", "2", cwd=work)
    assert "Execution time summary:" in proc.stdout and "mean (ms)" in proc.stdout
    assert "output logits: float32[8, 10]" in proc.stdout
    _, expected = tasd_in_process
    # Same kernels; the artifact's plain llvm target and the hardware's target may vectorise sums differently.
    np.testing.assert_allclose(np.load(work / "out.npz")["logits"], expected, rtol=1e-6, atol=1e-5)


def test_dense_compile_is_the_plain_baseline(work, tasd_in_process):
    meta = json.loads(members(work / "dense.tar")["metadata.json"])
    assert meta["pass"] is None and meta["config"] is None
    if codegen.llvm_get_system_triple().startswith("x86_64"):  # a bare llvm target compiles for generic x86-64
        assert "names no CPU" in (work / "dense.stderr").read_text() and "mcpu" not in meta["target"]
    report = json.loads(members(work / "dense.tar")["report.json"])
    assert {row["weight"] for row in report["layers"]} == {"dense"} and report["totals"]["ratio"]["edp"] == 1.0
    cli("tvmc", "run", "dense.tar", "--inputs", "inputs.npz", "--outputs", "dense.npz", cwd=work)
    x, tasd_out = tasd_in_process
    onnxruntime_out = ort.InferenceSession(str(MLP)).run(None, {"input": x})[0]
    dense_out = np.load(work / "dense.npz")["logits"]
    np.testing.assert_allclose(dense_out, onnxruntime_out, rtol=0, atol=1e-4)
    assert np.abs(dense_out - tasd_out).max() > 1e-3  # the TASD build really differs
    filled = run_artifact(work / "dense.tar", fill_mode="random").outputs  # no inputs given: generated
    assert filled["logits"].shape == (BATCH, 10) and np.isfinite(filled["logits"]).all()


def test_compile_runs_a_too_dense_series_on_the_dense_kernel_unless_told_otherwise(work):
    common = ["compile", MLP, "--target", "llvm", "--input-shapes", SHAPES, "--pass", "tasd", "--tasd-hw",
              "cpu-emulated", "--tasd-config", "4:8+2:8"]
    auto = cli("tvmc", *common, "-o", "auto.tar", cwd=work).stdout
    assert "3 layer(s) run the dense kernel on their approximated weights" in auto
    always = cli("tvmc", *common, "--tasd-kernels", "always", "-o", "always.tar", cwd=work).stdout
    assert "run the dense kernel" not in always
    outputs = {}
    for name, kernels, dense_run in (("auto", "auto", ["fc1.weight", "fc2.weight", "fc3.weight"]),
                                     ("always", "always", [])):
        files = members(work / f"{name}.tar")
        assert json.loads(files["metadata.json"])["nm_kernels"] == kernels
        assert json.loads(files["report.json"])["dense_kernel_layers"] == dense_run
        cli("tvmc", "run", f"{name}.tar", "--inputs", "inputs.npz", "--outputs", f"{name}.npz", cwd=work)
        outputs[name] = np.load(work / f"{name}.npz")["logits"]
    np.testing.assert_allclose(outputs["auto"], outputs["always"], rtol=0, atol=1e-4)  # the same weights


def test_compile_with_a_run_time_activation_series_matches_numpy(work):
    from onnx import numpy_helper

    from tvm_tasd import approximate

    cli("tvmc", "compile", MLP, "--target", "llvm", "--input-shapes", SHAPES, "--pass", "tasd", "--tasd-hw",
        "ttc-vegeta-m8", "--tasd-activation", "2:8", "-o", "act.tar", cwd=work)
    meta = json.loads(members(work / "act.tar")["metadata.json"])
    assert meta["activation"] == "2:8" and meta["config"] == "dense"
    report = json.loads(members(work / "act.tar")["report.json"])
    assert {(row["weight"], row["activation"]) for row in report["layers"]} == {("dense", "2:8")}
    cli("tvmc", "run", "act.tar", "--inputs", "inputs.npz", "--outputs", "act.npz", cwd=work)
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(MLP).graph.initializer}
    h = np.load(work / "inputs.npz")["input"]
    for i in (1, 2, 3):  # numpy: each layer's input decomposed into 2:8 along K, dense weights
        h = approximate(h, "2:8", axis=-1) @ weights[f"fc{i}.weight"] + weights[f"fc{i}.bias"]
        h = np.maximum(h, 0) if i < 3 else h
    np.testing.assert_allclose(np.load(work / "act.npz")["logits"], h, rtol=0, atol=1e-4)


def test_search_report_and_compile_with_the_plan(work):
    search = cli("tasd", "search", MLP, "--hw", "vegeta-m8", "--calibration", "calib.npz", "--metric", "accuracy",
                 "--budget", "0.99", "--batch", "128", "-o", "plan.json", cwd=work)
    assert "plan → plan.json" in search.stdout and "held-out batch(es) the search never saw" in search.stdout
    plan = json.loads((work / "plan.json").read_text())
    assert plan["quality"]["held_out"]["relative"] >= 0.99
    assert plan["quality"]["relative"] >= 0.99 and plan["model"]["inputs"] == {"input": [128, 64]}

    report = cli("tasd", "report", "plan.json", "-o", "plan.html", "-o", "plan_report.json", cwd=work)
    assert "TASDER" in report.stdout and "model (3 layers)" in report.stdout
    data = json.loads((work / "plan_report.json").read_text())
    assert [row["weight"] for row in data["layers"]] == [entry["weight"] for entry in plan["layers"]]
    assert "<svg" in (work / "plan.html").read_text()

    cli("tvmc", "compile", MLP, "--target", "llvm", "--input-shapes", SHAPES, "--pass", "tasd",
        "--tasd-plan", "plan.json", "--tasd-report", "compiled.html", "-o", "planned.tar", cwd=work)
    files = members(work / "planned.tar")
    assert json.loads(files["plan.json"])["layers"] == plan["layers"]
    assert json.loads(files["metadata.json"])["hardware"] == "vegeta-m8"  # from the plan
    assert (work / "compiled.html").exists()

    # the compiled plan computes what the plan's weights compute in onnxruntime (tasd apply)
    applied = cli("tasd", "apply", "plan.json", MLP, "-o", "applied.onnx", cwd=work)
    assert "3 of 3 layer weights replaced" in applied.stdout
    cli("tvmc", "run", "planned.tar", "--inputs", "inputs.npz", "--outputs", "planned_out.npz", cwd=work)
    x = np.load(work / "inputs.npz")["input"]
    expected = ort.InferenceSession(str(work / "applied.onnx")).run(None, {"input": x})[0]
    np.testing.assert_allclose(np.load(work / "planned_out.npz")["logits"], expected, atol=1e-4, rtol=0)

    again = cli("tasd", "report", "planned.tar", "--hw", "stc-2of4", "-o", "stc.json", cwd=work)
    assert "re-modelled on stc-2of4" in again.stdout
    assert json.loads((work / "stc.json").read_text())["hardware"] == "stc-2of4"


def test_search_cross_fits_on_the_first_share_of_the_batches(work):
    search = cli("tasd", "search", MLP, "--calibration", "calib.npz", "--metric", "accuracy", "--batch", "64",
                 "--fit-share", "0.5", "--damp", "0.1", "-o", "fitted.json", cwd=work)
    assert "layer statistics from 2 batch(es) the search did not score on" in search.stdout
    plan = json.loads((work / "fitted.json").read_text())
    assert plan["inputs"]["fit_batches"] == 2 and plan["inputs"]["calibration_batches"] == 2  # searched + held out
    data = np.load(work / "calib.npz")  # the labels travel with their batches: samples 128-191 are searched
    logits = ort.InferenceSession(str(MLP)).run(None, {"input": data["input"]})[0]
    correct = logits.argmax(axis=1) == data["labels"]
    assert plan["quality"]["original"] == pytest.approx(correct[128:192].mean())
    assert plan["quality"]["held_out"]["original"] == pytest.approx(correct[192:].mean())


def test_bench_lists_and_forwards_arguments(tmp_path):
    listing = cli("tasd", "bench", cwd=tmp_path)
    for name in ("cost_table", "decompose_speed", "kernels", "quality_vs_edp"):
        assert name in listing.stdout
    cli("tasd", "bench", "cost_table", "--out", tmp_path / "results", cwd=tmp_path)
    assert (tmp_path / "results" / "cost_table.json").exists()


def test_help_shows_examples(tmp_path):
    assert "--pass tasd" in cli("tvmc", "compile", "--help", cwd=tmp_path).stdout
    assert "examples:" in cli("tvmc", "run", "--help", cwd=tmp_path).stdout
    assert "labels" in cli("tasd", "search", "--help", cwd=tmp_path).stdout


def test_demo_runs_the_main_job(tmp_path):
    proc = cli("tasd", "demo", "--out-dir", "out", cwd=tmp_path)
    assert "test accuracy" in proc.stdout and "modelled EDP vs dense" in proc.stdout
    for name in ("digits-mlp_plan.json", "digits-mlp_dense.tar", "digits-mlp_tasd.tar", "digits-mlp_report.html"):
        assert (tmp_path / "out" / name).exists(), name


BAD_INPUT = {
    "missing model": (["tvmc", "compile", "nope.onnx", "--target", "host"], "does not exist"),
    "not ONNX": (["tvmc", "compile", "notes.onnx", "--target", "host"], "is not an ONNX model"),
    "dynamic shape": (["tvmc", "compile", MLP, "--target", "host"], "--input-shapes"),
    "unknown target": (["tvmc", "compile", MLP, "--target", "tpu9", "--input-shapes", SHAPES], "unknown target"),
    "cuda target": (["tvmc", "compile", MLP, "--target", "cuda", "--input-shapes", SHAPES], "CPU (llvm) artifacts only"),
    "unknown config": (["tvmc", "compile", MLP, "--target", "host", "--input-shapes", SHAPES, "--pass", "tasd",
                        "--tasd-config", "5:4"], "5:4"),
    "plan for another model": (["tvmc", "compile", MLP, "--target", "host", "--input-shapes", SHAPES, "--pass", "tasd",
                                "--tasd-plan", "other_plan.json"], "another model"),
    "unwritable output": (["tvmc", "compile", MLP, "--target", "host", "--input-shapes", SHAPES, "-o",
                           "no/such/dir/out.tar"], "cannot write"),
    "config without the pass": (["tvmc", "compile", MLP, "--target", "host", "--tasd-config", "2:4"], "--pass tasd"),
    "activation series without the pass": (["tvmc", "compile", MLP, "--target", "host", "--tasd-activation", "2:8"],
                                           "--pass tasd"),
    "kernel choice without the pass": (["tvmc", "compile", MLP, "--target", "host", "--tasd-kernels", "always"],
                                       "--pass tasd"),
    "activation series beside a plan": (["tvmc", "compile", MLP, "--target", "host", "--input-shapes", SHAPES,
                                         "--pass", "tasd", "--tasd-plan", "other_plan.json", "--tasd-activation", "2:8"],
                                        "carries its own activation series"),
    "two sparse operands": (["tvmc", "compile", MLP, "--target", "host", "--input-shapes", SHAPES, "--pass", "tasd",
                             "--tasd-hw", "ttc-vegeta-m8", "--tasd-config", "2:8", "--tasd-activation", "2:8"],
                            "one sparse operand per layer"),
    "bad shape syntax": (["tvmc", "compile", MLP, "--target", "host", "--input-shapes", "input:8,64"], "name:[d1,d2"),
    "run a non-artifact": (["tvmc", "run", "notes.onnx"], "not a tvmc artifact"),
    "calibration without labels": (["tasd", "search", MLP, "--calibration", "nolabels.npz", "--metric", "accuracy"],
                                   "'labels'"),
    "report format": (["tasd", "report", "other_plan.json", "-o", "report.pdf"], "suffix"),
    "output over the model": (["tvmc", "compile", "mlp.onnx", "--target", "host", "--input-shapes", SHAPES, "-o",
                               "mlp.onnx"], "would be overwritten"),
    "output over the calibration": (["tasd", "search", "mlp.onnx", "--calibration", "nolabels.npz", "-o",
                                     "nolabels.npz"], "would be overwritten"),
    "report over its plan": (["tasd", "report", "other_plan.json", "-o", "other_plan.json"], "would be overwritten"),
    "shape of another rank": (["tvmc", "compile", MLP, "--target", "host", "--input-shapes", "input:[8,64,1]"],
                              "has 2 dimensions"),
    "shape against a fixed size": (["tvmc", "compile", MLP, "--target", "host", "--input-shapes", "input:[8,32]"],
                                   "fixes dimension 1 to 64"),
    "shape too large": (["tvmc", "compile", MLP, "--target", "host", "--input-shapes", "input:[4000000000,64]"],
                        "int32"),
    "pass without a choice": (["tvmc", "compile", MLP, "--target", "host", "--input-shapes", SHAPES, "--pass", "tasd"],
                              "--tasd-error-threshold"),
    "duplicate input shapes": (["tvmc", "compile", MLP, "--target", "host", "--input-shapes", "input:[8,64] input:[4,64]"],
                               "twice"),
    "unknown cpu": (["tvmc", "compile", MLP, "--target", "llvm -mcpu=notacpu", "--input-shapes", SHAPES],
                    "does not know -mcpu=notacpu"),
    "foreign triple": (["tvmc", "compile", MLP, "--target", "llvm -mtriple=aarch64-linux-gnu", "--input-shapes", SHAPES],
                       "builds for 'aarch64'"),
    "calibration of the wrong width": (["tasd", "search", MLP, "--calibration", "narrow.npz"], "fixes dimension 1 to 64"),
    "plan with no layers": (["tvmc", "compile", MLP, "--target", "host", "--input-shapes", SHAPES, "--pass", "tasd",
                             "--tasd-plan", "empty_plan.json"], "is empty"),
    "plan naming a layer twice": (["tasd", "report", "twice_plan.json", "--model", MLP], "twice"),
    "plan nested too deeply": (["tasd", "report", "deep.json"], "nested too deeply"),
    "max terms 0": (["tasd", "search", MLP, "--calibration", "nolabels.npz", "--max-terms", "0"], "max_terms"),
    "demo budget": (["tasd", "demo", "--budget", "2", "--out-dir", "demo_out"], "--budget"),
    "unknown model output": (["tasd", "search", MLP, "--calibration", "nolabels.npz", "--model-output", "scores"],
                             "no output 'scores'"),
    "plan weights over the calibration": (["tasd", "search", MLP, "--calibration", "calib.weights.npz", "-o",
                                           "calib.json"], "would be overwritten"),
    "apply a plan of another model": (["tasd", "apply", "other_plan.json", MLP, "-o", "applied.onnx"],
                                      "none of the layers"),
    "holdout of everything": (["tasd", "search", MLP, "--calibration", "nolabels.npz", "--holdout", "1"], "holdout"),
    "fit share of everything": (["tasd", "search", MLP, "--calibration", "nolabels.npz", "--fit-share", "1"],
                                "fit share"),
    "fit share leaving one batch": (["tasd", "search", MLP, "--calibration", "nolabels.npz", "--batch", "8",
                                     "--fit-share", "0.5"], "leaves 1 of 2"),
    "damping out of range": (["tasd", "search", MLP, "--calibration", "nolabels.npz", "--damp", "-1"], "damping"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_and_leaves_nothing_behind(case, tmp_path):
    (tmp_path / "notes.onnx").write_text("not a model\n")
    (tmp_path / "other_plan.json").write_text(json.dumps({"layers": [{"name": "encoder.fc.weight", "weight": "2:4"}]}))
    np.savez(tmp_path / "nolabels.npz", input=load_data().train_x[:16])
    (tmp_path / "mlp.onnx").write_bytes(MLP.read_bytes())
    np.savez(tmp_path / "calib.weights.npz", input=load_data().train_x[:16])
    np.savez(tmp_path / "narrow.npz", input=load_data().train_x[:16, :32])
    (tmp_path / "empty_plan.json").write_text(json.dumps({"layers": []}))
    (tmp_path / "twice_plan.json").write_text(json.dumps({"layers": [{"name": "fc1.weight", "weight": "2:4"}] * 2}))
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    before = set(os.listdir(tmp_path))
    argv, message = BAD_INPUT[case]
    proc = cli(*argv, cwd=tmp_path, expect=2)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{argv[0]}: error: "), proc.stderr
    assert message in lines[0] and "Traceback" not in proc.stderr
    assert set(os.listdir(tmp_path)) == before, "a failed command left files behind"


def test_verbose_shows_the_traceback(tmp_path):
    proc = cli("tvmc", "compile", "m.onnx", "--target", "host", "--tasd-config", "2:4", "--verbose", cwd=tmp_path,
               expect=1)
    assert "Traceback" in proc.stderr and "need --pass tasd" in proc.stderr


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.export's own deprecation notices
def test_real_model_from_onnx_and_pt2(tmp_path):
    """CREPE tiny (frames (16, 1024)): ONNX and torch.export artifacts run in a fresh process."""
    torch = pytest.importorskip("torch")
    from tvm_tasd.benchmarks.models import crepe
    from tvm_tasd.frontend import import_model

    frames, _ = crepe.synthetic_tones(16, seed=1)
    onnx_file = crepe.onnx_path("tiny", 16)
    np.savez(tmp_path / "frames.npz", frames=frames)
    tasd = ["--pass", "tasd", "--tasd-hw", "vegeta-m8", "--tasd-config", "2:8+1:8"]
    cli("tvmc", "compile", onnx_file, "--target", "llvm", *tasd, "-o", "onnx.tar", cwd=tmp_path)
    cli("tvmc", "run", "onnx.tar", "--inputs", "frames.npz", "--outputs", "onnx_out.npz", cwd=tmp_path)
    expected = run_in_process(build(from_onnx(onnx_file).mod, "vegeta-m8", config="2:8+1:8"), frames)
    np.testing.assert_allclose(np.load(tmp_path / "onnx_out.npz")["probabilities"], expected, rtol=0, atol=1e-5)

    network = crepe.network("tiny")
    torch.export.save(torch.export.export(network, (torch.from_numpy(frames),)), tmp_path / "crepe.pt2")
    np.savez(tmp_path / "x.npz", x=frames)  # a .pt2 program names its input after the forward() argument
    cli("tvmc", "compile", "crepe.pt2", "--target", "llvm", "-o", "pt2_dense.tar", cwd=tmp_path)
    cli("tvmc", "run", "pt2_dense.tar", "--inputs", "x.npz", "--outputs", "pt2_dense.npz", cwd=tmp_path)
    with torch.no_grad():
        reference = network(torch.from_numpy(frames)).numpy()
    (dense,) = np.load(tmp_path / "pt2_dense.npz").values()
    np.testing.assert_allclose(dense, reference, rtol=0, atol=1e-4)

    cli("tvmc", "compile", "crepe.pt2", "--target", "llvm", *tasd, "-o", "pt2.tar", cwd=tmp_path)
    cli("tvmc", "run", "pt2.tar", "--inputs", "x.npz", "--outputs", "pt2_out.npz", cwd=tmp_path)
    imported = import_model(tmp_path / "crepe.pt2")
    expected = run_in_process(build(imported.mod, "vegeta-m8", config="2:8+1:8"), frames)
    (tasd_out,) = np.load(tmp_path / "pt2_out.npz").values()
    np.testing.assert_allclose(tasd_out, expected, rtol=0, atol=1e-5)
    report = json.loads(members(tmp_path / "pt2.tar")["report.json"])
    assert "conv2.weight" in [row["name"] for row in report["layers"]]  # PyTorch parameter names


def test_a_terminated_compile_leaves_nothing_behind(tmp_path):
    """SIGTERM while the artifact is being written: like Ctrl-C, the partial file and TVM's temporary files go."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    argv = [str(BIN / "tvmc"), "compile", str(MLP), "--target", "llvm", "--input-shapes", SHAPES, "--pass", "tasd",
            "--tasd-config", "2:8+1:8", "-o", "out.tar"]
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.tar.*.part")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the compile ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in stderr, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"] and not list(temp.iterdir())


def test_nan_inputs_are_said_to_make_the_outputs_meaningless(work):
    x = load_data().test_x[:BATCH].copy()
    x[0, 0] = np.nan
    with pytest.warns(UserWarning, match="NaN"):
        run_artifact(work / "dense.tar", {"input": x})

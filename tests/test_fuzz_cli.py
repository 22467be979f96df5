"""Hundreds of bad inputs to ``tvmc`` and ``tasd``, each run as a user runs it (a subprocess).

Generated from building blocks — every file-taking argument × every kind of
bad file, bad values for every flag, damaged plans, artifacts and target
files — plus a few good invocations. For every case:

* a mistake exits 2 with exactly one line on stderr, ``prog: error: …``, and
  no traceback;
* a good invocation exits 0 and writes what it should;
* either way nothing else is left in the working folder or the temp folder.

The cases run two at a time in a module fixture; each test checks one.
"""

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from tvm_tasd.artifact import compile_model
from tvm_tasd.models.digits import load_data, model_path

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
SHAPES = "input:[8,64]"
A = Path("{assets}")  # where the files live; filled in when a case runs, so cases (and test ids) exist up front


@dataclass(frozen=True)
class Case:
    argv: tuple[str, ...]
    ok: bool = False  # a good invocation, not a mistake
    writes: tuple[str, ...] = ()  # files a good invocation leaves in its folder

    @property
    def id(self) -> str:
        return " ".join(self.argv)[:150]


# ------------------------------------------------------------------ the files the cases read

BAD_KINDS = ("missing", "empty", "folder", "random", "text", "json_list", "json_object", "json_string", "json_deep",
             "truncated", "onnx", "npz", "tar", "zip")


def _write_assets(root: Path) -> None:
    data = load_data()
    shutil.copy(model_path("digits-mlp"), root / "mlp.onnx")
    np.savez(root / "calib.npz", input=data.train_x[:256], labels=data.train_y[:256])
    np.savez(root / "inputs.npz", input=data.test_x[:8])
    plan = {"hardware": "vegeta-m8", "layers": [{"name": "fc1.weight", "weight": "2:8"}],
            "model": {"path": str(root / "mlp.onnx"), "inputs": {"input": [8, 64]}}}
    (root / "plan.json").write_text(json.dumps(plan))
    compile_model(root / "mlp.onnx", root / "good.tar", "llvm", {"input": [8, 64]}, tasd=True, hw="vegeta-m8",
                  config="2:8")
    (root / "mine.toml").write_text((resources.files("tvm_tasd.hardware_targets") / "vegeta-m8.toml").read_text())
    rng = np.random.default_rng(0)
    valid = (root / "mlp.onnx").read_bytes()
    for ext in ("onnx", "npz", "json", "tar", "toml", "npy"):
        for kind in BAD_KINDS:
            path = root / f"bad_{kind}.{ext}"
            if kind == "missing":
                continue
            if kind == "folder":
                path.mkdir()
                continue
            content = {
                "empty": b"", "random": rng.bytes(512), "text": b"not what you think\n", "json_list": b"[]",
                "json_object": b"{}", "json_string": b'"x"', "json_deep": b"[" * 100_000 + b"]" * 100_000,
                "truncated": valid[: len(valid) // 2], "onnx": valid, "npz": (root / "inputs.npz").read_bytes(),
            }.get(kind)
            if kind == "tar":
                buffer = io.BytesIO()
                with tarfile.open(fileobj=buffer, mode="w") as tar:
                    info = tarfile.TarInfo("notes.txt")
                    info.size = 5
                    tar.addfile(info, io.BytesIO(b"notes"))
                content = buffer.getvalue()
            elif kind == "zip":
                buffer = io.BytesIO()
                with zipfile.ZipFile(buffer, "w") as archive:
                    archive.writestr("notes.txt", "notes")
                content = buffer.getvalue()
            path.write_bytes(content)
    for name, plan in PLANS.items():
        (root / f"plan_{name}.json").write_text(json.dumps(plan))
    _write_artifacts(root)
    _write_targets(root)


# ------------------------------------------------------------------ the cases


def _file_slots(a: Path) -> dict[str, callable]:
    """Each file-taking argument of the commands, as a command line around one file of the given extension."""
    mlp, calib, plan, good = str(a / "mlp.onnx"), str(a / "calib.npz"), str(a / "plan.json"), str(a / "good.tar")
    return {
        "onnx": [
            lambda f: ("tvmc", "compile", f, "--target", "host", "--input-shapes", SHAPES),
            lambda f: ("tasd", "search", f, "--calibration", calib, "-o", "p.json"),
            lambda f: ("tasd", "decompose", f, "--name", "fc1.weight"),
            lambda f: ("tasd", "report", plan, "--model", f),
        ],
        "npz": [
            lambda f: ("tasd", "search", mlp, "--calibration", f, "-o", "p.json"),
            lambda f: ("tvmc", "run", good, "--inputs", f),
        ],
        "json": [
            lambda f: ("tvmc", "compile", mlp, "--target", "host", "--input-shapes", SHAPES, "--pass", "tasd",
                       "--tasd-plan", f),
            lambda f: ("tasd", "report", f),
        ],
        "tar": [
            lambda f: ("tvmc", "run", f),
            lambda f: ("tasd", "report", f),
        ],
        "toml": [
            lambda f: ("tasd", "targets", f),
            lambda f: ("tvmc", "compile", mlp, "--target", "host", "--input-shapes", SHAPES, "--pass", "tasd",
                       "--tasd-hw", f, "--tasd-config", "2:4"),
            lambda f: ("tasd", "search", mlp, "--calibration", calib, "--hw", f, "-o", "p.json"),
        ],
        "npy": [lambda f: ("tasd", "decompose", f)],
    }


def _flag_cases(a: Path) -> list[tuple[str, ...]]:
    mlp, calib, good = str(a / "mlp.onnx"), str(a / "calib.npz"), str(a / "good.tar")
    compile_ = ("tvmc", "compile", mlp, "--target", "host", "--input-shapes", SHAPES)
    search = ("tasd", "search", mlp, "--calibration", calib, "-o", "p.json")
    cases = []
    cases += [(*search, "--budget", v) for v in ("-1", "0", "1.5", "nan", "inf", "abc")]
    cases += [(*search, "--batch", v) for v in ("0", "-3", "abc")]
    cases += [(*search, "--max-terms", v) for v in ("0", "5", "-1", "x")]
    cases += [(*search, "--metric", "bleu"), (*search, "--strategy", "foo"), (*search, "--seed", "x"),
              (*search, "--model-output", "scores"), (*search, "--metric", "accuracy", "--model-output", "input")]
    cases += [(*compile_, "--pass", "tasd", "--tasd-config", v) for v in
              ("5:4", "", "+", "2:4+", "0:4", "2:300", "abc", "2:4+1:4+1:4+1:4+1:4", "dense+2:4", "2 4")]
    cases += [(*compile_, "--pass", "tasd", "--tasd-error-threshold", v) for v in ("-0.1", "1.5", "nan", "x")]
    cases += [(*compile_, "--pass", "tasd", "--tasd-hw", "ttc-vegeta-m8", "--tasd-activation", v) for v in
              ("5:4", "", "2:8+", "abc")]
    cases += [("tvmc", "compile", mlp, "--input-shapes", SHAPES, "--target", v) for v in
              ("tpu", "llvm -mcpu=notacpu", "{bad", "cuda", "llvm -foo", "", "llvm -mtriple=arm-none-eabi",
               '{"kind": 3}', "stc-2of4", "llvm mcpu=znver3")]
    cases += [("tvmc", "compile", mlp, "--target", "host", "--input-shapes", v) for v in
              ("input:8,64", "input:[8,64", "input:[a,64]", "input:[0,64]", "input:[-1,64]", "nope:[8,64]",
               "input:[8,64] input:[8,64]", "input:[8]", "input:[8,64,1]", "input:[8,32]", "input:[4000000000,64]",
               ":[8]", "input:[]")]
    cases += [(*compile_, "--pass", "tasd", "--tasd-config", "2:4", "--tasd-hw", v) for v in ("tpu9", "nofile.toml")]
    cases += [(*compile_, "--tune", v) for v in ("-1", "nan", "inf", "x", "")]
    cases += [(*compile_, "--tune-dir", "db"), (*compile_, "--tune", "1", "--tune-dir", mlp)]
    cases += [(*compile_, "--tasd-config", "2:4"), (*compile_, "--pass", "tasd"), (*compile_, "--pass", "sparse"),
              (*compile_, "--model-format", "tflite"), (*compile_, "--pass", "tasd", "--tasd-config", "2:4",
                                                         "--tasd-report", "report.pdf")]
    cases += [("tvmc", "run", good, "--print-time", "--repeat", "0"), ("tvmc", "run", good, "--number", "0"),
              ("tvmc", "run", good, "--repeat", "x"), ("tvmc", "run", good, "--fill-mode", "noise")]
    cases += [("tasd", "report", str(a / "plan.json"), "-o", v) for v in ("report.pdf", "report", "folder.json")]
    cases += [(*compile_, "-o", "no/such/dir/out.tar"), (*search[:-2], "-o", "no/such/dir/p.json"),
              ("tvmc", "run", good, "--outputs", "no/such/dir/o.npz"),
              ("tasd", "report", str(a / "plan.json"), "-o", "no/such/dir/r.html")]
    cases += [(*compile_, "-o", mlp), (*search[:-2], "-o", calib), ("tvmc", "run", good, "--outputs", good),
              ("tasd", "report", str(a / "plan.json"), "-o", str(a / "plan.json"))]
    cases += [("tasd", "decompose", mlp, "--name", "fc1.weight", "--config", v) for v in ("5:4", "x", "")]
    cases += [("tasd", "decompose", mlp, "--name", "fc1.weight", "--axis", "5"), ("tasd", "decompose", mlp),
              ("tasd", "decompose", mlp, "--name", "nope")]
    cases += [("tasd", "demo", "--budget", v, "--out-dir", "demo") for v in ("0", "2", "nan")]
    cases += [("tasd", "demo", "--model", "resnet"), ("tasd", "bench", "nope"), ("tasd", "nope"), ("tvmc", "nope"),
              ("tasd",), ("tvmc",), ("tvmc", "compile", mlp, "--target", "host", "--foo"), ("tasd", "search", "--foo"),
              ("tasd", "targets", "tpu9"), ("tvmc", "run")]
    return cases


GOOD_LAYER = {"name": "fc1.weight", "weight": "2:4"}
PLANS = {
    "layers_not_list": {"layers": {"fc1.weight": "2:4"}},
    "layer_not_object": {"layers": ["fc1.weight"]},
    "no_weight": {"layers": [{"name": "fc1.weight"}]},
    "bad_series": {"layers": [{"name": "fc1.weight", "weight": "5:4"}]},
    "series_not_text": {"layers": [{"name": "fc1.weight", "weight": 24}]},
    "bad_method": {"layers": [{**GOOD_LAYER, "method": "bogus"}]},
    "old_score_key_bad": {"layers": [{**GOOD_LAYER, "score": "bogus"}]},
    "method_without_s": {"layers": [{**GOOD_LAYER, "method": "activation"}]},
    "obs_without_damp": {"layers": [{**GOOD_LAYER, "method": "obs"}]},
    "obs_without_terms": {"layers": [{**GOOD_LAYER, "method": "obs", "damp": 0.01}]},
    "weights_record_bad": {"weights": "plan.weights.npz", "layers": [GOOD_LAYER]},
    "weights_file_missing": {"weights": {"file": "gone.weights.npz", "sha256": "0" * 64}, "layers": [GOOD_LAYER]},
    "weights_file_elsewhere": {"weights": {"file": "/etc/passwd", "sha256": "0" * 64}, "layers": [GOOD_LAYER]},
    "negative_s": {"layers": [{**GOOD_LAYER, "method": "activation", "s": [-1.0] * 64}]},
    "s_not_numbers": {"layers": [{**GOOD_LAYER, "method": "activation", "s": "big"}]},
    "duplicate": {"layers": [GOOD_LAYER, GOOD_LAYER]},
    "other_model": {"layers": [{"name": "encoder.layer.0.weight", "weight": "2:4"}]},
    "other_weights": {"layers": [{**GOOD_LAYER, "source": "0" * 20}]},
    "unknown_hardware": {"hardware": "tpu9", "layers": [GOOD_LAYER]},
    "other_numbers": {"hardware": "vegeta-m8", "hardware_digest": "0" * 16, "layers": [GOOD_LAYER]},
    "budget_text": {"budget": "high", "layers": [GOOD_LAYER]},
    "version_3": {"version": 3, "layers": [GOOD_LAYER]},
    "name_not_text": {"layers": [{"name": 3, "weight": "2:4"}]},
}


def _plan_cases(a: Path) -> list[tuple[str, ...]]:
    mlp = str(a / "mlp.onnx")
    cases = []
    for name in PLANS:
        path = str(a / f"plan_{name}.json")
        cases.append(("tvmc", "compile", mlp, "--target", "host", "--input-shapes", SHAPES, "--pass", "tasd",
                      "--tasd-plan", path))
        cases.append(("tasd", "report", path, "--model", mlp))
    return cases


ARTIFACT_DAMAGE = {
    "metadata_list": lambda meta: {"metadata.json": b"[]"},
    "other_format": lambda meta: {"metadata.json": json.dumps({**meta, "format": "other/9"}).encode()},
    "inputs_damaged": lambda meta: {"metadata.json": json.dumps({**meta, "inputs": [{"name": "input"}]}).encode()},
    "target_damaged": lambda meta: {"metadata.json": json.dumps({**meta, "target": "llvm"}).encode()},
    "report_damaged": lambda meta: {"report.json": b'{"report_version": 2}'},
    "report_not_json": lambda meta: {"report.json": b"{"},
    "no_library": lambda meta: {"mod.so": None},
}


def _artifact_cases(a: Path) -> list[tuple[str, ...]]:
    cases = [("tasd", "report", str(a / f"artifact_{name}.tar")) for name in ARTIFACT_DAMAGE]
    return cases + [("tvmc", "run", str(a / f"artifact_{name}.tar")) for name in ARTIFACT_DAMAGE
                    if not name.startswith("report")]  # tvmc run never reads the report


def _write_artifacts(a: Path) -> None:
    with tarfile.open(a / "good.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    metadata = json.loads(members["metadata.json"])
    for name, damage in ARTIFACT_DAMAGE.items():
        with tarfile.open(a / f"artifact_{name}.tar", "w") as tar:
            for member, blob in {**members, **damage(metadata)}.items():
                if blob is not None:
                    info = tarfile.TarInfo(member)
                    info.size = len(blob)
                    tar.addfile(info, io.BytesIO(blob))


TARGET_EDITS = [
    ("clock_ghz = 1.41", "clock_ghz = nan"), ("clock_ghz = 1.41", "clock_ghz = -1"), ("clock_ghz = 1.41", ""),
    ("clock_ghz = 1.41", 'clock_ghz = "fast"'), ("dense_macs_per_cycle", "dense_mac_per_cycle"),
    ('patterns = ["1:8", "2:8", "4:8", "8:8"]', 'patterns = ["9:8"]'),
    ('patterns = ["1:8", "2:8", "4:8", "8:8"]', 'patterns = "2:8"'),
    ('sparse_operands = ["weight"]', 'sparse_operands = ["bias"]'), ("[memory.dram]", "[memory.compute]"),
    ("[tvm]", "[tvm_settings]"), ('kind = "llvm"', 'kind = "tpu"'), ("name =", "name = 3 #"),
    ("[compute]", "[compute"), ("dtype_bits = 16", "dtype_bits = 16.5"), ("[metadata]", "metadata = 1\n[x]"),
]


def _target_cases(a: Path) -> list[tuple[str, ...]]:
    cases = []
    for index in range(len(TARGET_EDITS)):
        path = str(a / f"target_{index}.toml")
        cases += [("tasd", "targets", path),
                  ("tvmc", "compile", str(a / "mlp.onnx"), "--target", "host", "--input-shapes", SHAPES,
                   "--pass", "tasd", "--tasd-hw", path, "--tasd-config", "2:4")]
    return cases


def _write_targets(a: Path) -> None:
    text = (a / "mine.toml").read_text()
    for index, (old, new) in enumerate(TARGET_EDITS):
        assert old in text, old
        (a / f"target_{index}.toml").write_text(text.replace(old, new, 1))


def _good_cases(a: Path) -> list[Case]:
    mlp, calib, good, plan = str(a / "mlp.onnx"), str(a / "calib.npz"), str(a / "good.tar"), str(a / "plan.json")
    return [
        Case(("tasd", "targets"), ok=True),
        Case(("tasd", "targets", "vegeta-m8", str(a / "mine.toml")), ok=True),
        Case(("tasd", "decompose", mlp, "--name", "fc1.weight", "--config", "2:4", "2:8+1:8"), ok=True),
        Case(("tasd", "report", plan, "-o", "r.json", "-o", "r.html"), ok=True, writes=("r.html", "r.json")),
        Case(("tasd", "report", good, "--hw", "stc-2of4"), ok=True),
        Case(("tvmc", "run", good, "--inputs", str(a / "inputs.npz"), "--outputs", "o.npz"), ok=True,
             writes=("o.npz",)),
        Case(("tvmc", "compile", mlp, "--target", "llvm -mcpu=znver3", "--input-shapes", SHAPES, "--pass", "tasd",
              "--tasd-plan", plan, "-o", "m.tar"), ok=True, writes=("m.tar",)),
        Case(("tasd", "search", mlp, "--calibration", calib, "--metric", "accuracy", "--batch", "128", "-o",
              "p.json"), ok=True, writes=("p.json", "p.weights.npz")),  # OBS wins layers of the MLP
        Case(("tvmc", "--version"), ok=True),
        Case(("tasd", "bench"), ok=True),
    ]


def _all_cases(a: Path) -> list[Case]:
    cases = [Case(slot(str(a / f"bad_{kind}.{ext}"))) for ext, slots in _file_slots(a).items()
             for slot in slots for kind in BAD_KINDS if kind != ext]  # bad_onnx.onnx is a good model
    cases += [Case(argv) for builder in (_flag_cases, _plan_cases, _artifact_cases, _target_cases)
              for argv in builder(a)]
    return cases + _good_cases(a)


# ------------------------------------------------------------------ running them


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    left: list[str]  # files in the working folder afterwards
    left_in_temp: list[str]


def _run(case: Case, assets: Path, root: Path, index: int) -> Outcome:
    work, temp = root / f"case{index}" / "work", root / f"case{index}" / "tmp"
    work.mkdir(parents=True)
    temp.mkdir()
    if "folder.json" in case.argv:
        (work / "folder.json").mkdir()  # an output path that is a directory
    argv = [arg.replace(str(A), str(assets)) for arg in case.argv]
    env = {**os.environ, "TMPDIR": str(temp), "TVM_NUM_THREADS": "1", "TVM_TASD_ORT_THREADS": "1"}
    proc = subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=work, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    left = sorted(p.name for p in work.iterdir() if p.name != "folder.json")
    # onnxruntime's embedded telemetry SDK keeps its session id in $TMPDIR/.ses when it is imported (and every
    # later process reuses it): onnxruntime's file, not one the commands write.
    in_temp = sorted(p.name for p in temp.iterdir() if p.name != ".ses")
    return Outcome(proc.returncode, proc.stdout, proc.stderr, left, in_temp)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    _write_assets(root)
    return root


CASES = _all_cases(A)


@pytest.fixture(scope="module")
def outcomes(assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda item: _run(item[1], assets, root, item[0]), enumerate(CASES)))


def test_there_are_hundreds_of_cases():
    assert len([c for c in CASES if not c.ok]) >= 300


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c.id for c in CASES])
def test_case(index, outcomes):
    case, outcome = CASES[index], outcomes[index]
    shown = f"exit {outcome.returncode}\nstdout:\n{outcome.stdout[-2000:]}\nstderr:\n{outcome.stderr[-2000:]}"
    assert not outcome.left_in_temp, f"left in the temp folder: {outcome.left_in_temp}\n{shown}"
    if case.ok:
        assert outcome.returncode == 0, shown
        assert outcome.left == sorted(case.writes), shown
        return
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    assert outcome.returncode == 2, shown
    assert len(lines) == 1 and ": error: " in lines[0] and lines[0].startswith(case.argv[0]), shown
    assert "Traceback" not in outcome.stderr, shown
    assert outcome.left == [], shown

"""The installed wheel carries the hardware targets, schedules and the demo model — and no benchmark model zoo."""

import subprocess
import sys
import zipfile

import pytest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out), str(root)],
        check=True,
    )
    (path,) = out.glob("tvm_tasd-*.whl")
    return path


def test_wheel_contains_package_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for target in ("dense", "stc-2of4", "vegeta-m4", "vegeta-m8", "highlight", "ttc-stc", "ttc-vegeta-m8", "cpu-emulated"):
        assert f"tvm_tasd/hardware_targets/{target}.toml" in names
    assert "tvm_tasd/models/digits-mlp.onnx" in names
    assert any(n.startswith("tvm_tasd/schedules/") for n in names)
    assert {"tvm_tasd/cli/tasd.py", "tvm_tasd/cli/tvmc.py", "tvm_tasd/tasder/__init__.py"} <= names


def test_wheel_ships_no_benchmark_model_code(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    zoo = [n for n in names if "/models/" in n and not n.startswith("tvm_tasd/models/")]
    assert not zoo, zoo
    assert [n for n in names if n.startswith("tvm_tasd/models/") and n.endswith(".py")] == [
        "tvm_tasd/models/__init__.py", "tvm_tasd/models/digits.py"]


def test_targets_load_from_the_installed_wheel(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)], check=True)
    code = (
        "import tvm_tasd, tvm_tasd.hardware as h; "
        "print(tvm_tasd.__file__); print(len([h.load_target(t) for t in h.list_targets()]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        check=True, capture_output=True, text=True,
    ).stdout.split()
    assert out[0].startswith(str(site)), out
    assert int(out[1]) == 10

"""Nothing runs code from a data file: a .pt2 program is read weights-only, a plan never names a .pt2 to load."""

import json
import os
import pickle
import zipfile

import pytest

from tvm_tasd.artifact import load_report
from tvm_tasd.frontend import ModelImportError, from_pt2

torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[models]')")


class _Payload:
    """Unpickling this creates ``marker``: proof that a loader ran code from the file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    """A genuine exported program, and the same archive with a weight swapped for a pickle payload."""
    folder = tmp_path_factory.mktemp("pt2")
    good, evil, marker = folder / "linear.pt2", folder / "evil.pt2", folder / "ran_code"
    torch.export.save(torch.export.export(torch.nn.Linear(16, 8), (torch.zeros(2, 16),)), good)
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(evil, "w") as out:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename.endswith("model_weights_config.json"):
                config = json.loads(data)
                for entry in config["config"].values():
                    entry["use_pickle"] = True  # torch then reads the weight with torch.load(weights_only=False)
                data = json.dumps(config).encode()
            elif item.filename.endswith("weights/weight_0"):
                data = pickle.dumps(_Payload(marker))
            out.writestr(item, data)
    return good, evil, marker


def test_a_pickle_payload_in_a_pt2_is_refused_without_running(programs):
    good, evil, marker = programs
    assert from_pt2(good).params  # the genuine program reads
    with pytest.raises(ModelImportError, match="holds more than tensors"):
        from_pt2(evil)
    assert not marker.exists(), "loading the archive ran the payload"
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # the guard is lifted after the load


def test_pickled_objects_in_a_pt2_are_refused_before_torch_opens_it(programs, tmp_path):
    good, _, _ = programs
    crafted = tmp_path / "objects.pt2"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(crafted, "w") as out:
        for item in source.infolist():
            out.writestr(item, source.read(item.filename))
        out.writestr("linear/data/constants/opaque_obj_0", b"not looked at")
    with pytest.raises(ModelImportError, match="pickled Python objects"):
        from_pt2(crafted)
    (tmp_path / "notes.pt2").write_text("not a program")
    with pytest.raises(ModelImportError, match="zip archive"):
        from_pt2(tmp_path / "notes.pt2")


def test_a_plan_that_names_a_pt2_model_does_not_load_it(programs, tmp_path):
    _, evil, marker = programs
    plan = {"hardware": "vegeta-m8", "layers": [{"name": "weight", "weight": "2:4"}],
            "model": {"path": str(evil), "inputs": {"x": [2, 16]}}}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(ValueError, match="not an ONNX model"):
        load_report(tmp_path / "plan.json")
    assert not marker.exists()

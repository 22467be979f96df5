"""Per-layer reports: rows, reasons, costs and totals; text, JSON and HTML (rendered in headless Chromium)."""

import copy
import json
import re
import shutil
import subprocess
from importlib import resources

import pytest

from tvm_tasd import build
from tvm_tasd.cost import layer_cost
from tvm_tasd.cost import ModelCost
from tvm_tasd.decompose import approximate, relative_error
from tvm_tasd.frontend import from_onnx
from tvm_tasd.hardware import load_target
from tvm_tasd.matcher import find_layers
from tvm_tasd.models.digits import model_path
from tvm_tasd.plan import Plan
from tvm_tasd.policy import TASDWarning
from tvm_tasd.report import WIDTH, Report

HW = "vegeta-m8"


@pytest.fixture(scope="module")
def cnn():
    """The digits CNN built with one series everywhere: conv1 (1 input channel) must stay dense."""
    imported = from_onnx(model_path("digits-cnn"), {"input": [4, 64]})
    executable = build(imported.mod, HW, config="2:8+1:8")
    layers = find_layers(imported.mod)
    report = Report.from_choices(load_target(HW), layers, executable.choices, model="digits-cnn.onnx",
                                 source="uniform config 2:8+1:8")
    return layers, report


@pytest.fixture(scope="module")
def searched():
    """A TASDER-style plan for the digits MLP (search statistics and points written by hand)."""
    stats = {"proxy_error": 0.2, "sensitivity": 1.0, "energy_pj": 1.0, "latency_s": 1.0, "edp_vs_dense": 0.5}
    plan = Plan.from_json({
        "hardware": HW, "budget": 0.99, "metric": "accuracy", "edp_vs_dense": 0.6,
        "quality": {"original": 0.98, "plan": 0.975, "relative": 0.995},
        "search": {"points": [{"edp_vs_dense": e, "relative_quality": q}
                              for e, q in ((0.9, 1.0), (0.6, 0.995), (0.4, 0.96))]},
        "layers": [{"name": "fc1.weight", "weight": "2:8+1:8", **stats},
                   {"name": "fc2.weight", "weight": "4:8", **stats, "proxy_error": 0.1},
                   {"name": "fc3.weight", "weight": "dense", **stats, "proxy_error": 0.0}],
    })
    imported = from_onnx(model_path("digits-mlp"), {"input": [4, 64]})
    return Report.from_plan(plan, find_layers(imported.mod), model="digits-mlp.onnx")


def test_rows_explain_and_cost_every_layer(cnn):
    layers, report = cnn
    rows = {row["name"]: row for row in report.data["layers"]}
    assert rows["conv1.weight"]["weight"] == "dense"
    assert "conv2d with 1 input channel" in rows["conv1.weight"]["why"]
    conv2 = next(layer for layer in layers if layer.name == "conv2.weight")
    expected_error = relative_error(conv2.weight, approximate(conv2.weight, "2:8+1:8", axis=conv2.axis))
    assert rows["conv2.weight"]["weight_error"] == pytest.approx(expected_error)
    assert rows["conv2.weight"]["tasd"]["edp_pj_s"] == pytest.approx(layer_cost(HW, conv2, "2:8+1:8").edp)
    assert rows["conv2.weight"]["macs"]["executed"] < rows["conv2.weight"]["macs"]["dense"]
    model = ModelCost(tuple(layer_cost(HW, l, rows[l.name]["weight"]) for l in layers))
    dense = ModelCost(tuple(layer_cost(HW, l, "dense") for l in layers))
    assert report.edp_ratio == pytest.approx(model.edp / dense.edp)


def test_json_round_trips_and_recosts_on_another_target(cnn):
    _, report = cnn
    saved = json.loads(json.dumps(report.to_json()))
    assert Report.from_json(saved).data == saved
    other = Report.from_json(copy.deepcopy(saved), "stc-2of4")
    assert other.data["hardware"] == "stc-2of4" and other.data["chosen_for"] == HW
    assert [r["weight"] for r in other.data["layers"]] == [r["weight"] for r in saved["layers"]]
    assert other.edp_ratio != report.edp_ratio
    assert "re-modelled on stc-2of4" in other.text()
    with pytest.raises(ValueError, match="not a tvm_tasd report"):
        Report.from_json({"layers": []})


def test_a_version_1_report_still_reads(cnn):
    saved = json.loads(json.dumps(cnn[1].to_json()))
    old = {**saved, "report_version": 1,
           "layers": [{**{k: v for k, v in row.items() if k != "method"}, "score": row["method"]}
                      for row in saved["layers"]]}
    assert Report.from_json(old).data == saved


def test_text_fits_100_columns_even_with_long_names(cnn):
    _, report = cnn
    data = copy.deepcopy(report.to_json())
    for i, row in enumerate(data["layers"]):
        row["name"] = f"encoder.layer.{i}.attention.output.dense.projection.weight"
        row["why"] = "a long explanation " * 12
    text = Report(data).text()
    assert max(map(len, text.splitlines())) <= WIDTH, text
    assert "common prefix 'encoder.layer.'" in text and "model (3 layers)" in text
    for i in range(3):  # the index that tells them apart survives the cut
        assert re.search(rf"^{i}\.attention\S*…\S*projection\.weight ", text, re.MULTILINE), text


def test_tasder_choices_are_explained(searched):
    rows = {row["name"]: row for row in searched.data["layers"]}
    assert rows["fc1.weight"]["why"].startswith("TASDER (budget 0.99): output error 20.0%")
    shares = [int(re.search(r"(\d+)% of the predicted", rows[n]["why"]).group(1)) for n in ("fc1.weight", "fc2.weight")]
    assert shares == [80, 20]  # α·e²: 0.04 and 0.01
    assert rows["fc3.weight"]["why"] == "TASDER kept it dense under budget 0.99"


def test_html_is_self_contained_with_three_plots(searched, cnn):
    page = searched.html()
    assert page.count("<svg") == 3 and page.count("<circle") >= 4  # 3 points + dense (+ the chosen ring)
    assert "<script" not in page and not re.search(r"(src|href)\s*=", page)
    without_points = copy.deepcopy(searched.to_json())
    without_points["search_points"] = None
    assert "holds no search points" in Report(without_points).html()
    assert "No search" in cnn[1].html() and cnn[1].html().count("<svg") == 2


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium; .ci/run does it)")
def test_html_renders_in_headless_chromium(searched, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(searched.html())
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0", "--window-size=1280,1600"]
    shot = subprocess.run([*flags, f"--screenshot={tmp_path / 'shot.png'}", page.as_uri()],
                          capture_output=True, text=True, timeout=120, check=False)
    assert (tmp_path / "shot.png").stat().st_size > 20_000, shot.stderr  # a blank page is a few kB
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=False)
    assert dom.stdout.count("<svg") == 3 and "fc2.weight" in dom.stdout
    for log in (shot.stderr, dom.stderr):  # page errors reach the log as CONSOLE lines; failed loads as net::ERR
        assert "CONSOLE" not in log and "net::ERR" not in log, log


@pytest.fixture
def renamed_copy(tmp_path):
    """A copy of vegeta-m8.toml that keeps the name and doubles the clock."""
    text = (resources.files("tvm_tasd.hardware_targets") / f"{HW}.toml").read_text()
    path = tmp_path / "my-vegeta.toml"
    path.write_text(text.replace("clock_ghz = 1.41", "clock_ghz = 2.82"))
    return path


def test_a_copied_target_that_keeps_the_name_is_never_mistaken_for_the_bundled_one(searched, renamed_copy):
    saved = searched.to_json()
    again = Report.from_json(copy.deepcopy(saved), renamed_copy)
    assert again.data["hardware"] == HW and again.data["hardware_digest"] != saved["hardware_digest"]
    assert again.data["layers"][0]["tasd"]["latency_s"] == pytest.approx(saved["layers"][0]["tasd"]["latency_s"] / 2)
    assert "other numbers" in again.text()


def test_a_plan_names_its_target_by_content(renamed_copy):
    plan = Plan.from_json({"hardware": HW, "hardware_digest": load_target(renamed_copy).digest,
                           "layers": [{"name": "fc1.weight", "weight": "2:8"}]})
    with pytest.raises(ValueError, match="numbers differ"):
        plan.target()  # the name alone resolves to the bundled file, which is not what it was searched for
    assert plan.target(renamed_copy).digest == load_target(renamed_copy).digest
    with pytest.warns(TASDWarning, match="other numbers"):
        plan.target(HW)


def test_control_characters_in_names_reach_the_terminal_escaped(cnn):
    _, report = cnn
    data = copy.deepcopy(report.to_json())
    data["layers"][0]["name"] = "conv1\x1b[2J.weight"
    text = Report(data).text()
    assert "\x1b" not in text and "\\x1b[2J" in text

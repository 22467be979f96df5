"""The benchmark suite's quick modes run, check their own outputs, and sweep on Ray."""

import json

import numpy as np
import pytest

from tvm_tasd.benchmarks import edp_table, sweep


def test_edp_table_quick_runs_locally_and_checks_itself(tmp_path):
    data = edp_table.main(["--quick", "--models", "digits-mlp", "--variants", "0", "0.5",
                           "--targets", "stc-2of4", "ttc-vegeta-m8", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "edp_table_quick.json").read_text())
    assert len(written["rows"]) == 4
    for row in written["rows"]:
        assert row["calibration_quality"] >= 0.99
        assert row["improvement"] == pytest.approx(1 - row["edp_vs_dense"])
    assert data["summary"]["best"] >= data["summary"]["average"] > 0
    assert "modelled" in (tmp_path / "edp_table_quick.md").read_text()
    assert not (tmp_path / "edp_table_quick.partial.jsonl").exists()  # the checkpoint goes once the table is written


def test_edp_table_check_rejects_a_wrong_baseline():
    row = {"model": "m", "target": "t", "budget": 0.99, "edp_vs_dense": 0.5, "improvement": 0.6,
           "calibration_quality": 1.0, "unseen_quality": 1.0}
    with pytest.raises(SystemExit, match="against the dense run"):
        edp_table.check({"rows": [row]})


def test_sweep_on_a_local_ray_instance(tmp_path):
    pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[test]')")
    local = edp_table.main(["--quick", "--models", "digits-mlp", "--variants", "0", "--targets", "vegeta-m8",
                            "--workers", "1", "--out", str(tmp_path / "local")])
    on_ray = edp_table.main(["--quick", "--models", "digits-mlp", "--variants", "0", "--targets", "vegeta-m8",
                             "--ray", "local", "--out", str(tmp_path / "ray")])
    assert on_ray["meta"]["runner"] == "ray"
    assert on_ray["rows"][0]["layers"] == local["rows"][0]["layers"]
    assert on_ray["rows"][0]["edp_vs_dense"] == local["rows"][0]["edp_vs_dense"]


def _fails_on_b(job):
    if job["name"] == "b" and not job.get("fixed"):
        raise RuntimeError("b failed")
    return {"out": job["name"] * 2}


def test_a_sweep_resumes_from_its_checkpoint_without_rerunning_finished_jobs(tmp_path):
    checkpoint = tmp_path / "sweep.partial.jsonl"
    jobs = [{"name": n} for n in "abc"]
    with pytest.raises(RuntimeError, match="b failed"):
        sweep.run(_fails_on_b, jobs, workers=1, checkpoint=checkpoint)
    assert [json.loads(line)["row"] for line in checkpoint.read_text().splitlines()] == [{"out": "aa"}]
    calls = []

    def record(job):
        calls.append(job["name"])
        return _fails_on_b({**job, "fixed": True})

    rows = sweep.run(record, jobs, workers=1, checkpoint=checkpoint)
    assert calls == ["b", "c"]  # "a" came from the checkpoint
    assert rows == [{"out": "aa"}, {"out": "bb"}, {"out": "cc"}]


def test_tasd_unit_table_follows_the_closed_form_and_names_where_each_route_wins():
    from tvm_tasd.benchmarks import tasd_units

    rows = tasd_units.collect()["rows"]
    utilization = {"4:8": 1.0, "2:8": 3.43 / 4}  # ttc-vegeta-m8's [compute] speedup
    for row in rows:
        kernel = 1 if row["kind"] == "gemm" else row["shape"][1][2] * row["shape"][1][3]
        for units in row["units"]:
            kept = row["k"] * {"4:8": 0.5, "2:8": 0.25}[row["config"]]
            padding = (row["m"] / (-(-row["m"] // 8) * 8) * row["n"] / (-(-row["n"] // 8) * 8)
                       * kept / (-(-kept // 16) * 16))  # the 8x16x8 array runs whole groups and steps
            expected = 1024 * utilization[row["config"]] / (units["count"] * row["n"] * kernel) * padding
            assert units["unit_cycles"] / units["array_cycles"] == pytest.approx(expected, rel=0.02), row["layer"]
    by = {(r["layer"], r["config"]): r for r in rows}
    head, ffn = by[("narrow head (n = 16)", "2:8")], by[("BERT-base FFN up (128 tokens)", "2:8")]
    assert head["activation_route_edp"] < head["weight_route_edp"]  # the activation is the larger operand
    assert ffn["weight_route_edp"] < ffn["activation_route_edp"]  # the weight is


def test_obs_ceiling_marks_its_oracles_as_bounds_not_results():
    from tvm_tasd.benchmarks import obs_ceiling
    from tvm_tasd.benchmarks.common import stamp

    row = {"source": "sts-oracle", "config": "4:8", "damp": 0.1, "sts": 0.9938, "held_out_sick": 0.9949,
           "reconstruction_seconds": 6.4}
    search = {"budget": 0.99, "mac_density": 0.378, "edp_vs_dense": 0.422, "sts": 0.9915, "held_out_sick": 0.9832,
              "choices": {"2:8": 20, "2:8+1:8": 7}}
    meta = stamp("t", search_target="vegeta-m8", search_damp=0.1)
    markdown = obs_ceiling.to_markdown({"meta": meta, "rows": [row], "searches": [search]})
    assert "**an upper bound, not a result**" in markdown and "allocation oracle" in markdown
    assert "| sts-oracle | 4:8 | 0.1 | 0.9938 | 0.9949 | 6.4 s |" in markdown
    assert "| 0.99 | 0.378 | 0.422 | 0.9915 | 0.9832 | 2:8 ×20, 2:8+1:8 ×7 |" in markdown
    assert "allocation oracle" not in obs_ceiling.to_markdown({"meta": meta, "rows": [row], "searches": []})


def test_quality_vs_edp_reports_what_each_tasder_plan_chose():
    from tvm_tasd.benchmarks import quality_vs_edp
    from tvm_tasd.benchmarks.common import stamp
    from tvm_tasd.plan import Plan
    from tvm_tasd.policy import Choice

    plan = Plan([Choice("fc1.weight", "4:8", activation="4:8+2:8"), Choice("fc2.weight", "4:8"),
                 Choice("fc3.weight", "dense")])
    choices = quality_vs_edp.plan_choices(plan)
    assert choices == {"weight": {"4:8": 2, "dense": 1}, "method": {"magnitude": 2},
                       "activation": {"fc1.weight": "4:8+2:8"}}
    row = {"model": "m", "target": "ttc-vegeta-m8", "method": "TASDER @ 0.99", "config": "per layer",
           "edp_vs_dense": 0.5, "relative_quality": 0.99, "held_out_relative": 0.995, "choices": choices}
    markdown = quality_vs_edp.to_markdown({"meta": stamp("t"), "rows": [row]})
    assert "- TASDER @ 0.99: weights 4:8 ×2, dense ×1; methods magnitude ×2; activation series 1: " \
           "`fc1.weight` 4:8+2:8." in markdown


def test_end_to_end_times_every_contender_side_by_side():
    """The digits MLP at batch 1: onnxruntime, the dense TVM build and the committed plan, timed in rounds, for the
    portable target and the host's own CPU; each build is compared with the dense build of its own target."""
    pytest.importorskip("onnxruntime")
    from tvm_tasd.benchmarks import end_to_end
    from tvm_tasd.benchmarks.common import CPU_TARGETS

    rows = {r["config"]: r for r in end_to_end.measure("digits-mlp", 1, rounds=2, targets=("cpu-emulated", "host"))}
    plan = "TASDER plan (vegeta-m8)"
    assert set(rows) == {"onnxruntime", "dense", plan, "dense [host]", f"{plan} [host]"}
    assert rows["onnxruntime"]["speedup_vs_ort"] == 1.0
    assert rows["dense"]["speedup_vs_dense"] == rows["dense [host]"]["speedup_vs_dense"] == 1.0
    assert rows["dense [host]"]["build_vs_dense"] == 1.0 and "tvm_target" not in rows["onnxruntime"]
    for target, builds in (("cpu-emulated", ["dense", plan]), ("host", ["dense [host]", f"{plan} [host]"])):
        assert {rows[b]["tvm_target"] for b in builds} == {str(CPU_TARGETS[target]())}
        assert rows[builds[0]]["mac_density"] == 1.0 and 0 < rows[builds[1]]["mac_density"] < 1
    for row in rows.values():
        low, high = row["speedup_vs_ort_range"]
        assert 0 < low <= row["speedup_vs_ort"] <= high and row["median_s"] > 0
        assert low <= row["speedup_vs_ort_fastest"] <= high


def test_fastest_rounds_are_a_speed_state_not_one_outlier():
    """onnxruntime's fast rounds: those within 1.1× of its fastest, but never fewer than its fastest third."""
    np = pytest.importorskip("numpy")
    pytest.importorskip("onnxruntime")
    from tvm_tasd.benchmarks.end_to_end import fastest_rounds

    two_states = np.array([40, 53, 41, 52, 40.5, 54, 39.8, 53])  # ms: the VM's fast and slow states
    assert fastest_rounds(two_states).tolist() == [True, False, True, False, True, False, True, False]
    one_outlier = np.array([2.5, 7.2, 7.3, 7.1, 7.4, 7.0])  # one round far faster than the others
    assert fastest_rounds(one_outlier).tolist() == [True, False, False, False, False, True]


def test_blocked_layout_takes_each_distinct_pointwise_and_depthwise_conv_once(tmp_path):
    """Ungrouped unstrided 1 × 1 and depthwise convs count (not a strided 1 × 1 or a 3 × 3 dense one), each once,
    with its input's plane side."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from tvm_tasd.benchmarks.blocked_layout import conv_shapes, onnxruntime_blocked_seconds

    def weight(name, shape):
        return numpy_helper.from_array(np.ones(shape, np.float32), name)

    nodes = [helper.make_node("Conv", ["x", "a"], ["y1"]), helper.make_node("Conv", ["y1", "dw"], ["y2"], group=16,
                                                                            pads=[1] * 4),
             helper.make_node("Conv", ["y2", "b"], ["y3"], strides=[2, 2]), helper.make_node("Conv", ["y3", "c"], ["y4"]),
             helper.make_node("Conv", ["y4", "c3"], ["y5"], pads=[1] * 4), helper.make_node("Conv", ["y5", "c"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 12, 12])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
                              [weight("a", (16, 8, 1, 1)), weight("dw", (16, 1, 3, 3)), weight("b", (32, 16, 1, 1)),
                               weight("c", (32, 32, 1, 1)), weight("c3", (32, 32, 3, 3))])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert conv_shapes(path) == [("1x1", 8, 16, 12), ("depthwise", 16, 3, 1, 12), ("1x1", 32, 32, 6)]
    depthwise = {"shape": (16, 1, 3, 3), "group": 16, "strides": [2, 2], "pads": [1] * 4}
    assert 0 < onnxruntime_blocked_seconds(16, 6, depthwise, np.random.default_rng(0)) < 1

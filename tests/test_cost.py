"""The analytical cost model: hand-checked figures and the sanity rules of docs/cost_model.md."""

import dataclasses
import math

import pytest

from tvm_tasd.config import TASDConfig
from tvm_tasd.cost import LayerCost, ModelCost, conv2d_cost, gemm_cost
from tvm_tasd.hardware import list_targets, load_target

COMPUTE_BOUND = (1024, 4096, 4096)
MEMORY_BOUND = (1, 4096, 4096)


def _base_unit(name):
    hw = load_target(name)
    return (hw.dense_macs_per_cycle, hw.clock_ghz, hw.dtype_bits, hw.mac_energy_pj, hw.memory)


SAME_BASE = [t for t in list_targets() if _base_unit(t) == _base_unit("dense")]


def test_accelerator_targets_share_the_dense_base_unit():
    # cpu-emulated is the host; the sparseloop-* files reproduce a peer's published design
    others = {"cpu-emulated", "sparseloop-stc", "sparseloop-stc-flexible"}
    assert set(SAME_BASE) == set(list_targets()) - others


@pytest.mark.parametrize("name", SAME_BASE)
@pytest.mark.parametrize("shape", [COMPUTE_BOUND, MEMORY_BOUND])
def test_dense_config_equals_the_dense_baseline(name, shape):
    base, cost = gemm_cost("dense", *shape), gemm_cost(name, *shape, weight="dense")
    assert cost.latency_s == base.latency_s
    assert cost.energy_breakdown_pj == base.energy_breakdown_pj
    assert cost.executed_macs == cost.dense_macs == math.prod(shape)


def test_hand_computed_figures_trace_to_the_target_file():
    hw = load_target("cpu-emulated")  # fixed output tiles (no [compute] array); loop nests: test_cost_nest.py
    m, k, n = 256, 512, 384
    cost = gemm_cost(hw, m, k, n, weight="2:4")
    b = hw.dtype_bits / 8
    kept = k * n / 2
    weight = kept * b + kept * 2 / 8  # values + 2 bits of metadata per kept value
    act, out = m * k * b, m * n * b
    dram, gb = hw.memory
    expect_bytes = {
        "dram": act + weight + out,
        "global_buffer": act * math.ceil(n / gb.tile_n) + weight * math.ceil(m / gb.tile_m) + out,
    }
    assert cost.bytes_moved == pytest.approx(expect_bytes)
    assert cost.executed_macs == m * k * n / 2
    # 2:4 has no measured speed-up there: its kernels reach sparse_utilization of the ideal 2x
    assert cost.cycles_by["compute"] == pytest.approx(m * k * n / 2 / hw.sparse_utilization / hw.dense_macs_per_cycle)
    assert cost.cycles_by["dram"] == pytest.approx(expect_bytes["dram"] / dram.bandwidth_bytes_per_cycle)
    assert cost.cycles == max(cost.cycles_by.values())
    assert cost.latency_s == pytest.approx(cost.cycles / (hw.clock_ghz * 1e9))
    metadata_bits = kept * 2 * math.ceil(m / gb.tile_m)  # reaches the array with every weight read
    assert cost.energy_breakdown_pj == pytest.approx({
        "compute": m * k * n / 2 * hw.mac_energy_pj,
        "dram": expect_bytes["dram"] * dram.energy_pj_per_byte,
        "global_buffer": expect_bytes["global_buffer"] * gb.energy_pj_per_byte,
        "metadata": metadata_bits * hw.metadata_energy_pj_per_bit,
        "tasd_units": 0.0,
    })


def test_2of4_halves_compute_of_a_compute_bound_gemm():
    dense, sparse = gemm_cost("stc-2of4", *COMPUTE_BOUND), gemm_cost("stc-2of4", *COMPUTE_BOUND, weight="2:4")
    assert dense.bottleneck == sparse.bottleneck == "compute"  # the L2 keeps a large GEMM compute-bound
    assert sparse.cycles_by["compute"] == dense.cycles_by["compute"] / 2
    assert sparse.speedup_vs(dense) == pytest.approx(2.0)


@pytest.mark.parametrize("target, config, speedup", [
    ("vegeta-m4", "1:4", 3.43), ("vegeta-m8", "2:8", 3.43), ("vegeta-m8", "1:8", 6.86), ("vegeta-m8", "4:8", 2.0),
    ("vegeta-m4", "2:4", 2.0), ("highlight", "1:16", 8.0)])
def test_array_speedups_follow_the_calibration(target, config, speedup):
    # [compute] speedup: VEGETA's measured modes over its dense mode; uncalibrated modes reach 1/density
    dense, sparse = gemm_cost(target, *COMPUTE_BOUND), gemm_cost(target, *COMPUTE_BOUND, weight=config)
    assert dense.cycles_by["compute"] / sparse.cycles_by["compute"] == pytest.approx(speedup, rel=1e-9)
    assert sparse.executed_macs == pytest.approx(dense.executed_macs / (1 / load_target(target).runs(
        config).density))  # energy still counts the MACs executed, not the stalls


@pytest.mark.parametrize("config", ["1:8", "2:8", "1:4"])
def test_patterns_that_fit_2of4_run_at_2of4_speed(config):
    ref = gemm_cost("stc-2of4", *COMPUTE_BOUND, weight="2:4")
    cost = gemm_cost("stc-2of4", *COMPUTE_BOUND, weight=config)
    assert cost.latency_s == ref.latency_s and cost.energy_pj == pytest.approx(ref.energy_pj)


@pytest.mark.parametrize("target, config", [("stc-2of4", "4:8"), ("dense", "2:4"), ("vegeta-m4", "2:6")])
def test_unsupported_pattern_costs_dense_compute(target, config):
    dense, cost = gemm_cost(target, *COMPUTE_BOUND), gemm_cost(target, *COMPUTE_BOUND, weight=config)
    assert cost.cycles_by["compute"] == dense.cycles_by["compute"]
    assert cost.executed_macs == dense.executed_macs


def test_memory_bound_gemv_gains_only_from_compressed_bytes():
    dense, sparse = gemm_cost("stc-2of4", *MEMORY_BOUND), gemm_cost("stc-2of4", *MEMORY_BOUND, weight="2:4")
    assert dense.bottleneck == sparse.bottleneck == "dram"
    byte_ratio = sparse.bytes_moved["dram"] / dense.bytes_moved["dram"]
    assert sparse.latency_s / dense.latency_s == pytest.approx(byte_ratio)
    assert 0.5 < byte_ratio < 0.6  # half the values plus 2/16 of metadata, activation and output unchanged


def test_a_series_pays_compute_per_term_but_reads_the_activation_once():
    hw = load_target("vegeta-m8")
    one = gemm_cost(hw, *COMPUTE_BOUND, weight="2:8")
    two = gemm_cost(hw, *COMPUTE_BOUND, weight="2:8+1:8")
    extra = gemm_cost(hw, *COMPUTE_BOUND, weight="1:8")
    assert two.executed_macs == one.executed_macs + extra.executed_macs
    k, n = COMPUTE_BOUND[1:]
    extra_weight = two.terms[1].stored_bytes
    assert extra_weight == k * n / 8 * (2 + 3 / 8)  # fp16 values + 3 index bits per kept value
    # off chip (the L2 holds the whole layer) the second term adds only its own weight bytes
    assert two.bytes_moved["dram"] - one.bytes_moved["dram"] == pytest.approx(extra_weight)
    assert [str(t.execution) for t in two.terms] == ["native 2:8", "native 1:8", "dense"]
    # on a fixed-tile target, at every level: no activation re-read
    cpu = load_target("cpu-emulated")
    one, two = gemm_cost(cpu, *COMPUTE_BOUND, weight="2:8"), gemm_cost(cpu, *COMPUTE_BOUND, weight="2:8+1:8")
    extra_weight = two.terms[1].stored_bytes
    for level in cpu.memory:
        reads = 1 if level.tile_m is None else math.ceil(COMPUTE_BOUND[0] / level.tile_m)
        assert two.bytes_moved[level.name] - one.bytes_moved[level.name] == pytest.approx(extra_weight * reads)


def test_series_on_a_2of4_unit_costs_two_passes():
    dense = gemm_cost("stc-2of4", *COMPUTE_BOUND)
    cost = gemm_cost("stc-2of4", *COMPUTE_BOUND, weight="2:8+1:8")  # both terms run as 2:4
    assert cost.cycles_by["compute"] == dense.cycles_by["compute"]


def test_k_is_padded_to_whole_groups():
    cost = gemm_cost("stc-2of4", 8, 10, 8, weight="2:4")  # K = 10 runs as 3 groups of 4
    assert cost.executed_macs == 8 * 12 * 8 / 2


def test_energy_components_sum_and_edp_is_e_times_d():
    cost = gemm_cost("ttc-vegeta-m8", 512, 1024, 768, activation="2:8")
    levels = {level.name for level in load_target("ttc-vegeta-m8").memory}
    assert set(cost.energy_breakdown_pj) == {"compute", "metadata", "tasd_units"} | levels
    assert cost.energy_pj == pytest.approx(sum(cost.energy_breakdown_pj.values()))
    assert cost.edp == pytest.approx(cost.energy_pj * cost.latency_s)
    assert cost.energy_breakdown_pj["tasd_units"] > 0 and cost.cycles_by["tasd_units"] > 0


def test_activation_series_needs_a_ttc_target():
    with pytest.raises(ValueError, match="cannot decompose activations.*ttc"):
        gemm_cost("stc-2of4", 64, 64, 64, activation="2:4")
    cost = gemm_cost("ttc-stc", *COMPUTE_BOUND, activation="2:4")
    dense = gemm_cost("ttc-stc", *COMPUTE_BOUND)
    assert cost.executed_macs == dense.executed_macs / 2
    hw = load_target("ttc-stc")
    assert cost.bytes_moved["dram"] == dense.bytes_moved["dram"]  # the activation arrives dense
    assert cost.bytes_moved["smem"] < dense.bytes_moved["smem"]  # held compressed on chip
    # a TASD unit extracts one kept value per cycle; each extraction compares the block's 4 values (3 compares)
    blocks = COMPUTE_BOUND[0] * COMPUTE_BOUND[1] / 4
    units = hw.tasd_units
    assert cost.cycles_by["tasd_units"] == blocks * 2 / (units.count * units.values_per_cycle)
    assert cost.energy_breakdown_pj["tasd_units"] == pytest.approx(blocks * 2 * 3 * units.compare_energy_pj)


def test_one_sparse_operand_per_layer():
    with pytest.raises(ValueError, match="one sparse operand"):
        gemm_cost("ttc-vegeta-m8", 64, 64, 64, weight="2:8", activation="2:8")


@pytest.mark.parametrize("kwargs, match", [
    (dict(m=0, k=4, n=4), "m must be a positive integer"),
    (dict(m=4, k=4.0, n=4), "k must be a positive integer"),
    (dict(m=4, k=4, n=4, weight="2of4"), "weight config"),
    (dict(m=4, k=4, n=4, dtype_bits=0), "dtype_bits"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gemm_cost("dense", **kwargs)


def test_conv2d_is_its_implicit_gemm():
    conv = conv2d_cost("stc-2of4", (2, 64, 28, 28), (128, 64, 3, 3), strides=1, padding=1, weight="2:4")
    assert (conv.m, conv.k, conv.n, conv.batch) == (2 * 28 * 28, 64 * 9, 128, 1)
    gemm = gemm_cost("stc-2of4", 2 * 28 * 28, 64 * 9, 128, weight="2:4")
    assert conv.executed_macs == gemm.executed_macs and conv.cycles_by["compute"] == gemm.cycles_by["compute"]
    # off chip the conv reads the real input (N·C·H·W), not its 9x larger im2col view
    assert conv.bytes_moved["dram"] < gemm.bytes_moved["dram"]


def test_conv2d_shapes_groups_and_stride():
    conv = conv2d_cost("dense", (1, 32, 15, 15), (64, 8, 3, 3), strides=2, padding=(1, 1), groups=4)
    assert (conv.m, conv.k, conv.n, conv.batch) == (8 * 8, 8 * 9, 16, 4)
    assert conv.dense_macs == 4 * 64 * 72 * 16
    with pytest.raises(ValueError, match="groups"):
        conv2d_cost("dense", (1, 32, 15, 15), (64, 8, 3, 3), groups=3)


def test_conv2d_groups_along_input_channels_pad_per_kernel_position():
    # C_in = 6 per (kh, kw): each of the 9 runs pads to 8 for 2:4, not K = 54 to 56
    conv = conv2d_cost("stc-2of4", (1, 6, 8, 8), (8, 6, 3, 3), padding=1, weight="2:4")
    assert conv.executed_macs == 64 * 8 * (9 * 8) / 2


def test_first_conv_with_three_channels_is_left_dense():
    conv = conv2d_cost("stc-2of4", (1, 3, 224, 224), (64, 3, 7, 7), strides=2, padding=3, weight="2:4")
    assert conv.weight.is_dense and "grouped axis 3 < M = 4" in conv.note
    assert conv.executed_macs == conv.dense_macs


def test_model_totals():
    layers = [gemm_cost("vegeta-m8", 128, 768, 768, weight=c) for c in ("2:8", "1:8", "dense")]
    model = ModelCost(tuple(layers))
    assert model.energy_pj == pytest.approx(sum(layer.energy_pj for layer in layers))
    assert model.latency_s == pytest.approx(sum(layer.latency_s for layer in layers))
    assert model.edp == pytest.approx(model.energy_pj * model.latency_s)
    assert model.edp != pytest.approx(sum(layer.edp for layer in layers))  # E×D of totals, not Σ EDP
    dense = ModelCost(tuple(gemm_cost("vegeta-m8", 128, 768, 768) for _ in range(3)))
    assert model.edp_vs(dense) == pytest.approx(model.edp / dense.edp) and model.edp_vs(dense) < 1
    assert sum(model.energy_breakdown_pj.values()) == pytest.approx(model.energy_pj)
    assert model.to_dict()["layers"][0]["weight"] == "2:8"


def test_layer_cost_records_how_each_term_ran():
    cost = gemm_cost("highlight", 64, 256, 64, weight=TASDConfig.parse("2:8+1:8"))
    assert isinstance(cost, LayerCost)
    assert [str(t) for t in cost.terms] == [
        "weight 2:8: on 4:4>2:4", "weight 1:8: on 2:4>2:4", "activation dense: dense"]
    assert cost.to_dict()["terms"][0] == "weight 2:8: on 4:4>2:4"


@pytest.mark.parametrize("n, hidden", [(32, False), (48, False), (64, True), (384, True)])
def test_sixteen_tasd_units_hide_the_decomposition_only_for_wide_enough_layers(n, hidden):
    # per block of 8 activation values a 2:8 term takes 2 unit cycles; the array spends 2·n/8 MACs
    # on each kept value: units keep pace when 16 units · 8/2 blocks ≥ the array's kept-value rate,
    # i.e. n ≥ 1024 · 0.8575 (2:8's calibrated utilization) / 16 ≈ 55 output columns
    cost = gemm_cost("ttc-vegeta-m8", 256, 1024, n, activation="2:8")
    assert (cost.cycles_by["tasd_units"] <= cost.cycles_by["compute"]) is hidden


def test_residency_keeps_layer_inputs_and_outputs_that_fit_on_chip():
    hw = load_target("vegeta-m8")
    resident = dataclasses.replace(hw, residency=True)
    small = (320, 384, 384)
    off, on = gemm_cost(hw, *small, weight="2:8"), gemm_cost(resident, *small, weight="2:8")
    weight_bytes = on.terms[0].stored_bytes
    assert on.bytes_moved["dram"] == pytest.approx(weight_bytes)  # only the weight comes from DRAM
    assert on.energy_pj < off.energy_pj and "input stays on chip; output stays on chip" in on.note
    big = (16384, 4096, 4096)  # a 128 MiB input does not fit half the L2
    assert gemm_cost(resident, *big).bytes_moved["dram"] == gemm_cost(hw, *big).bytes_moved["dram"]

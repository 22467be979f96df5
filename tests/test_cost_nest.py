"""Loop-nest targets (tvm_tasd.cost.nest): hand-counted traffic, the mapper's guarantees, the
Sparseloop validation, and the target-file checks of the nest keys."""

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tvm_tasd.benchmarks import sparseloop_validation
from tvm_tasd.cost import gemm_cost, nest
from tvm_tasd.hardware import GEMM_DIMS, load_target

STC = load_target("sparseloop-stc")
FLEX = load_target("sparseloop-stc-flexible")
TINY = """
name = "tiny"
description = "two levels and a one-MAC array"
[compute]
dense_macs_per_cycle = 1
clock_ghz = 1.0
dtype_bits = 8
mac_energy_pj = 1.0
patterns = ["2:4"]
sparse_operands = ["weight"]
array = { m = 1, k = 1, n = 1 }
[metadata]
energy_pj_per_bit = 0.0
[memory.dram]
capacity_bytes = 1000000
bandwidth_bytes_per_cycle = 1
energy_pj_per_byte = 100.0
[memory.buffer]
capacity_bytes = 100
bandwidth_bytes_per_cycle = 4
energy_pj_per_byte = 1.0
write_energy_pj_per_byte = 2.0
[tvm]
kind = "llvm"
keys = ["tasd"]
intrinsic = "nm_emulated"
"""


EVERYTHING = frozenset({"weight", "activation", "output"})


def _dense_problem(m, k, n):
    """An 8-bit dense GEMM on a 1x1x1 array: one step per MAC, one byte per element."""
    return nest.Problem(m=m, k=k, n=n, steps=m * k * n, weight_bytes=1, activation_bytes_offchip=1,
                        activation_bytes_onchip=1, output_bytes=1)


def _tiny(tmp_path, text=TINY):
    path = tmp_path / "tiny.toml"
    path.write_text(text)
    return load_target(path)


def test_traffic_of_a_hand_counted_mapping(tmp_path):
    hw = _tiny(tmp_path)
    prob = _dense_problem(4, 4, 4)
    # DRAM walks the buffer's 2x4x2 tiles m outer, n inner.
    mapping = nest.Mapping(tiles=((2, 4, 2),), orders=("mn", ""), keeps=(EVERYTHING, EVERYTHING))
    dram, buffer = nest.traffic(hw, prob, mapping)
    weight_fills = 2 * 2 * 4 * 2  # n moves innermost: the 4x2 weight tile is refilled on every tile
    activation_fills = 2 * 2 * 4  # the 2x4 activation tile stays while n moves: once per m
    outputs = 4 * 4  # k is never split above the buffer: each output leaves once, never read back
    assert dram.reads == weight_fills + activation_fills and dram.writes == outputs
    updates = 4 * 4 * 4  # one partial sum per MAC on a 1x1x1 array
    operand_reads = 2 * 4 * 4 * 4  # weight and activation once per MAC
    # partial sums read back to accumulate (all but the first of each output), then drained to DRAM
    assert buffer.reads == operand_reads + (updates - outputs) + outputs
    assert buffer.writes == weight_fills + activation_fills + updates
    energy, cycles, moved = nest.evaluate(hw, prob, mapping)
    assert moved == {"dram": dram.reads + dram.writes, "buffer": buffer.reads + buffer.writes}
    assert energy == {"dram": 100.0 * (dram.reads + dram.writes), "buffer": buffer.reads + 2.0 * buffer.writes}
    assert cycles == {"dram": dram.reads + dram.writes, "buffer": (buffer.reads + buffer.writes) / 4}


def test_a_reduction_split_above_a_level_spills_and_reloads_partial_sums(tmp_path):
    hw = _tiny(tmp_path)
    prob = _dense_problem(2, 4, 2)
    # k outside m: the buffer's 1x2 output tile leaves after each half of k
    mapping = nest.Mapping(tiles=((1, 2, 2),), orders=("km", ""), keeps=(EVERYTHING, EVERYTHING))
    dram, _ = nest.traffic(hw, prob, mapping)
    assert dram.writes == 2 * 2 * 2  # every output written twice
    assert dram.reads == 8 + 8 + 4  # weight and activation once each, the first half's partial sums read back
    # k inside the buffer's residency (k is the only DRAM loop): outputs accumulate there, leave once
    stay = nest.Mapping(tiles=((2, 2, 2),), orders=("k", ""), keeps=(EVERYTHING, EVERYTHING))
    assert nest.traffic(hw, prob, stay)[0].writes == 4


def test_gemm_cost_exposes_cycles_and_energy_per_level():
    cost = gemm_cost(STC, 256, 1024, 512, weight="2:4")
    levels = [lv.name for lv in STC.memory]
    assert levels == ["dram", "smem", "rf", "lrf"]
    assert set(levels) <= set(cost.cycles_by) and set(levels) <= set(cost.energy_breakdown_pj)
    assert cost.cycles_by["compute"] == 256 * 1024 * 512 / 2 / 1024
    assert cost.mapping.startswith("dram[")


def test_cost_matches_sparseloop_within_the_issue_tolerances():
    rows = sparseloop_validation.collect()["rows"]
    assert len(rows) == 16 and {r["weight"] for r in rows} == {"dense", "2:4", "2:6", "2:8"}
    bad = [(r["design"], r["M"], r["K"], r["N"], r["weight"], r["cycles_error"], r["energy_error"])
           for r in rows if not r["within_tolerance"]]
    assert not bad


shapes = st.tuples(st.integers(1, 300), st.integers(1, 80).map(lambda k: 16 * k), st.integers(1, 600))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=shapes, density=st.sampled_from([1.0, 0.5, 1 / 3, 0.25]), metadata_bits=st.sampled_from([0, 2, 3]))
def test_chosen_tilings_respect_capacities_and_factor_bounds(shape, density, metadata_bits):
    m, k, n = shape
    for hw in (FLEX, load_target("vegeta-m8")):  # the artifact's design; the A100-SM-like one with its L2
        am, ak, an = hw.array
        steps = -(-m // am) * -(-round(k * density) // ak) * -(-n // an)
        prob = nest.Problem(m=m, k=k, n=n, steps=steps, weight_bytes=density * (8 + metadata_bits) / 8,
                            activation_bytes_offchip=1, activation_bytes_onchip=1, output_bytes=1,
                            weight_metadata_bytes=density * metadata_bits / 8)
        mapping = nest.best_mapping(hw, prob)
        chain = ((m, k, n),) + mapping.tiles + (prob.array_step_tile(hw.array),)
        for i, level in enumerate(hw.memory):
            if i:
                assert nest._fits(level, prob, chain[i], mapping.keeps[i])
                assert all(t <= p for t, p in zip(chain[i], chain[i - 1]))
            for d, outer, inner in zip(GEMM_DIMS, chain[i], chain[i + 1]):
                bound = level.max_factor(d)
                assert bound is None or -(-outer // inner) <= bound


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.tuples(st.integers(1, 300), st.integers(1, 20).map(lambda k: 64 * k), st.integers(1, 600)))
def test_native_pattern_never_costs_more_than_dense_and_terms_never_cost_less(shape):
    # K fills whole windows of the widest mode (64 positions at 2:8); below one window a sparse
    # mode fetches positions that do not exist and can cost more than dense (docs/cost_model.md)
    m, k, n = shape
    dense = gemm_cost(STC, m, k, n)
    sparse = gemm_cost(STC, m, k, n, weight="2:4")
    assert sparse.edp <= dense.edp * (1 + 1e-9)
    assert sparse.cycles <= dense.cycles and sparse.executed_macs == dense.executed_macs / 2
    one, two = gemm_cost(FLEX, m, k, n, weight="2:8"), gemm_cost(FLEX, m, k, n, weight="2:8+1:8")
    assert two.energy_pj >= one.energy_pj and two.cycles >= one.cycles


@pytest.mark.parametrize("config", ["4:4", "8:8"])
def test_a_pattern_that_keeps_every_slot_costs_the_same_as_dense(config):
    assert gemm_cost(FLEX, 64, 256, 128, weight=config).energy_breakdown_pj == \
        gemm_cost(FLEX, 64, 256, 128).energy_breakdown_pj


@pytest.mark.parametrize("edit, match", [
    (("m = 1, k = 1, n = 1", "m = 2, k = 1, n = 1"), "2 MACs per step but dense_macs_per_cycle = 1"),
    (("write_energy_pj_per_byte = 2.0", "write_energy_pj_per_byte = 2.0\ntile_m = 4\ntile_n = 4"),
     "tile_m is for targets without"),
    (("write_energy_pj_per_byte = 2.0", 'write_energy_pj_per_byte = 2.0\nkeeps = ["psums"]'),
     "unknown dataspace 'psums'"),
    (("write_energy_pj_per_byte = 2.0", 'write_energy_pj_per_byte = 2.0\nkeeps = ["output"]\nbypass = ["weight"]'),
     "bypass.*does not keep"),
    (("array = { m = 1, k = 1, n = 1 }\n", ""), "needs a loop-nest target"),
    (("capacity_bytes = 1000000", 'capacity_bytes = 1000000\nkeeps = ["weight"]'),
     "outermost level must be every dataspace"),
    (("write_energy_pj_per_byte = 2.0", "write_energy_pj_per_byte = 2.0\nmax_factors = { q = 2 }"),
     "not a known key"),
])
def test_bad_nest_keys_are_one_line_errors(tmp_path, edit, match):
    with pytest.raises(ValueError, match=match):
        _tiny(tmp_path, TINY.replace(*edit))


def test_a_layer_no_tiling_fits_is_a_clear_error(tmp_path):
    hw = _tiny(tmp_path, TINY.replace("capacity_bytes = 100", "capacity_bytes = 2"))
    with pytest.raises(ValueError, match="no tiling of the 8x8x8 GEMM fits"):
        gemm_cost(hw, 8, 8, 8)


def test_validation_data_names_its_source():
    data = Path(sparseloop_validation.DATA).read_text()
    assert "micro22-sparseloop-artifact" in data and "timeloop-model.stats.txt" in data
    assert json.loads(data)["runs"][0]["cycles"] == 73728  # 128x1152x1024 at 2:4 on STC


SM_LIKE = TINY.replace("array = { m = 1, k = 1, n = 1 }", "array = { m = 8, k = 16, n = 8 }").replace(
    "dense_macs_per_cycle = 1", "dense_macs_per_cycle = 1024").replace("""[memory.buffer]
capacity_bytes = 100
bandwidth_bytes_per_cycle = 4
energy_pj_per_byte = 1.0
write_energy_pj_per_byte = 2.0
""", """[memory.buffer]
capacity_bytes = 196608
bandwidth_bytes_per_cycle = 128
energy_pj_per_byte = 6.1
keeps = ["weight", "activation"]
[memory.rf]
capacity_bytes = 262144
bandwidth_bytes_per_cycle = 2048
energy_pj_per_byte = 1.25
max_factors = { k = 1, m = 16, n = 16 }
""")


@pytest.mark.parametrize("shape", [(320, 1536, 384), (1024, 4096, 4096), (2048, 2048, 2048), (8, 768, 3072)])
def test_the_beam_search_finds_the_exhaustive_optimum(tmp_path, monkeypatch, shape):
    for hw in (_tiny(tmp_path, SM_LIKE), FLEX):
        for config in ("dense", "2:4", "2:4+2:4"):
            nest.best_mapping.cache_clear()
            monkeypatch.setattr(nest, "EXHAUSTIVE_LIMIT", 10**12)
            exhaustive = gemm_cost(hw, *shape, weight=config)
            nest.best_mapping.cache_clear()
            monkeypatch.setattr(nest, "EXHAUSTIVE_LIMIT", 0)
            beam = gemm_cost(hw, *shape, weight=config)
            assert beam.edp == pytest.approx(exhaustive.edp, rel=1e-9), (hw.name, config)
    nest.best_mapping.cache_clear()


@pytest.mark.parametrize("shape", [(64, 256, 128), (100, 512, 96), (8, 1024, 64)])
def test_pinning_a_second_level_that_holds_the_whole_layer_loses_nothing(tmp_path, monkeypatch, shape):
    hw = _tiny(tmp_path, SM_LIKE)  # the buffer (192 KB) holds each of these layers whole
    monkeypatch.setattr(nest, "EXHAUSTIVE_LIMIT", 10**12)
    for config in ("dense", "2:4", "2:4+2:4"):
        nest.best_mapping.cache_clear()
        pinned = gemm_cost(hw, *shape, weight=config)
        assert pinned.mapping.startswith("dram[-]")
        nest.best_mapping.cache_clear()
        with monkeypatch.context() as patch:
            patch.setattr(nest, "_whole_fits", lambda *args: False)
            free = gemm_cost(hw, *shape, weight=config)
        assert pinned.edp == pytest.approx(free.edp, rel=1e-9), config
    nest.best_mapping.cache_clear()


VEGETA = load_target("vegeta-m8")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.tuples(st.integers(1, 300), st.integers(1, 20).map(lambda k: 128 * k), st.integers(1, 600)))
def test_on_the_sm_like_targets_patterns_never_cost_more_than_dense_nor_extra_terms_less(shape):
    # K in whole windows of the sparsest mode (1:8: 128 positions per array step)
    m, k, n = shape
    dense = gemm_cost(VEGETA, m, k, n)
    previous = dense
    for config in ("4:8", "2:8", "1:8"):
        sparse = gemm_cost(VEGETA, m, k, n, weight=config)
        assert sparse.edp <= previous.edp * (1 + 1e-9) and sparse.cycles <= previous.cycles * (1 + 1e-9), config
        previous = sparse
    one, two = gemm_cost(VEGETA, m, k, n, weight="2:8"), gemm_cost(VEGETA, m, k, n, weight="2:8+1:8")
    assert two.energy_pj >= one.energy_pj and two.cycles >= one.cycles

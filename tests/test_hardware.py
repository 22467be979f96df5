"""Hardware target files, their loader, the mapping rule of docs/semantics.md §5 and TVM targets."""

import dataclasses
import math
import re
import tomllib
from importlib import resources

import numpy as np
import pytest

from tvm_tasd.candidates import candidate_configs
from tvm_tasd.config import HierarchicalPattern, NMPattern, worst_case_nonzeros
from tvm_tasd.hardware import HardwareTarget, list_targets, load_target

BUNDLED = ["cpu-emulated", "dense", "highlight", "sparseloop-stc", "sparseloop-stc-flexible", "stc-2of4", "ttc-stc",
           "ttc-vegeta-m8", "vegeta-m4", "vegeta-m8"]
_NUMBER = r"[-+]?(\d[\d_]*\.?\d*([eE][-+]?\d+)?|\.\d+)"


def _text(name: str) -> str:
    return (resources.files("tvm_tasd.hardware_targets") / f"{name}.toml").read_text()


def _numeric_leaves(node) -> int:
    if isinstance(node, dict):
        return sum(_numeric_leaves(v) for v in node.values())
    if isinstance(node, list):
        return int(bool(node) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in node))
    return int(isinstance(node, (int, float)) and not isinstance(node, bool))


# ---------------------------------------------------------------- files


def test_list_targets_names_every_bundled_file():
    assert list_targets() == BUNDLED


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_target_loads(name):
    hw = load_target(name)
    assert isinstance(hw, HardwareTarget) and hw.name == name
    assert hw.source_file.endswith(f"{name}.toml")
    assert len(hw.memory) >= 2 and hw.memory[0].name == "dram"
    assert load_target(hw) is hw


@pytest.mark.parametrize("name", BUNDLED)
def test_every_number_carries_a_source_or_assumption(name):
    text = _text(name)
    numeric = 0
    for line in text.splitlines():
        match = re.match(r"^\s*[\w-]+\s*=\s*([^#]*?)\s*(#.*)?$", line)
        if not match:
            continue
        value, comment = match.group(1), match.group(2) or ""
        is_number = re.fullmatch(_NUMBER, value) or re.fullmatch(rf"\[\s*{_NUMBER}(\s*,\s*{_NUMBER})*\s*\]", value)
        entry = rf'(?:[\w-]+|"[^"]+")\s*=\s*{_NUMBER}'  # bare or quoted keys (speedup = {"2:8" = 3.43})
        numbers_table = re.fullmatch(rf"\{{\s*{entry}(\s*,\s*{entry})*\s*\}}", value)  # e.g. array = {m = 1, …}
        claims = line.split("=")[0].strip() in ("patterns", "sparse_operands")
        if is_number or numbers_table or claims:
            assert re.match(r"#\s*(source|assumption):", comment), f"{name}.toml: no source on {line!r}"
        numeric += bool(is_number) + (value.count("=") if numbers_table else 0)
    assert numeric == _numeric_leaves(tomllib.loads(text)), "a number is written in a form the check missed"


def test_load_by_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(_text("stc-2of4").replace('name = "stc-2of4"', 'name = "mine"'))
    hw = load_target(path)
    assert hw.name == "mine" and hw.source_file == str(path)
    assert load_target(str(path)).patterns == (NMPattern(2, 4),)


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError) as err:
        load_target("vegeta-m16")
    assert all(name in str(err.value) for name in BUNDLED)


def test_missing_file_path():
    with pytest.raises(ValueError, match="does not exist"):
        load_target("/nowhere/unit.toml")


BAD_FILES = [
    # (edit of dense.toml / stc-2of4.toml, words the one-line error must contain)
    ("stc-2of4", "clock_ghz = 1.41", "", ["[compute] clock_ghz", "missing", "add"]),
    ("stc-2of4", "bandwidth_bytes_per_cycle = 10.2", "bandwidth_bytes_per_cycle = -10.2",
     ["[memory.dram] bandwidth_bytes_per_cycle", "> 0"]),
    ("stc-2of4", 'patterns = ["2:4"]', 'patterns = ["2of4"]', ["[compute] patterns", "'2of4'", "N:M"]),
    ("stc-2of4", 'patterns = ["2:4"]', 'patterns = ["5:4"]', ["[compute] patterns", "'5:4'"]),
    ("stc-2of4", 'sparse_operands = ["weight"]', 'sparse_operands = ["weights"]',
     ["[compute] sparse_operands", "'weights'", "activation"]),
    ("stc-2of4", "dense_macs_per_cycle = 1024", "dens_macs_per_cycle = 1024",
     ["[compute] dens_macs_per_cycle", "not a known key", "did you mean 'dense_macs_per_cycle'"]),
    ("stc-2of4", "dtype_bits = 16", "dtype_bits = 16.5", ["[compute] dtype_bits", "integer"]),
    ("stc-2of4", 'sparse_operands = ["weight"]', 'sparse_operands = ["weight", "activation"]',
     ["[compute] sparse_operands", "[tasd_units]"]),
    ("cpu-emulated", "tile_n = 64", "", ["[memory.global_buffer] tile_m", "together"]),
    ("dense", "max_factors = { k = 1, m = 16, n = 16 }", "tile_m = 128",
     ["[memory.rf] tile_m", "mapper"]),
    ("dense", 'intrinsic = "nm_emulated"', "", ["[tvm] intrinsic", "missing"]),
    ("dense", "[memory.smem]", "[memory.compute]", ["[memory] compute", "reserved"]),
    ("vegeta-m8", '"2:8" = 3.43', '"2:8" = 4.5', ['[compute.speedup] "2:8"', "outside [1, 4]"]),
    ("vegeta-m8", '"2:8" = 3.43', '"2:4" = 1.9', ['[compute.speedup] "2:4"', "not one of [compute] patterns"]),
    ("cpu-emulated", "sparse_utilization = 0.6", "sparse_utilization = 1.5",
     ["[compute] sparse_utilization", "above 1", "(0, 1]"]),
    ("cpu-emulated", "sparse_utilization = 0.6", "sparse_utilization = 0", ["[compute] sparse_utilization", "> 0"]),
    ("ttc-stc", "values_per_cycle = 1", "elements_per_cycle = 4",
     ["[tasd_units] elements_per_cycle", "not a known key"]),
    ("dense", "energy_pj_per_bit = 0.0", "energy_pj_per_bit = zero", ["not valid TOML"]),
    ("stc-2of4", "clock_ghz = 1.41", "clock_ghz = nan", ["[compute] clock_ghz", "finite"]),
    ("stc-2of4", "clock_ghz = 1.41", "clock_ghz = inf", ["[compute] clock_ghz", "finite"]),
]


@pytest.mark.parametrize("base, old, new, words", BAD_FILES)
def test_bad_file_gives_one_line_error_naming_file_and_key(tmp_path, base, old, new, words):
    text = _text(base)
    assert old in text
    path = tmp_path / "bad.toml"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(ValueError) as err:
        load_target(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    for word in words:
        assert word in message


def test_memory_needs_two_levels(tmp_path):
    text = _text("dense")
    path = tmp_path / "one_level.toml"
    path.write_text(text[: text.index("[memory.l2]")] + text[text.index("[tvm]"):])
    with pytest.raises(ValueError, match=r"\[memory\] has 1 level"):
        load_target(path)


# ---------------------------------------------------------------- mapping rule


def _runs(target, term, operand="weight"):
    ex = load_target(target).runs(term, operand)
    return ex.mode, (str(ex.pattern) if ex.pattern else None), ex.density


@pytest.mark.parametrize("term, expected", [
    ("2:4", ("native", "2:4", 0.5)),
    ("1:4", ("compatible", "2:4", 0.5)),
    ("1:8", ("compatible", "2:4", 0.5)),  # a 1:8 tensor is a valid 2:4 tensor: 2:4 speed, not 8x
    ("2:8", ("compatible", "2:4", 0.5)),
    ("4:8", ("dense", None, 1.0)),  # an aligned 4-window may hold 4 nonzeros
    ("1:6", ("compatible", "2:4", 0.5)),  # M' = 4 not a divisor: window [4, 8) spans two groups, <= 2
    ("1:5", ("compatible", "2:4", 0.5)),
    ("2:6", ("dense", None, 1.0)),  # window [4, 8) can hold 2 + 2
    ("2:5", ("dense", None, 1.0)),  # window [4, 8) can hold 1 + 2
])
def test_mapping_on_stc(term, expected):
    assert _runs("stc-2of4", term) == expected


@pytest.mark.parametrize("target, term, expected", [
    # 1:4 holds at most 2 nonzeros in every aligned 8: a valid 2:8 tensor, same density, no loss
    ("vegeta-m8", "1:4", ("compatible", "2:8", 0.25)),
    ("vegeta-m8", "2:4", ("compatible", "4:8", 0.5)),
    ("vegeta-m8", "2:8", ("native", "2:8", 0.25)),
    ("vegeta-m8", "1:3", ("compatible", "4:8", 0.5)),  # window [8, 16) touches 4 groups of 3
    ("vegeta-m8", "3:6", ("compatible", "8:8", 1.0)),  # window [8, 16) can hold 3 + 3: no speed-up
    ("vegeta-m4", "1:8", ("compatible", "1:4", 0.25)),  # vegeta-m4 also has 1:4
    ("vegeta-m4", "2:6", ("compatible", "4:4", 1.0)),
    ("dense", "2:4", ("dense", None, 1.0)),
    ("cpu-emulated", "3:16", ("native", "3:16", 3 / 16)),
    ("cpu-emulated", "1:32", ("compatible", "1:16", 1 / 16)),
])
def test_mapping_on_flexible_units(target, term, expected):
    assert _runs(target, term) == expected


def test_metadata_follows_the_executed_pattern():
    hw = load_target("vegeta-m8")
    assert hw.runs("1:4").metadata_bits_per_value == 3  # stored as 2:8: index in 0..7
    assert hw.runs("3:6").metadata_bits_per_value == 0  # 8:8 keeps every slot: no index
    assert load_target("stc-2of4").runs("1:8").metadata_bits_per_value == 2  # A100: 2 bits per kept value
    assert load_target("stc-2of4").runs("4:8").metadata_bits_per_value == 0


def test_accelerates_means_faster_than_dense():
    assert load_target("stc-2of4").accelerates("1:8")
    assert not load_target("stc-2of4").accelerates("4:8")
    assert not load_target("vegeta-m4").accelerates("2:6")
    assert not load_target("dense").accelerates("1:8")


def test_software_kernels_pay_only_where_their_measured_speed_up_does():
    """cpu-emulated: a listed pattern runs at its measured speed-up, the others at sparse_utilization of the ideal;
    a term is a search candidate only where that beats dense, and a series where its terms' times add up below it."""
    hw = load_target("cpu-emulated")
    assert hw.speedup(hw.runs("4:8")) == pytest.approx(1.26)
    assert hw.speedup(hw.runs("3:8")) == pytest.approx(hw.sparse_utilization * 8 / 3)
    assert hw.speedup(hw.runs(None)) == 1.0
    assert hw.accelerates("9:16") and not hw.accelerates("5:8")  # 0.5625 / 0.6 < 1 < 0.625 / 0.6
    configs = {str(c) for c in candidate_configs(hw)}
    assert {"4:8", "3:8", "2:8+1:8"} <= configs and not {"5:8", "4:8+1:8", "4:8+2:8"} & configs
    ideal = dataclasses.replace(hw, speedups=(), sparse_utilization=1.0)
    assert ideal.accelerates("7:8") and "4:8+2:8" in {str(c) for c in candidate_configs(ideal)}


def test_operand_must_be_listed_as_sparse():
    assert _runs("stc-2of4", "2:4", "activation") == ("dense", None, 1.0)
    assert _runs("ttc-stc", "2:4", "activation") == ("native", "2:4", 0.5)
    with pytest.raises(ValueError, match="unknown operand"):
        load_target("stc-2of4").runs("2:4", "bias")


@pytest.mark.parametrize("term, expected, bits", [
    ("1:8", "2:4>2:4", 3.0),  # <= 1 per block, <= 2 non-empty blocks per 16
    ("2:8", "4:4>2:4", 2.0),  # 2 per 8 may sit in both blocks of the group
    ("2:4", "4:4>2:4", 2.0),
    ("1:4", "4:4>2:4", 2.0),
    ("1:16", "1:4>2:4", 3.0),
    ("4:8", "4:4>4:4", 0.0),  # no speed-up: density 1
])
def test_mapping_on_highlight(term, expected, bits):
    ex = load_target("highlight").runs(term)
    assert str(ex.pattern) == expected and ex.metadata_bits_per_value == bits
    assert ex.density == HierarchicalPattern.parse(expected).density


@pytest.mark.parametrize("n, m, window", [(1, 3, 8), (2, 6, 4), (3, 6, 8), (1, 8, 4), (2, 5, 4), (3, 7, 16)])
def test_worst_case_bound_is_attained_and_never_exceeded(n, m, window):
    bound = worst_case_nonzeros(NMPattern(n, m), window)
    period = math.lcm(m, window)
    length = period * 2
    # attained: for the worst window, fill each group's nonzeros inside the window first
    best = 0
    for start in range(0, length, window):
        mask = np.zeros(length, dtype=int)
        for g in range(0, length, m):
            inside = [p for p in range(g, g + m) if start <= p < start + window]
            outside = [p for p in range(g, g + m) if p not in inside]
            mask[(inside + outside)[:n]] = 1
        assert all(mask[g:g + m].sum() <= n for g in range(0, length, m))
        best = max(best, mask[start:start + window].sum())
    assert best == bound
    # never exceeded by random N:M masks
    rng = np.random.default_rng(0)
    for _ in range(200):
        mask = np.concatenate([rng.permutation(np.r_[np.ones(n), np.zeros(m - n)]) for _ in range(length // m)])
        assert mask.reshape(-1, window).sum(axis=1).max() <= bound
    assert worst_case_nonzeros(NMPattern(1, 3), 8) == 4  # not ceil(8 / 3) = 3


# ---------------------------------------------------------------- TVM targets


@pytest.mark.parametrize("name", BUNDLED)
def test_tvm_target(name):
    hw = load_target(name)
    target = hw.tvm_target()
    keys = list(target.keys)
    assert "tasd" in keys and name in keys
    if name == "stc-2of4":
        assert target.kind.name == "cuda" and target.arch == "sm_80" and {"cuda", "gpu"} <= set(keys)
        assert hw.tvm.intrinsic == "mma_sp_m16n8k16"
    else:
        assert target.kind.name == "llvm" and "cpu" in keys
        # the host CPU runs the plain kernels; modelled units emulate their instruction stream
        assert hw.tvm.intrinsic == ("none" if name == "cpu-emulated" else "nm_emulated")


def test_bad_tvm_attribute_is_reported_with_the_file(tmp_path):
    path = tmp_path / "odd.toml"
    path.write_text(_text("dense").replace('kind = "llvm"', 'kind = "llvm"\nwarp_drive = 9'))
    with pytest.raises(ValueError) as err:
        load_target(path).tvm_target()
    assert str(path) in str(err.value) and "[tvm]" in str(err.value) and "\n" not in str(err.value)


def test_the_digest_follows_what_a_file_says_not_its_name_or_comments(tmp_path):
    bundled = load_target("vegeta-m8")
    commented = tmp_path / "commented.toml"
    commented.write_text("# my notes\n" + _text("vegeta-m8"))
    assert load_target(commented).digest == bundled.digest
    faster = tmp_path / "faster.toml"
    faster.write_text(_text("vegeta-m8").replace("clock_ghz = 1.41", "clock_ghz = 2.82"))
    changed = load_target(faster)
    assert changed.name == bundled.name and changed.digest != bundled.digest

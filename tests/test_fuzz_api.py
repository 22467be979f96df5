"""The API under arbitrary input: a valid value back, or one clear ``ValueError`` — never another exception.

Hypothesis draws strings, JSON documents, arrays and TOML files, biased
towards the shapes the readers expect, and every reader either accepts the
input or says what is wrong with it.
"""

import json
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tvm_tasd import TASDConfig, decompose, decompress
from tvm_tasd.cli.common import parse_input_shapes
from tvm_tasd.hardware import _load_text, load_target
from tvm_tasd.plan import Plan
from tvm_tasd.report import Report

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 300) | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["2:4", "2:8+1:8", "dense", "fc1.weight", "activation", "magnitude", "5:4", ""]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["name", "weight", "activation", "score", "s", "layers", "hardware", "budget", "version",
                         "report_version", "reason", "proxy_error"]), children, max_size=5),
    max_leaves=20,
)
series_text = st.lists(st.sampled_from(["1", "2", "4", "8", "0", "300", ":", "+", " ", "x", "dense"]), max_size=9).map(
    "".join) | st.text(max_size=12)


@SETTINGS
@given(series_text)
def test_any_series_text_parses_or_says_why(text):
    try:
        config = TASDConfig.parse(text)
    except ValueError:
        return
    assert TASDConfig.parse(str(config)) == config


@SETTINGS
@given(json_values)
def test_any_json_is_a_plan_or_says_why(data):
    try:
        plan = Plan.from_json(data)
    except ValueError:
        return
    assert Plan.from_json(json.loads(json.dumps(plan.to_json()))).to_json() == plan.to_json()


@SETTINGS
@given(json_values)
def test_any_json_is_a_report_or_says_why(data):
    if isinstance(data, dict):
        data = {**data, "report_version": 2}
    try:
        report = Report.from_json(data)
    except ValueError:
        return
    report.text()


@SETTINGS
@given(st.text(alphabet=string.ascii_letters + string.digits + ":[], _-", max_size=40))
def test_any_input_shapes_text_parses_or_says_why(text):
    try:
        shapes = parse_input_shapes(text)
    except ValueError:
        return
    assert all(isinstance(d, int) and d > 0 for dims in shapes.values() for d in dims)


@SETTINGS
@given(
    values=hnp.arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 6)), elements=st.floats(-2, 2, width=32)),
    indices=hnp.arrays(st.sampled_from([np.int8, np.int64, np.float32]), st.tuples(st.integers(1, 3), st.integers(1, 6)),
                       elements=st.integers(-2, 9)),
    pattern=st.sampled_from(["1:4", "2:4", "2:8"]),
    k=st.integers(-1, 20),
)
def test_any_compressed_term_decompresses_or_says_why(values, indices, pattern, k):
    try:
        dense = decompress(values, indices, pattern, axis=1, k=k)
    except ValueError:
        return
    assert dense.shape == (values.shape[0], k)
    assert np.count_nonzero(dense) <= np.count_nonzero(values)


@SETTINGS
@given(
    w=hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, max_side=9),
                 elements=st.floats(-1e3, 1e3) | st.just(np.nan)),
    dtype=st.sampled_from(["float32", "float64", "int32"]),
    config=series_text,
    axis=st.integers(-4, 4) | st.sampled_from(["matmul", "oihw", "nope", 1.5]),
)
def test_any_tensor_decomposes_or_says_why(w, dtype, config, axis):
    w = np.nan_to_num(w).astype(dtype) if dtype == "int32" else w.astype(dtype)
    try:
        terms = decompose(w, config, axis=axis)
    except (ValueError, TypeError):  # TypeError: a tensor that is not float, as numpy itself would say
        return
    for term in terms:
        assert term.dense().shape == w.shape


TOML_LINES = st.sampled_from([
    'name = "x"', 'description = "d"', "[compute]", "dense_macs_per_cycle = 1024", "clock_ghz = 1.41",
    "clock_ghz = nan", "dtype_bits = 16", "mac_energy_pj = 2.0", 'patterns = ["2:4"]', 'patterns = ["9:4"]',
    'sparse_operands = ["weight"]', "[metadata]", "energy_pj_per_bit = 0.03", "[memory.dram]",
    "capacity_bytes = 100", "bandwidth_bytes_per_cycle = 10", "energy_pj_per_byte = 2", "[memory.buffer]",
    "[tvm]", 'kind = "llvm"', 'keys = ["tasd"]', 'intrinsic = "nm_emulated"', "x = [", "tile_m = 8", "tile_n = 8",
])


@SETTINGS
@given(st.lists(TOML_LINES, max_size=30))
def test_any_target_file_loads_or_says_why(lines):
    try:
        target = _load_text("\n".join(lines), "fuzz.toml")
    except ValueError as err:
        assert "\n" not in str(err) and "fuzz.toml" in str(err)
        return
    assert target.dense_macs_per_cycle > 0 and target.memory


@pytest.mark.parametrize("bad", [42, None, 1.5, ["vegeta-m8"]])
def test_a_target_that_is_no_name_or_path_is_refused(bad):
    with pytest.raises(ValueError, match="bundled name"):
        load_target(bad)

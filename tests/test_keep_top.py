"""The keep-top-k rule the evaluators emulate activation series with, held to the decomposition itself."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tvm_tasd import approximate
from tvm_tasd.evaluation.keep_top import NumpyOps, keep_top


@settings(max_examples=60, deadline=None)
@given(
    m=st.sampled_from([2, 4, 8]),
    data=st.data(),
)
def test_keeping_the_top_k_of_each_group_is_the_greedy_series_of_that_m(m, data):
    groups = data.draw(st.integers(1, 6))
    # small integers: many ties and exact zeros, where the tie and zero rules matter
    x = data.draw(hnp.arrays(np.float32, (3, groups * m), elements=st.integers(-3, 3).map(float)))
    for keep in range(1, m + 1):  # one term keep:M keeps what any greedy series of that M with ΣN = keep keeps
        expected = approximate(x, f"{keep}:{m}", axis=-1)
        np.testing.assert_array_equal(keep_top(x, keep, m, NumpyOps(x.dtype)), expected)
    if m <= 4:
        np.testing.assert_array_equal(keep_top(x, 2, m, NumpyOps(x.dtype)), approximate(x, f"1:{m}+1:{m}", axis=-1))


@settings(max_examples=30, deadline=None)
@given(m=st.sampled_from([2, 4, 8]), data=st.data())
def test_channels_first_groups_run_along_the_channels_of_an_nchw_tensor(m, data):
    channels = m * data.draw(st.integers(1, 3))
    x = data.draw(hnp.arrays(np.float32, (2, channels, 3, 2), elements=st.integers(-3, 3).map(float)))
    keep = data.draw(st.integers(1, m))
    np.testing.assert_array_equal(keep_top(x, keep, m, NumpyOps(x.dtype), channels_first=True),
                                  approximate(x, f"{keep}:{m}", axis=1))

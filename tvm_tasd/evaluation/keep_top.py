"""The run-time activation rule the evaluators emulate, written once for every backend.

In each group of ``m`` entries along the last axis (a conv's NCHW input:
along channels, at every position), keep the ``keep`` entries of largest
|x|, ties to the lower index, zeros last
(``docs/semantics.md`` §6): with one M, this is exactly a greedy activation
series whose N's sum to ``keep``, so one keep count, fed per run, emulates
every series of that M. :func:`keep_top` states the rule once over a small
set of tensor operations (the rank of an entry is its position in its
group's stable descending order: a sort of M, not M² comparisons, which
matters on a conv's large inputs); a backend supplies them — :class:`NumpyOps` here
(the reference the tests hold the others to), ONNX nodes in
:mod:`tvm_tasd.evaluation.onnx`, Relax ops in :mod:`tvm_tasd.evaluation.relax`.
"""

from __future__ import annotations

import numpy as np


#: NCHW → NHWC and back: a conv's activation series runs along its input channels.
TO_CHANNELS_LAST, FROM_CHANNELS_LAST = (0, 2, 3, 1), (0, 3, 1, 2)


def keep_top(x, keep, m: int, ops, channels_first: bool = False, shift=None):
    """``x`` with only the ``keep`` best entries of each group of ``m`` along its last axis
    (``channels_first``: along axis 1 of an NCHW tensor). ``shift``: a constant ``x`` carries on top of
    the decomposed part (:attr:`tvm_tasd.layer.Layer.input_shift`), taken off before and added back after."""
    if shift is not None:
        offset = ops.constant(np.asarray(shift, ops.dtype))
        return ops.add(keep_top(ops.subtract(x, offset), keep, m, ops, channels_first), offset)
    if channels_first:
        kept = _keep_top_last(ops.transpose(x, TO_CHANNELS_LAST), keep, m, ops)
        return ops.transpose(kept, FROM_CHANNELS_LAST)
    return _keep_top_last(x, keep, m, ops)


def _keep_top_last(x, keep, m: int, ops):
    groups = ops.reshape(x, [-1, m])
    values = ops.cast(groups, "float32")
    key = ops.where(ops.equal(values, ops.constant(np.float32(0))), ops.constant(np.float32(-1)), ops.abs(values))
    order = ops.descending_order(key, m)  # per group, its entries best first, ties to the lower index
    rank = ops.positions(order, m)  # how many entries of its group beat each entry
    kept = ops.where(ops.less(rank, keep), groups, ops.constant(np.zeros((1, 1), ops.dtype)))
    return ops.reshape_as(kept, x)


class NumpyOps:
    """:func:`keep_top` on numpy arrays."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)

    constant = staticmethod(np.asarray)
    reshape = staticmethod(np.reshape)
    add = staticmethod(np.add)
    subtract = staticmethod(np.subtract)
    abs = staticmethod(np.abs)
    where = staticmethod(np.where)
    equal = staticmethod(np.equal)
    less = staticmethod(np.less)

    @staticmethod
    def cast(x, dtype: str):
        return np.asarray(x).astype(dtype)

    @staticmethod
    def descending_order(key, _m: int):
        return np.argsort(-key, axis=1, kind="stable")

    @staticmethod
    def positions(order, m: int):
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.broadcast_to(np.arange(m), order.shape), axis=1)
        return rank

    @staticmethod
    def transpose(x, perm):
        return np.transpose(x, perm)

    @staticmethod
    def reshape_as(x, like):
        return np.reshape(x, np.shape(like))

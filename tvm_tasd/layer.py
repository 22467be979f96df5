"""A layer as TASD sees it: one matmul or conv2d with a constant weight, viewed as a GEMM.

A plain value with no TVM in it, so the cost model, the candidates, the
policy and the report can use layers without loading the compiler; the
Relax matcher (:mod:`tvm_tasd.matcher`) is what finds them in a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .config import TASDConfig


@dataclass
class Layer:
    """One matmul/conv2d call seen as a GEMM out(m, n) = x(m, k) · W(k, n)."""

    name: str
    op: str  # "matmul" or "conv2d"
    weight: np.ndarray  # as stored in the model
    axis: int  # reduction axis of ``weight`` (docs/semantics.md §1)
    m: int
    k: int
    n: int
    activation_shape: tuple[int, ...]
    dtype: str
    ineligible: str | None = None  # why the layer must stay dense, if it must
    conv: dict = field(default_factory=dict)  # strides/padding/dilation/groups for conv2d
    relu_fed: bool = False  # its input is a ReLU's output, zeros kept (docs/semantics.md §6)
    smooth_fed: bool = False  # its input is a GELU's or Swish's output: series by pseudo-density (§6)
    #: a constant the input carries on top of its ReLU-fed part (a folded batch norm's shift, §6): (C, 1, 1) of a
    #: conv's input, (K,) of a matmul's; an activation series decomposes input − shift and adds it back
    input_shift: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def grouped_length(self) -> int:
        """Length of the axis N:M groups run along (K, or input channels of a conv)."""
        return self.weight.shape[self.axis]

    def fits(self, config: TASDConfig) -> bool:
        """Whether ``config`` can run on this layer's weight (eligible, and its M fits the grouped axis)."""
        return config.is_dense or (not self.ineligible and config.fits(self.grouped_length))

    def reconstructs(self, config: TASDConfig) -> bool:
        """Whether OBS can re-fit ``config`` here given a Hessian: a conv's sweep needs its input
        channels in whole groups of the series' period (docs/semantics.md §3)."""
        return self.op == "matmul" or self.grouped_length % config.period == 0

    def takes_activation_groups(self, m: int) -> bool:
        """Whether an activation series with groups of ``m`` can run on this layer's input: along K of an
        eligible matmul, or the input channels of an eligible ungrouped conv (:attr:`activation_fed` says
        whether it may pay)."""
        if self.ineligible or self.conv.get("groups", 1) != 1:
            return False
        return (self.k if self.op == "matmul" else self.activation_shape[1]) % m == 0

    @property
    def activation_fed(self) -> bool:
        """Whether an activation function feeds it (ReLU zeros, or GELU/Swish pseudo-density): where the search
        tries run-time activation series."""
        return self.relu_fed or self.smooth_fed

    @property
    def conv_window(self) -> dict:
        """strides/padding/dilation: what the conv kernels take (they only ever see groups = 1)."""
        return {key: self.conv[key] for key in ("strides", "padding", "dilation")}

    @property
    def weight_kn(self) -> np.ndarray:
        """A matmul weight in (K, N) layout, whatever layout the model stores it in."""
        return self.weight.T if self.op == "matmul" and self.axis == 1 else self.weight

    @property
    def dense_macs(self) -> int:
        return self.m * self.k * self.n

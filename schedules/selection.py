"""Which kernels a layer gets on a target: a table of rules, first match wins (like TVM's dlight rules).

The hardware file's ``[tvm] intrinsic`` names the target's N:M intrinsic
family (``intrin_nm``); the TVM target kind (the hardware's own, or the one
a build overrides it with) says which implementation runs. Each
:class:`KernelRule` says whether it applies to a (hardware, TVM target)
pair and builds that family's matmul and conv2d kernels:

===============  ========================================  ===================================================
rule             applies when                              N:M layers
===============  ========================================  ===================================================
``mma_sp``       cuda, intrinsic ``mma_sp_m16n8k16``       ``cuda_mma_sp`` (PTX mma.sp; terms must be 2:4 tensors)
``nm_emulated``  llvm, intrinsic ``nm_emulated``           ``llvm_tensorized`` (tensorized onto the group tile)
``plain``        llvm, any other intrinsic                 the plain schedules of ``llvm`` (e.g. a GPU target
                                                           emulated on the host: ``stc-2of4`` with ``llvm``),
                                                           or the dense kernel where a series is too dense to pay
===============  ========================================  ===================================================

CPU kernels pick their tiles (vector lanes, registers) for the TVM target they are compiled for, not the
host: AVX-512-sized tiles compiled for AVX2 spill (MiniLM's dense matmuls ran 2–3× slower that way).
Dense layers use the scheduled dense CPU kernels on ``llvm``; on ``cuda``
they stay Relax operators, which TVM's default GPU schedules (dlight) lower.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import tvm

from . import llvm, llvm_blocked
from .cuda_mma_sp import mma_sp_conv2d, mma_sp_matmul
from .intrin_nm import MMA_SP, NM_EMULATED
from .llvm_tensorized import nm_conv2d_tensorized, nm_matmul_tensorized


@dataclass(frozen=True)
class KernelRule:
    """One family of N:M kernels and when it applies.

    ``matmul(target, m, k, n, patterns, dtype)`` and ``conv2d(target, x_shape,
    w_shape, patterns, dtype, **conv)`` build the scheduled kernels;
    ``dense_kernels`` says whether the family also has scheduled dense ones;
    ``series_pays(op, density, rows, transform_reuse)`` whether its N:M kernel beats them for
    a layer (``transform_reuse``: where the dense one is a blocked conv, see ``llvm.nm_kernel_pays``; families that
    emulate a unit, or are one, always run the series);
    ``nm_epilogue`` whether its N:M kernels take ``bias`` and
    ``output_activation`` (the scheduled dense kernels always do).
    """

    family: str
    applies: Callable[[object, tvm.target.Target], bool]  # (HardwareTarget, TVM target)
    matmul: Callable
    conv2d: Callable
    dense_kernels: bool
    series_pays: Callable[[str, float, int, float | None], bool] = lambda op, density, rows, reuse: True
    nm_epilogue: bool = False


RULES = (
    KernelRule(
        "mma_sp",
        lambda hw, target: target.kind.name == "cuda" and hw.tvm.intrinsic == MMA_SP,
        lambda target, m, k, n, patterns, dtype: mma_sp_matmul(m, k, n, patterns, dtype=dtype, target=target),
        lambda target, x, w, patterns, dtype, **conv: mma_sp_conv2d(x, w, patterns, dtype=dtype, target=target, **conv),
        dense_kernels=False,
    ),
    KernelRule(
        NM_EMULATED,
        lambda hw, target: target.kind.name == "llvm" and hw.tvm.intrinsic == NM_EMULATED,
        lambda target, m, k, n, patterns, dtype: nm_matmul_tensorized(m, k, n, patterns, dtype=dtype, target=target),
        lambda target, x, w, patterns, dtype, **conv: nm_conv2d_tensorized(x, w, patterns, dtype=dtype, target=target,
                                                                           **conv),
        dense_kernels=True,
    ),
    KernelRule(
        "plain",
        lambda hw, target: target.kind.name == "llvm",
        lambda target, m, k, n, patterns, dtype, **epilogue: llvm.nm_matmul(m, k, n, patterns, dtype=dtype,
                                                                             target=target, **epilogue),
        lambda target, x, w, patterns, dtype, **conv: llvm.nm_conv2d(x, w, patterns, dtype=dtype, target=target, **conv),
        dense_kernels=True,
        series_pays=llvm.nm_kernel_pays,
        nm_epilogue=True,
    ),
)


@dataclass(frozen=True)
class Kernels:
    """The kernel constructors the first applicable rule gives for one TVM target."""

    rule: KernelRule
    target: tvm.target.Target

    @property
    def family(self) -> str:
        return self.rule.family

    @property
    def dense_kernels(self) -> bool:
        """Whether dense layers have a scheduled kernel here (the CPU ones)."""
        return self.rule.dense_kernels

    def series_pays(self, op: str, density: float, rows: int, transform_reuse: float | None = None) -> bool:
        """Whether a layer's N:M kernel (``op``, series ``density``, ``rows`` activation rows) beats the dense one
        (``transform_reuse``: where that is a conv in blocked channels, :meth:`blocked_conv2d`, its MACs per value
        the layout transforms around the N:M kernel would move)."""
        return self.rule.series_pays(op, density, rows, transform_reuse)

    def takes_epilogue(self, dense: bool) -> bool:
        """Whether the layer's kernel (the dense one, or the N:M one) takes ``bias`` and ``output_activation``."""
        return self.rule.dense_kernels if dense else self.rule.nm_epilogue

    # ``epilogue``: ``bias`` and ``output_activation``, only where :meth:`takes_epilogue`
    def nm_matmul(self, m: int, k: int, n: int, patterns, dtype: str, **epilogue):
        return self.rule.matmul(self.target, m, k, n, patterns, dtype, **epilogue)

    def nm_conv2d(self, x_shape, w_shape, patterns, dtype: str, **conv_and_epilogue):
        return self.rule.conv2d(self.target, x_shape, w_shape, patterns, dtype, **conv_and_epilogue)

    def dense_matmul(self, m: int, k: int, n: int, dtype: str, **epilogue):
        """The scheduled dense CPU kernel (where :attr:`dense_kernels`), tiled for this target."""
        return llvm.dense_matmul(m, k, n, dtype=dtype, target=self.target, **epilogue)

    def dense_conv2d(self, x_shape, w_shape, dtype: str, **conv_and_epilogue):
        return llvm.dense_conv2d(x_shape, w_shape, dtype=dtype, target=self.target, **conv_and_epilogue)

    def blocked_conv2d(self, x_shape, w_shape, dtype: str, conv: dict, **epilogue):
        """The dense conv in blocked channels (:mod:`~schedules.llvm_blocked`) where there is one
        (:meth:`has_blocked_conv2d`), else None; ``conv``: groups, strides, padding, dilation."""
        kind = self.has_blocked_conv2d(x_shape, w_shape, dtype, conv)
        if kind == "depthwise":
            return llvm_blocked.blocked_depthwise_conv2d(x_shape, w_shape, conv["strides"], conv["padding"], dtype,
                                                         target=self.target, **epilogue)
        return None if kind is None else llvm_blocked.blocked_conv2d(
            x_shape, w_shape, conv["strides"], conv["padding"], dtype, target=self.target,
            blocked_input=x_shape[1] > llvm_blocked.STEM_CHANNELS, **epilogue)

    def blocked_conv2d_pools(self, x_shape, w_shape, dtype: str, conv: dict, activation: str | None) -> bool:
        """Whether the blocked conv (ungrouped) can take a 2 × 2 max pooling after ``activation`` into its output
        stage (``output_pool=True`` of :meth:`blocked_conv2d`)."""
        return (self.has_blocked_conv2d(x_shape, w_shape, dtype, conv) == "conv"
                and llvm_blocked.pools(x_shape, w_shape, conv["strides"], conv["padding"], activation))

    def has_blocked_conv2d(self, x_shape, w_shape, dtype: str, conv: dict) -> str | None:
        """``depthwise`` or ``conv`` where a family with scheduled dense kernels has a blocked kernel for a float32
        undilated conv — depthwise, or ungrouped with a window of at most ``llvm_blocked.MAX_WINDOW_TAPS`` taps
        (``MAX_STEM_TAPS`` for a stem on at most ``STEM_CHANNELS``) — else None."""
        if not self.dense_kernels or dtype != "float32" or any(int(d) != 1 for d in conv["dilation"]):
            return None
        (outputs, w_channels, kh, kw), channels = w_shape, x_shape[1]
        if conv["groups"] == channels == outputs and w_channels == 1:
            return "depthwise"
        stem = channels <= llvm_blocked.STEM_CHANNELS
        most_taps = llvm_blocked.MAX_STEM_TAPS if stem else llvm_blocked.MAX_WINDOW_TAPS
        return "conv" if conv["groups"] == 1 and kh * kw <= most_taps else None


def kernels_for(hardware, target: tvm.target.Target | None = None) -> Kernels:
    """The kernels for ``hardware`` compiled for ``target`` (default: the current, else the hardware's)."""
    target = target or tvm.target.Target.current(allow_none=True) or hardware.tvm_target()
    rule = next((rule for rule in RULES if rule.applies(hardware, target)), None)
    if rule is not None:
        return Kernels(rule, target)
    if target.kind.name == "cuda":
        raise ValueError(
            f"{hardware.name}: intrinsic family {hardware.tvm.intrinsic!r} has no CUDA implementation; "
            f"CUDA builds need a target whose unit is {MMA_SP!r} (stc-2of4)"
        )
    raise ValueError(f"no N:M kernels for TVM target kind {target.kind.name!r}; use llvm or cuda")

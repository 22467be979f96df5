"""Which kernels a layer gets on a target: plain, tensorized N:M (emulated), or mma.sp.

The hardware file's ``[tvm] intrinsic`` names the target's N:M intrinsic
family (``intrin_nm``); the TVM target kind (the hardware's own, or the one
a build overrides it with) says which implementation runs:

========  ===================  =====================================================
kind      intrinsic family     N:M layers
========  ===================  =====================================================
cuda      ``mma_sp_m16n8k16``  ``cuda_mma_sp`` (PTX mma.sp; terms must be 2:4 tensors)
llvm      ``nm_emulated``      ``llvm_tensorized`` (tensorized onto the group tile)
llvm      any other            the plain schedules of ``llvm`` (e.g. a GPU target
                               emulated on the host: ``stc-2of4`` with ``llvm``)
========  ===================  =====================================================

CPU kernels pick their tiles for the host CPU (``llvm_common.host_target``).
Dense layers use the scheduled dense CPU kernels on ``llvm``; on ``cuda``
they stay Relax operators, which TVM's default GPU schedules (dlight) lower.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm

from . import llvm
from .intrin_nm import MMA_SP, NM_EMULATED


@dataclass(frozen=True)
class Kernels:
    """The kernel constructors for one (intrinsic family, TVM target) pair."""

    family: str  # "mma_sp" | "nm_emulated" | "plain"
    target: tvm.target.Target

    def nm_matmul(self, m: int, k: int, n: int, patterns, dtype: str):
        if self.family == "mma_sp":
            from .cuda_mma_sp import mma_sp_matmul

            return mma_sp_matmul(m, k, n, patterns, dtype=dtype, target=self.target)
        if self.family == NM_EMULATED:
            from .llvm_tensorized import nm_matmul_tensorized

            return nm_matmul_tensorized(m, k, n, patterns, dtype=dtype)
        return llvm.nm_matmul(m, k, n, patterns, dtype=dtype)

    def nm_conv2d(self, x_shape, w_shape, patterns, dtype: str, **conv):
        if self.family == "mma_sp":
            from .cuda_mma_sp import mma_sp_conv2d

            return mma_sp_conv2d(x_shape, w_shape, patterns, dtype=dtype, target=self.target, **conv)
        if self.family == NM_EMULATED:
            from .llvm_tensorized import nm_conv2d_tensorized

            return nm_conv2d_tensorized(x_shape, w_shape, patterns, dtype=dtype, **conv)
        return llvm.nm_conv2d(x_shape, w_shape, patterns, dtype=dtype, **conv)

    @property
    def dense_kernels(self) -> bool:
        """Whether dense layers have a scheduled kernel here (the CPU ones)."""
        return self.target.kind.name == "llvm"


def kernels_for(hardware, target: tvm.target.Target | None = None) -> Kernels:
    """The kernels for ``hardware`` compiled for ``target`` (default: the current, else the hardware's)."""
    target = target or tvm.target.Target.current(allow_none=True) or hardware.tvm_target()
    kind, family = target.kind.name, hardware.tvm.intrinsic
    if kind == "cuda":
        if family != MMA_SP:
            raise ValueError(
                f"{hardware.name}: intrinsic family {family!r} has no CUDA implementation; "
                f"CUDA builds need a target whose unit is {MMA_SP!r} (stc-2of4)"
            )
        return Kernels("mma_sp", target)
    if kind != "llvm":
        raise ValueError(f"no N:M kernels for TVM target kind {kind!r}; use llvm or cuda")
    return Kernels(NM_EMULATED if family == NM_EMULATED else "plain", target)

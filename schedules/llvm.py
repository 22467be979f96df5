"""CPU (LLVM) kernels for the emulated N:M target — the public entry points.

* :func:`nm_matmul` — ``x(m, k) · Σ_t W_t(k, n) (+ bias)``, one fused kernel
  over the compressed terms (``llvm_matmul``);
* :func:`nm_conv2d` — NCHW/OIHW conv2d with the same fused reduction as an
  implicit GEMM (``llvm_conv2d``);
* :func:`dense_matmul`, :func:`dense_conv2d` — equally scheduled dense
  baselines (:func:`dense_conv2d_pays`: where the conv kernel beats TVM's own;
  :func:`nm_kernel_pays`: where an N:M kernel beats the dense one, with
  :func:`layout_transform_reuse` for a conv a CPU build runs in blocked channels);
* :func:`build` — compile any of them for this CPU and call/time it.

Every constructor returns an :class:`NMKernel`: ``func`` (scheduled
``tvm.tirx.PrimFunc``, arguments: activation, packed constants, [bias],
output), ``pack`` (weights → the constant arrays, in argument order),
``executed_macs``, ``x_layout``, ``out_shape``, ``params`` (tiles chosen).
"""

from .llvm_common import CompiledKernel, NMKernel, build, host_target, layout_transform_reuse, nm_kernel_pays
from .llvm_conv2d import dense_conv2d, dense_conv2d_pays, nm_conv2d
from .llvm_dense import dense_matmul
from .llvm_matmul import nm_matmul

__all__ = [
    "CompiledKernel",
    "NMKernel",
    "build",
    "dense_conv2d",
    "dense_conv2d_pays",
    "dense_matmul",
    "host_target",
    "layout_transform_reuse",
    "nm_conv2d",
    "nm_kernel_pays",
    "nm_matmul",
]

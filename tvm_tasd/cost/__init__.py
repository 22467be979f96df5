"""Analytical latency, energy and EDP of GEMM / conv2d layers on an N:M target.

The model (equations and assumptions: ``docs/cost_model.md``) follows
``docs/semantics.md`` in the spirit of Sparseloop: per term, the MACs it executes
on the unit and the bytes it moves at each memory level; latency is the
slowest of compute, each level and the TASD units; energy is bytes × pJ/byte
plus MACs × MAC energy plus metadata bits × pJ/bit plus TASD-unit work.
Every figure comes from a field of the target file (:mod:`tvm_tasd.hardware`).

GEMM convention: ``out(m, n) = x(m, k) · W(k, n)`` with ``W`` the constant
weight and N:M groups along K.  A weight series runs term after term sharing
the activation and the partial sums (paper Fig. 11): extra terms cost compute
and weight/metadata bytes, never re-reads of the activation.

Two ways to count the bytes: targets with a MAC ``array`` in ``[compute]`` run a
loop-nest model with a mapper that tiles each layer into the levels' capacities
(:mod:`.nest`); the others re-read operands per fixed output tile (:mod:`.layer`).
"""

from .layer import LayerCost, ModelCost, TermRun, conv2d_cost, gemm_cost, layer_cost, model_cost

__all__ = ["LayerCost", "ModelCost", "TermRun", "conv2d_cost", "gemm_cost", "layer_cost", "model_cost"]

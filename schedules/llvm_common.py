"""What the LLVM (CPU) kernels share: host target, kernel record, build, schedule pieces.

* :func:`output_stage` — the cast to the output dtype (and the optional bias
  and output activation, :data:`OUTPUT_ACTIVATIONS`) every kernel ends with.
* :func:`host_target` — ``Target({"kind": "llvm", "mcpu": <host cpu>})``; the
  vector width and register count the schedules tile for come from it
  (AVX-512: 16 fp32 lanes, 32 registers; AVX2: 8 lanes, 16 registers).
* :class:`NMKernel` — a scheduled ``tvm.tirx.PrimFunc`` plus the function that
  packs the (compile-time constant) weights into the layout it reads.
* :func:`build` — compile a kernel for the host and call or time it.
* :func:`schedule_transpose` and :func:`tile_nm_reduction` /
  :func:`finish_nm_reduction` — the scheduling steps the matmul and conv
  kernels have in common; :func:`vectorize_run` — a contiguous run as whole
  vectors plus a vectorised remainder, where no vector width divides it.
* :func:`nm_kernel_pays` — whether a layer's series runs faster on the N:M
  kernel than its approximated weights on the dense one (measured rule).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import tvm
import tvm_ffi
from tvm import te
from tvm.target import codegen

from .nm_pack import ceil_div

#: Bytes of activation rows a kernel keeps hot per reduction tile (an L1 data cache).
L1_BYTES = 32 * 1024
#: The L1 data cache's associativity and line (AMD Zen 4: 32 KiB, 8-way, 64-byte lines): rows at a stride of a
#: large power of two share few of its sets.
L1_WAYS = 8
CACHE_LINE = 64
#: Bytes of one core's L2 cache (AMD Zen: 512 KiB–1 MiB; the smaller).
L2_BYTES = 512 * 1024
#: Parallel tasks to aim for per core, so threads stay balanced.
TASKS_PER_CORE = 4
#: Below this much work (:func:`block_work`) a function runs on one thread: waking TVM's thread pool and
#: joining it costs microseconds, more than a small function saves. Measured A/B in one process on the 2-core VM
#: (dense builds, every function parallel against this threshold): digits CNN at batch 1 4.9× faster, PP-OCR cls
#: at batch 1 1.7×, digits MLP at 120 1.6×, CREPE tiny at 1 1.1×, MiniLM 8 × 40 1.00× (at 2^17 it lost 5 %: its
#: 320 × 384 residual adds want both cores).
PARALLEL_MIN_WORK = 1 << 16
#: Largest tile of :func:`schedule_transpose`: LLVM took 2.6× as long to compile an N:M matmul whose transposes
#: were 16 × 16 (AVX-512 lanes) as with 8 × 8, which ran as fast (MiniLM's plans 1.01×, measured side by side).
MAX_TRANSPOSE_TILE = 8
#: The densest series (its share of the dense MACs) whose fused N:M kernel still beats the dense kernel of the same
#: loop nest: an N:M entry costs a value and an index load beside its FMA, and at few activation rows the
#: activation transpose and per-task set-up weigh more. Measured side by side (``benchmarks/kernel_choice.py``,
#: ``results/kernel_choice.md``: the AVX2 build's kernels on the 2-core VM, 2026-12-05): MiniLM's GEMMs at 320 rows
#: ran 4:8 at 1.19–1.26× the dense kernel, 4:8+1:8 at 0.95–1.02×, 4:8+2:8 at 0.80–0.89×; convs of 576–2048 rows
#: 4:8 at 0.70–1.11×, 4:8+1:8 at 0.86–0.95×; at 40 rows 2:8 at 1.70–1.89×, 2:8+1:8 at 1.04–1.20×, 4:8 at
#: 0.87–0.98×. 2:8+1:8 at 40 rows stays dense: in the model (MiniLM's plan at one sentence, A/B in one process,
#: 9 and 21 rounds) running its 15 layers' N:M kernels measured 0.95× and 1.01×. The row boundary between the
#: two regimes is not measured more finely.
NM_MAX_DENSITY = 0.5
SMALL_ROWS = 128
SMALL_ROWS_NM_MAX_DENSITY = 0.25
#: Reduction steps per unit of work (one FMA vector of 16 fp32 lanes does this many at once).
REDUCTION_STEPS_PER_UNIT = 16


#: The densest series whose N:M conv beats a dense conv in blocked channels (``llvm_blocked``, 1.2–1.8× the NCHW
#: dense kernel), and the least work per moved value it needs: there the N:M kernel (NCHW) also needs a layout
#: transform on each side, which moves C + O values per position against the conv's C · KH · KW · O MACs. Measured
#: on the Xeon (``kernel_choice.py --target host``, blocked rows, transforms included), at 1:8: a 3 × 3 conv 64 → 64
#: (288 MACs per moved value) 1.97× the blocked dense kernel, 672 → 112 (96) 1.20× at 16 images and 0.92× at one,
#: 40 → 240 (34) 0.88×, 200 → 32 (28) 0.83×; 2:8 0.69–0.98× on those pointwise convs, 1.23× on the 3 × 3; 4:8
#: 0.52–0.75×. (The digits CNN's 16 → 32 3 × 3 conv, 96, at 1:8: its plan ran 1.2× its dense build.)
BLOCKED_NM_MAX_DENSITY = 0.125
BLOCKED_NM_MIN_REUSE = 64


def layout_transform_reuse(w_shape: Sequence[int]) -> float:
    """MACs per position over the values per position (C + O) the two layout transforms around an NCHW kernel move,
    for an ungrouped conv of OIHW ``w_shape`` (what :func:`nm_kernel_pays` takes for blocked builds)."""
    outputs, channels = int(w_shape[0]), int(w_shape[1])
    return math.prod(int(d) for d in w_shape) / (outputs + channels)


def nm_kernel_pays(op: str, density: float, rows: int, transform_reuse: float | None = None) -> bool:
    """Whether the N:M kernel of a series of ``density`` beats the dense kernel for a layer (``op``: ``matmul`` or
    ``conv2d``, alike here; ``rows``: its activation rows, the GEMM's M) (:data:`NM_MAX_DENSITY`);
    ``transform_reuse`` for a conv whose dense kernel runs in blocked channels: its MACs per value the two layout
    transforms move, C · KH · KW · O / (C + O) (:data:`BLOCKED_NM_MAX_DENSITY`)."""
    if transform_reuse is not None:
        return density <= BLOCKED_NM_MAX_DENSITY and transform_reuse >= BLOCKED_NM_MIN_REUSE
    return density <= (SMALL_ROWS_NM_MAX_DENSITY if rows < SMALL_ROWS else NM_MAX_DENSITY)


#: Activation functions a kernel's output stage can apply after the bias, on the accumulator value
#: (``output_activation=`` of the CPU kernels): otherwise one more pass over the output, in a function of its own.
OUTPUT_ACTIVATIONS: dict[str, Callable] = {  # (value, constant of the value's dtype) → value
    "relu": lambda v, c: tvm.tirx.max(v, c(0)),
    "relu6": lambda v, c: tvm.tirx.min(tvm.tirx.max(v, c(0)), c(6)),
    "hardswish": lambda v, c: v * tvm.tirx.min(tvm.tirx.max(v + c(3), c(0)), c(6)) / c(6),
}


def output_stage(shape, value: Callable, channel: "int | tuple[int, int]", dtype: str, acc: str, bias: bool,
                 output_activation: str | None = None):
    """``out = output_activation(value(*index) [+ bias[index[channel]]]).astype(dtype)``, and the inputs it adds
    ([bias] or []); ``output_activation`` names one of :data:`OUTPUT_ACTIVATIONS` (None: the identity).
    Blocked channels give ``channel`` as the (block, lane) axes: the bias then holds blocks × lanes values."""
    if output_activation is not None and output_activation not in OUTPUT_ACTIVATIONS:
        raise ValueError(f"unknown output activation {output_activation!r}; the kernels apply "
                         f"{', '.join(sorted(OUTPUT_ACTIVATIONS))}")
    function = OUTPUT_ACTIVATIONS.get(output_activation, lambda v, _: v)

    def apply(v):
        return function(v, lambda number: tvm.tirx.const(number, acc))

    if not bias:
        return te.compute(shape, lambda *i: apply(value(*i)).astype(dtype), name="out"), []
    block, lane = channel if isinstance(channel, tuple) else (None, channel)

    def channel_of(index):
        return index[lane] if block is None else index[block] * shape[lane] + index[lane]

    b = te.placeholder((shape[lane] * (1 if block is None else shape[block]),), dtype, name="bias")
    return te.compute(shape, lambda *i: apply(value(*i) + b[channel_of(i)].astype(acc)).astype(dtype),
                      name="out"), [b]


def host_target() -> tvm.target.Target:
    """The LLVM target for this machine's CPU (plain ``llvm`` if LLVM does not know it)."""
    cpu = codegen.llvm_get_system_cpu()
    if cpu and codegen.llvm_is_valid_cpu(cpu, codegen.llvm_get_system_triple()):
        return tvm.target.Target({"kind": "llvm", "mcpu": cpu})
    return tvm.target.Target({"kind": "llvm"})


@dataclass(frozen=True)
class CPUShape:
    """What a schedule needs to know about the CPU: SIMD lanes and vector registers."""

    vector_bits: int
    registers: int

    @classmethod
    def of(cls, target: tvm.target.Target | None = None) -> "CPUShape":
        target = target or host_target()
        # From the features, not ``llvm_get_vector_width``: TVM 0.27 reports 512 bits for every x86 CPU, which
        # makes AVX2 kernels tile for twice the registers they have (each "vector" two ymm registers: spills).
        wide = codegen.llvm_cpu_has_features("avx512f", target)
        triple = str(target.attrs.get("mtriple", "")) or codegen.llvm_get_system_triple()
        many = wide or triple.startswith(("aarch64", "arm64"))
        bits = 512 if wide else 256 if codegen.llvm_cpu_has_features("avx", target) else 128
        return cls(bits, 32 if many else 16)

    def lanes(self, dtype: str) -> int:
        return max(1, self.vector_bits // tvm.runtime.DataType(dtype).bits)


def float_dtype(dtype) -> str:
    """A dtype name (accepts numpy dtypes and TVM DataType objects)."""
    name = str(dtype)
    if name not in ("float16", "bfloat16", "float32", "float64"):
        raise ValueError(f"CPU N:M kernels take float16, bfloat16, float32 or float64, got {name}")
    return name


def accumulator_dtype(dtype: str) -> str:
    """Accumulate 16-bit floats in fp32 (CPUs have no fast 16-bit FMA); keep fp32/fp64."""
    return "float32" if dtype in ("float16", "bfloat16") else dtype


def vectorize_run(s: tvm.s_tir.Schedule, loop, lanes: int) -> None:
    """Vectorise ``loop`` (a contiguous run, of constant extent) in vectors of ``lanes``; a remainder is a loop
    of its own, vectorised too. Split as one loop, the last vector would be predicated, which TVM lowers to a
    bounds test per lane: the output pass of 16 images' 112 → 672 conv on 14 × 14 planes (runs of 196) ran
    1.14× faster partitioned. Call it after every primitive that follows the function's dataflow: the partition
    replaces the block (stale handles) and wraps the copies in blocks that declare no reads or writes, so a later
    ``compute_at`` of a producer of the partitioned block misplaces it (in the default Window rule the padding of
    a stride-2 depthwise conv then ran after the conv that reads it: wrong outputs, so that rule keeps its own
    vectorisation)."""
    extent = int(s.get(loop).extent)
    body = extent - extent % lanes
    if 0 < body < extent:
        loop, tail = s.loop_partition(loop, [body, None])
        s.vectorize(tail)
    if extent <= lanes:
        s.vectorize(loop)
    else:
        s.vectorize(s.split(loop, [None, lanes])[1])


def parallel(s: tvm.s_tir.Schedule, loop) -> None:
    """``s.parallel(loop)`` where the scheduled function does enough work to repay a fork/join of the thread
    pool (:data:`PARALLEL_MIN_WORK`); otherwise the loop stays serial."""
    if block_work(s.mod[s.func_working_on]) >= PARALLEL_MIN_WORK:
        s.parallel(loop)


def block_work(func: tvm.tirx.PrimFunc) -> float:
    """Σ over the function's blocks of spatial iterations × (1 + reduction steps / 16): an elementwise op's
    elements, about a matmul's output elements × K/16 (infinite where an extent is symbolic)."""
    work = []

    def visit(block):
        spatial = reduction = 1
        for iv in block.iter_vars:
            if not isinstance(iv.dom.extent, tvm.tirx.IntImm):
                work.append(math.inf)
                return
            if iv.iter_type == tvm.tirx.IterVar.CommReduce:
                reduction *= int(iv.dom.extent)
            else:
                spatial *= int(iv.dom.extent)
        work.append(spatial * (1 + (reduction - 1) / REDUCTION_STEPS_PER_UNIT))

    tvm_ffi.structural_walk(func.body, [(tvm.s_tir.SBlock, visit)])
    return sum(work)


def parallel_chunks(outer_tasks: int, col_tiles: int) -> int:
    """How many column chunks to split the work into so every core gets several tasks."""
    want = TASKS_PER_CORE * (os.cpu_count() or 1)
    return max(1, min(col_tiles, ceil_div(want, max(1, outer_tasks))))


@dataclass(frozen=True)
class NMKernel:
    """A scheduled CPU kernel and how to feed it.

    ``func`` — the ``tvm.tirx.PrimFunc``; arguments in order: the activation,
    the packed constant arrays (``pack``'s list, in order), bias if the kernel
    has one, the output.
    ``pack(weights)`` — the compile-time constants as numpy arrays: from the
    list of ``NMTerm``s for N:M kernels, from the dense weight for dense ones.
    ``executed_macs`` — multiply-accumulates the kernel really performs:
    outputs × entries walked per output (Σ_t Kc_t, plus the zero entries
    that even out a short last reduction tile); lanes of a vector tile that
    fall past the output are not counted.
    ``x_layout`` / ``out_shape`` — what the activation and output look like.
    ``params`` — the tile sizes chosen, for reports; and what the graph may rely on: ``blocked_lanes``
    (:func:`~.llvm_blocked.blocked_lanes`), ``weight_k_axis`` (the packed weight's axis along k, where
    permuting it and x's columns alike leaves the output unchanged: dense matmuls; N:M terms group k).
    ``pack_bias(bias)`` — the bias operand from one value per output channel (blocked kernels pad it).
    """

    func: tvm.tirx.PrimFunc
    pack: Callable[..., list[np.ndarray]]
    executed_macs: int
    x_layout: str
    out_shape: tuple[int, ...]
    params: dict = field(default_factory=dict)
    pack_bias: Callable[[np.ndarray], np.ndarray] = np.asarray


class CompiledKernel:
    """A built kernel: call it with numpy arrays or time it with TVM's time_evaluator."""

    def __init__(self, kernel: NMKernel, module, device):
        self.kernel = kernel
        self.module = module
        self.device = device
        self.name = str(kernel.func.attrs["global_symbol"])
        self.out_dtype = str(kernel.func.params[-1].dtype)  # 0.27: params are the buffers

    def _tensors(self, inputs):
        tensors = [a if isinstance(a, tvm.runtime.Tensor) else tvm.runtime.tensor(np.ascontiguousarray(a), self.device) for a in inputs]
        out = tvm.runtime.tensor(np.zeros(self.kernel.out_shape, self.out_dtype), self.device)
        return tensors + [out]

    def __call__(self, *inputs) -> np.ndarray:
        """Run on ``inputs`` (func's arguments without the output); return the output."""
        args = self._tensors(inputs)
        self.module[self.name](*args)
        return args[-1].numpy()

    def timer(self, *inputs, number: int = 10, repeat: int = 5) -> Callable[[], list[float]]:
        """A function that times the kernel on ``inputs``: seconds per call, one per repeat."""
        args = self._tensors(inputs)
        evaluator = self.module.time_evaluator(self.name, self.device, number=number, repeat=repeat)
        return lambda: list(evaluator(*args).results)


def build(kernel: NMKernel, target: tvm.target.Target | None = None) -> CompiledKernel:
    """Compile ``kernel.func`` for the CPU (``tvm.tirx.build``) and wrap it for calling/timing."""
    func = kernel.func
    if not bool(func.attrs.get("tirx.noalias", False)):
        # without it LLVM must assume the buffers alias and reloads every accumulator
        func = func.with_attr("tirx.noalias", True)
        kernel = replace(kernel, func=func)
    module = tvm.tirx.build(func, target=target or host_target())
    return CompiledKernel(kernel, module, tvm.cpu())


def _read_index(s, block, name: str) -> int:
    return [region.source.name for region in s.get(block).reads].index(name)


def schedule_transpose(s, block, source: str, tile: int):
    """Tile a transposing copy ``dst[.., a, b] = f(src[.., b, a])`` over its last two loops.

    A ``tile``×``tile`` block of ``source`` (at most :data:`MAX_TRANSPOSE_TILE`)
    is staged in registers with vector loads along b and written back with
    vector stores along a; LLVM turns the pair into shuffles, ~5× faster than
    an element-wise strided copy.
    Returns the loops outside the tile (outer loops, then the two tile loops).
    """
    tile = min(tile, MAX_TRANSPOSE_TILE)
    *outer, a, b = s.get_loops(block)
    ao, ai = s.split(a, [None, tile])
    bo, bi = s.split(b, [None, tile])
    s.reorder(ao, bo, ai, bi)
    staged = s.cache_read(block, _read_index(s, block, source), "local")
    s.compute_at(staged, bo)
    staged_loops = s.get_loops(staged)
    s.vectorize(staged_loops[-1])
    s.unroll(staged_loops[-2])
    s.unroll(ai)
    s.vectorize(bi)
    return [*outer, ao, bo]


def position_vectors(positions: int, lanes: int, widest: int) -> int:
    """Activation vectors per N:M register tile (1..``widest``) for ``positions`` rows.

    Each kept entry costs a value broadcast and a row index load beside its
    ``vectors`` FMAs, so wide tiles amortise those two loads; but rows past
    the end are computed too. Minimises padded rows × (vectors + 2) / vectors:
    4 vectors for 320 rows, 3 for 40 (48 rows, not 64).
    """
    def cost(vectors: int) -> float:
        return ceil_div(positions, vectors * lanes) * vectors * lanes * (vectors + 2) / vectors

    return min(range(widest, 0, -1), key=cost)


@dataclass
class NMTiles:
    """Tile sizes of the N:M reduction (see :func:`tile_nm_reduction`)."""

    cols: int  # output columns per register tile (each has its own value/row stream)
    positions: int  # activation positions per task (vectorised, a multiple of lanes)
    lanes: int
    entries: int  # entries per reduction tile
    chunks: int  # column chunks per position tile, for parallelism


def tile_nm_reduction(s, block, lead: list, j, p, r, t: NMTiles, parallelize: bool = True):
    """Loop nest of ``acc[.., j, p] = Σ_r vals[j, r] · X[row(j, r) + p]``.

    Order: ``lead…, p/positions, column chunk`` (fused, parallel) → reduction
    tile → column tile → entry → column → position vector → lane. The
    accumulators of one column tile (cols × positions/lanes vectors) stay in
    registers across a reduction tile; the rows of X a reduction tile touches
    (positions wide) stay in L1 while every column tile of the chunk walks
    them. Returns the parallel loop and the loops :func:`finish_nm_reduction`
    needs; ``parallelize=False`` leaves the task loop serial, for a caller that
    still merges other loops into it.
    """
    jp, jo, c = s.split(j, [t.chunks, None, t.cols])
    po, pv, pl = s.split(p, [None, t.positions // t.lanes, t.lanes])
    ro, ri = s.split(r, [None, t.entries])
    s.reorder(*lead, po, jp, ro, jo, ri, c, pv, pl)
    task = s.fuse(*lead, po, jp)
    if parallelize:
        parallel(s, task)
    return task, (ro, c, pv, pl)


def finish_nm_reduction(s, block, loops) -> None:
    """Vectorise the lanes, unroll the register tile, hoist the zero-init out of the reduction."""
    ro, c, pv, pl = loops
    s.vectorize(pl)
    s.unroll(pv)
    s.unroll(c)
    init = s.decompose_reduction(block, ro)
    s.vectorize(s.get_loops(init)[-1])

"""CPU schedules for every operator the TASD rewrite leaves to TVM.

The rewritten matmuls and convolutions arrive scheduled (``llvm_matmul``,
``llvm_conv2d``; the rewrite marks them ``tirx.is_scheduled``). Everything else — attention's
matmul of two activations, softmax, layer norm, GELU, the residual adds,
reshapes and transposes that ``FuseOps``/``FuseTIR`` group together, gathers —
is legalized by TVM into plain loop nests that run on one core, one scalar at
a time. :func:`default_cpu_schedule` gives each of those a schedule, through
TVM's own rule machinery (``s_tir.dlight.ApplyDefaultSchedule``): the first
rule that applies wins; a function no rule fits stays as TVM lowered it.

* :class:`Contraction` — a reduction over a product of two inputs (batched
  matmul, with any injective epilogue): spatial rows in parallel, the
  reduction outside the innermost output axis, which is vectorised so every
  step is a vector FMA into the output row.
* :class:`Window` — depthwise/grouped convolutions and pooling: channels in
  parallel, each output row in vectors summed over the window's taps.
* :class:`Reduction` — softmax, norms, global pooling: rows in parallel,
  each row's blocks computed together, innermost reductions summed in vector
  lanes (``rfactor``), injective steps vectorised.
* :class:`Injective` — elementwise chains, reshapes, transposes: producers
  inlined, the rest in parallel, the innermost axis vectorised when it fits
  one vector or the vector width divides it.
* :class:`Fallback` — anything else (gathers, odd reductions): the leading
  spatial loops of each block in parallel.

"""

from __future__ import annotations

import math

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.s_tir import dlight
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import try_inline
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.s_tir.schedule import ScheduleError

from .llvm_common import CPUShape, parallel


def _lanes(target: tvm.target.Target, dtype_bits: int) -> int:
    """SIMD lanes of ``dtype_bits``-wide values on the target (TVM's own Reduction rule asks LLVM, which says
    512 bits on every x86 CPU: there its vectors may span two registers)."""
    return max(CPUShape.of(target).vector_bits // dtype_bits, 2)


def _output_bits(sch: s_tir.Schedule, block) -> int:
    writes = sch.get(block).writes
    return writes[0].source.dtype.bits if writes else 32


def _extent(sch: s_tir.Schedule, loop) -> int | None:
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def _vectorize(sch: s_tir.Schedule, loop, lanes: int) -> None:
    """Vectorise ``loop`` in chunks of ``lanes`` when they divide it (a remainder would need a predicate)."""
    extent = _extent(sch, loop)
    if extent is None or extent < 2:
        return
    if extent <= lanes:
        sch.vectorize(loop)
    elif extent % lanes == 0:
        sch.vectorize(sch.split(loop, factors=[None, lanes])[1])


def _parallel_spatial(sch: s_tir.Schedule, block, leading: int):
    """The first ``leading`` loops of ``block`` fused and run in parallel; the fused loop."""
    loops = sch.get_loops(block)[:leading]
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    parallel(sch, fused)
    return fused


def _leading_spatial(kind: str) -> int:
    return len(kind) - len(kind.lstrip("S"))


def _schedulable(func, target: tvm.target.Target) -> bool:
    """An LLVM PrimFunc whose loops are all still serial: a function scheduled already keeps its schedule
    even without ``tirx.is_scheduled``."""
    if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
        return False
    kinds = []
    tvm_ffi.structural_walk(func.body, [(tirx.For, lambda loop: kinds.append(loop.kind))], order="post")
    return all(kind == tirx.ForKind.SERIAL for kind in kinds)


class _Rule(CPUScheduleRule):
    """A rule on the normalised blocks of a schedulable PrimFunc: ``schedule`` returns the schedule, or None
    where the rule does not fit; a primitive TVM refuses on this function also means it does not fit."""

    def apply(self, func: tirx.PrimFunc, target: tvm.target.Target, _tunable: bool):
        if not _schedulable(func, target):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        try:
            return None if infos is None else self.schedule(sch, infos, target)
        except (ScheduleError, tvm.error.InternalError):
            return None

    def schedule(self, sch: s_tir.Schedule, infos: list, target: tvm.target.Target) -> s_tir.Schedule | None:
        raise NotImplementedError


class Reduction(_Rule):
    """Softmax, norms: blocks that reduce over their innermost axis, then injective blocks on the same rows.

    TVM's ``dlight.cpu.Reduction`` leaves each reduction a scalar loop whose every add waits for the last (a
    MiniLM layer norm row: 2 × 384 dependent adds). Here each innermost reduction whose length the vector width
    divides is first ``rfactor``-ed into one partial sum per lane, so the row is summed in vector registers and
    the lanes are added once at the end; then every block goes under the parallel row loop (``compute_at``)
    and the injective ones are vectorised.
    """

    def schedule(self, sch: s_tir.Schedule, infos: list, target: tvm.target.Target):
        if len(infos) < 2 or all(info.is_injective() for info in infos) or not infos[-1].is_injective():
            return None
        rows = min(_leading_spatial(info.dom_kind()) for info in infos)
        if not rows:
            return None
        lanes = _lanes(target, _output_bits(sch, infos[-1].block_rv))
        partials = [self._lane_partials(sch, info, lanes) for info in infos if not info.is_injective()]
        partials = {sch.get(block).name_hint for block in partials if block is not None}
        *blocks, last = sch.get_child_blocks(sch.get_sblock("root"))
        row = _parallel_spatial(sch, last, rows)
        if len(sch.get_loops(last)) > 1:
            _vectorize(sch, sch.get_loops(last)[-1], lanes)
        for block in reversed(blocks):
            sch.compute_at(block, row, preserve_unit_loops=True)
        for block in blocks:
            if sch.get(block).name_hint in partials:
                self._vectorize_partials(sch, block, lanes)
            elif all(iv.iter_type == tirx.IterVar.DataPar for iv in sch.get(block).iter_vars):
                _vectorize(sch, sch.get_loops(block)[-1], lanes)
        return sch

    @staticmethod
    def _lane_partials(sch: s_tir.Schedule, info, lanes: int):
        """``rfactor`` the block's innermost reductions (several fused into one: a mean over an image's rows and
        columns) into ``lanes`` partials; the partial block or None."""
        kind = info.dom_kind()
        reductions = len(kind) - len(kind.rstrip("R"))
        if not reductions or kind.count("R") != reductions:
            return None
        loops = sch.get_loops(info.block_rv)[-reductions:]
        extents = [_extent(sch, loop) for loop in loops]
        values = None if None in extents else math.prod(extents)
        if values is None or values <= lanes or values % lanes:
            return None
        _, lane = sch.split(sch.fuse(*loops) if reductions > 1 else loops[0], [None, lanes])
        written = sch.get(info.block_rv).writes[0].source
        return sch.rfactor(lane, factor_axis=len(written.shape))

    @staticmethod
    def _vectorize_partials(sch: s_tir.Schedule, block, lanes: int) -> None:
        """Under the row loop a partial block of one row has two loops that are not unit, the lanes and the
        steps: steps outside, lanes vectorised, the zero-init hoisted out of the steps. (A block with more
        spatial axes than the rows keeps its partials in scalar loops.)"""
        wide = [loop for loop in sch.get_loops(block)[1:] if _extent(sch, loop) != 1]
        if len(wide) != 2:
            return
        lane, step = wide
        if _extent(sch, lane) != lanes:
            lane, step = step, lane
        sch.reorder(step, lane)
        sch.vectorize(lane)
        init = sch.decompose_reduction(block, step)
        sch.vectorize(sch.get_loops(init)[-1])


class Window(_Rule):
    """Depthwise/grouped convolutions and pooling: one reduction over a window of an image, its padding before
    it and an injective epilogue (bias, activation) after it.

    TVM lowers these to one scalar multiply-add per tap, and :class:`Reduction` would put every output
    element under the parallel loop and rebuild its padded window each time (PP-OCR's 5×5 depthwise conv +
    hardswish: 6 ms a call, 0.34 ms here). Here: the leading spatial loops (batch, channel) in parallel; the
    padded input of one channel built once under that loop; the output rows cut into vectors along their
    innermost axis (the widest vector that divides it), a register tile of a few rows × vectors summed over
    every tap together; the epilogue, collapsed into one block, written per tile of rows while they are in
    cache. The tile made EfficientNet-Lite0's 5 × 5 depthwise convs on 7 × 7 and 14 × 14 planes 1.5–1.8× faster.
    """

    def schedule(self, sch: s_tir.Schedule, infos: list, target: tvm.target.Target):
        reductions = [index for index, info in enumerate(infos) if not info.is_injective()]
        if len(reductions) != 1:
            return None
        main = infos[reductions[0]]
        kind = main.dom_kind()
        spatial = _leading_spatial(kind)
        if spatial < 3 or kind != "S" * spatial + "R" * (len(kind) - spatial):
            return None
        producers, consumers = infos[: reductions[0]], infos[reductions[0] + 1 :]
        consumers = try_inline(sch, consumers)  # the epilogue chain into its last block
        if len(consumers) > 1:
            return None
        loops = sch.get_loops(main.block_rv)
        *outer, row, column = loops[:spatial]
        taps = loops[spatial:]
        lanes = _lanes(target, _output_bits(sch, main.block_rv))
        rows, columns = _extent(sch, row), _extent(sch, column)
        if rows is None or columns is None:
            return None
        width = max(d for d in range(1, lanes + 1) if columns % d == 0)  # a vector that divides the row
        tile_rows, tile_vectors = self._register_tile(rows, columns // width, CPUShape.of(target).registers)
        row_block, row_in = sch.split(row, [None, tile_rows])
        vector_block, vector_in, vector = sch.split(column, [None, tile_vectors, width])
        sch.reorder(row_block, vector_block, *taps, row_in, vector_in, vector)
        task = _parallel_spatial(sch, main.block_rv, len(outer))
        if width > 1:
            sch.vectorize(vector)
        sch.unroll(row_in)
        sch.unroll(vector_in)
        init = sch.decompose_reduction(main.block_rv, taps[0])
        _vectorize(sch, sch.get_loops(init)[-1], width)
        for producer in reversed(producers):
            sch.compute_at(producer.block_rv, task, preserve_unit_loops=True)
            _vectorize(sch, sch.get_loops(producer.block_rv)[-1], lanes)
        for consumer in consumers:
            sch.reverse_compute_at(consumer.block_rv, row_block, preserve_unit_loops=True)
            _vectorize(sch, sch.get_loops(consumer.block_rv)[-1], lanes)
        return sch

    @staticmethod
    def _register_tile(rows: int, vectors: int, registers: int) -> tuple[int, int]:
        """Output rows × row vectors summed together over the taps: enough independent accumulators to hide
        the FMA latency (one accumulator chain ran at a quarter of the FMA rate), few enough that they, a
        tap's weight and its input vector stay in registers; both factors divide their extents."""
        budget = registers // 2
        vectors = max(d for d in range(1, min(vectors, budget) + 1) if vectors % d == 0)
        return max(d for d in range(1, min(rows, budget // vectors) + 1) if rows % d == 0), vectors


class Contraction(_Rule):
    """``out[s…, j] = Σ_k a[…, k] · b[…, k, j]`` (any spatial prefix), plus injective blocks after it."""

    def schedule(self, sch: s_tir.Schedule, infos: list, target: tvm.target.Target):
        infos = try_inline(sch, infos)
        reductions = [info for info in infos if not info.is_injective()]
        if len(reductions) != 1 or infos[0] is not reductions[0] or not self._is_contraction(sch, reductions[0]):
            return None
        main = reductions[0]
        kind = main.dom_kind()
        if kind != "S" * (len(kind) - 1) + "R" or len(kind) < 3:
            return None
        lanes = _lanes(target, _output_bits(sch, main.block_rv))
        *outer, column, reduction = sch.get_loops(main.block_rv)
        sch.reorder(*outer, reduction, column)
        rows = _parallel_spatial(sch, main.block_rv, len(outer))
        _vectorize(sch, column, lanes)
        sch.decompose_reduction(main.block_rv, sch.get_loops(main.block_rv)[1])
        for epilogue in infos[1:]:
            sch.reverse_compute_at(epilogue.block_rv, rows, preserve_unit_loops=True)
            _vectorize(sch, sch.get_loops(epilogue.block_rv)[-1], lanes)
        return sch

    @staticmethod
    def _is_contraction(sch: s_tir.Schedule, info) -> bool:
        """Two inputs read along the reduction variable, the innermost output axis absent from the first."""
        block = sch.get(info.block_rv)
        reduce_vars = [iv.var for iv in block.iter_vars if iv.iter_type == tirx.IterVar.CommReduce]
        if len(reduce_vars) != 1:
            return False

        def uses(region, var) -> bool:
            return any(var.same_as(v) for r in region.region for v in tirx.analysis.undefined_vars(r.min))

        along_k = [read for read in block.reads if uses(read, reduce_vars[0])]
        column = block.iter_vars[len(block.iter_vars) - 2].var
        return len(along_k) == 2 and not uses(along_k[0], column) and uses(along_k[1], column)


class Injective(_Rule):
    """Only spatial blocks: inline what can be inlined, the rest in parallel, the innermost loop vectorised
    when it fits one vector or the vector width divides it."""

    def schedule(self, sch: s_tir.Schedule, infos: list, target: tvm.target.Target):
        if not all(info.is_injective() for info in infos):
            return None
        for info in try_inline(sch, infos):
            loops = sch.get_loops(info.block_rv)
            if not loops:
                continue
            _vectorize(sch, loops[-1], _lanes(target, _output_bits(sch, info.block_rv)))
            loops = sch.get_loops(info.block_rv)
            vectorized = sch.get(loops[-1]).kind == tirx.ForKind.VECTORIZED
            if len(loops) > vectorized:
                _parallel_spatial(sch, info.block_rv, len(loops) - vectorized)
        return sch


class Fallback(_Rule):
    """Each block's leading spatial loops in parallel (nothing else changed)."""

    def schedule(self, sch: s_tir.Schedule, infos: list, target: tvm.target.Target):
        for info in try_inline(sch, infos):
            leading = _leading_spatial(info.dom_kind())
            if leading and sch.get_loops(info.block_rv):
                _parallel_spatial(sch, info.block_rv, leading)
        return sch


#: In order of preference: the first that fits a function schedules it.
RULES = (Contraction(), Window(), Reduction(), Injective(), Fallback())


def default_cpu_schedule() -> tvm.transform.Pass:
    """Schedules every not-yet-scheduled PrimFunc of a module for an LLVM target (run after ``FuseTIR``)."""
    return dlight.ApplyDefaultSchedule(*RULES)


def default_schedule(func: tirx.PrimFunc, target: tvm.target.Target) -> s_tir.Schedule:
    """The schedule :func:`default_cpu_schedule` gives ``func``, as a ``Schedule`` whose trace replays it
    (``func`` unchanged where no rule fits)."""
    for rule in RULES:
        sch = rule.apply(func, target, False)
        if sch is not None:
            return sch
    return s_tir.Schedule(func)

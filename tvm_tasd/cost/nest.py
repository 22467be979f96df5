"""Loop-nest traffic of one GEMM through a target's memory hierarchy, and the mapper that tiles it.

For targets whose ``[compute]`` table has an ``array`` (docs/cost_model.md, "Loop-nest
targets").  The model is Timeloop's (Parashar et al., ISPASS 2019) at the scale of one GEMM
``out(m, n) = x(m, k) · W(k, n)`` and a handful of levels:

* Each memory level below the outermost holds a tile ``(m, k, n)`` of the problem (k in
  reduction positions) and runs loops over its child's tiles, in an order; the innermost level's
  child is the MAC array, which does ``array = (m, k values, n)`` MACs per step.
* A level keeps some dataspaces (weight, activation, output); the others pass through it.
  Between two consecutive keepers of a dataspace, the inner one is refilled each time a loop
  above it that indexes the dataspace moves: ``fills = |tile| · Π trips of the loops above it, out
  to the innermost one that indexes it`` (loops inside that one reuse the tile).  Outputs go the
  other way: partial sums written up when a reduction loop above them moves on, read back
  (``writes − m·n``) to continue.
* The array reads its operands from their innermost keepers every step (a weight value per MAC
  column group, the activation once per position and output group — terms of a series share it,
  paper Fig. 11) and sends ``m·n`` partial sums per step to the output keeper.
* The mapper enumerates tiles (powers of two of the child's extent, or the whole dimension,
  within each level's ``max_factors`` and ``capacity_bytes``), the loop orders and the allowed
  bypasses, and keeps the mapping of least energy × cycles; large spaces go through a beam
  search, level by level.  Tens of milliseconds per shape, cached.

What it leaves out: spatial multicast and reduction networks (free, as in the Sparseloop
artifact's runs), halos of conv tiles (the activation tile is its share of the input tensor),
double buffering (a tile must fit the whole capacity), and pipeline fill.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..hardware import DATASPACES, GEMM_DIMS, HardwareTarget

#: The GEMM dimensions each dataspace is indexed by.
INDEXED_BY = {"activation": "mk", "weight": "kn", "output": "mn"}


@dataclass(frozen=True)
class Problem:
    """One GEMM as the nest sees it: extents in positions, and bytes per position per dataspace."""

    m: int
    k: int
    n: int
    steps: int  # array steps over all terms
    weight_bytes: float  # per (k, n) position: values and metadata of every term
    activation_bytes_offchip: float  # per (m, k) position at the outermost level (as the previous layer wrote it)
    activation_bytes_onchip: float  # per (m, k) position on chip (compressed by TASD units when decomposed)
    output_bytes: float
    reuse_ratio: float = 1.0  # stored activation / (m·k): a conv's input tensor is smaller than its im2col view
    weight_metadata_bytes: float = 0.0  # the part of weight_bytes that is metadata
    activation_metadata_bytes: float = 0.0  # the part of activation_bytes_onchip that is metadata
    streamed_k: int | None = None  # positions the array fetches per row: k padded to whole array windows
    compute_cycles: float | None = None  # the array's cycles: steps over each mode's utilization (None: steps)
    output_bytes_offchip: float | None = None  # per (m, n) position at the outermost level (None: output_bytes)

    @property
    def array_cycles(self) -> float:
        return self.steps if self.compute_cycles is None else self.compute_cycles

    def bytes_per_element(self, dataspace: str, outermost: bool, stored: bool = True) -> float:
        """Bytes per position held in a level (``stored``) or streamed into the array."""
        if dataspace == "weight":
            return self.weight_bytes
        if dataspace == "output":
            offchip = outermost and self.output_bytes_offchip is not None
            return self.output_bytes_offchip if offchip else self.output_bytes
        per = self.activation_bytes_offchip if outermost else self.activation_bytes_onchip
        return per * self.reuse_ratio if stored else per

    def array_step_tile(self, array: tuple[int, int, int]) -> tuple[int, int, int]:
        """Positions one array step covers: k values per row spread over the executed density."""
        am, _, an = array
        k_steps = self.steps / (-(-self.m // am) * -(-self.n // an))
        return min(am, self.m), max(1, min(self.k, round(self.k / k_steps))), min(an, self.n)


@dataclass(frozen=True)
class Mapping:
    """Tiles of the levels below the outermost (outermost first), each level's loop order, what each level keeps."""

    tiles: tuple[tuple[int, int, int], ...]
    orders: tuple[str, ...]
    keeps: tuple[frozenset[str], ...]

    def describe(self, hw: HardwareTarget) -> str:
        parts = []
        for level, tile, order, keeps in zip(hw.memory[1:], self.tiles, self.orders[1:], self.keeps[1:]):
            shape = "x".join(str(t) for t in tile)
            parts.append(f"{level.name}[{shape} {'+'.join(sorted(keeps)) or '-'}; {order or '-'}]")
        return f"{hw.memory[0].name}[{self.orders[0] or '-'}] " + " ".join(parts)


@dataclass(frozen=True)
class LevelTraffic:
    reads: float  # bytes
    writes: float


def _traffic(hw: HardwareTarget, prob: Problem, tiles: np.ndarray, orders, keeps) -> tuple[np.ndarray, np.ndarray]:
    """Bytes (reads, writes), shape (candidates, levels), of candidate tile nests ``tiles``
    (candidates × levels below the outermost × 3) under one loop order per level (``orders``)."""
    levels = len(hw.memory)
    chain = _chains(prob, tiles).astype(np.float64)
    loops = [(i, d, np.ceil(chain[:, i, GEMM_DIMS.index(d)] / chain[:, i + 1, GEMM_DIMS.index(d)]))
             for i, order in enumerate(orders[: levels - 1]) for d in order]

    def refills(level: int, dims: str) -> np.ndarray:
        # trips of the loops above ``level``, out to the innermost one indexing ``dims`` that moves
        running, count = np.ones(len(tiles)), np.ones(len(tiles))
        for i, d, trips in loops:
            if i >= level:
                break
            running = running * trips
            if d in dims:
                count = np.where(trips > 1, running, count)
        return count

    reads, writes = np.zeros((len(tiles), levels)), np.zeros((len(tiles), levels))
    am, _, an = hw.array
    for space in DATASPACES:
        keepers = [i for i in range(levels) if space in keeps[i]]
        dims = INDEXED_BY[space]
        per = {i: prob.bytes_per_element(space, i == 0) for i in keepers}
        count = np.full(len(tiles), float(prob.m * prob.n))  # outputs leaving the innermost keeper
        for parent, child in zip(keepers, keepers[1:]):
            size = np.prod([chain[:, child, GEMM_DIMS.index(d)] for d in dims], axis=0)
            count = refills(child, dims) * size
            if space == "output":  # partial sums written up; all but the first arrival read back
                back = np.maximum(count - prob.m * prob.n, 0)
                writes[:, parent] += count * per[parent]
                reads[:, parent] += back * per[parent]
                writes[:, child] += back * per[child]
                reads[:, child] += count * per[child]
            else:
                reads[:, parent] += count * per[parent]
                writes[:, child] += count * per[child]
        inner = keepers[-1]
        streamed = prob.bytes_per_element(space, inner == 0, stored=False)
        if space == "weight":  # the array's k×n values each step, once per m-group of the array
            reads[:, inner] += -(-prob.m // am) * prob.k * prob.n * streamed
        elif space == "activation":  # each position once per n-group; the terms of a series share it
            reads[:, inner] += prob.m * (prob.streamed_k or prob.k) * -(-prob.n // an) * streamed
        else:  # m·n partial sums per step; all but the first of each residency are read to accumulate
            updates = prob.steps * am * an
            writes[:, inner] += updates * streamed
            reads[:, inner] += np.maximum(updates - count, 0) * streamed
    return reads, writes


def _energy_and_cycles(hw: HardwareTarget, reads: np.ndarray, writes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate and level: energy in pJ and cycles."""
    read_e = np.array([lv.energy_pj_per_byte for lv in hw.memory])
    write_e = np.array([lv.write_energy for lv in hw.memory])
    read_bw = np.array([lv.bandwidth_bytes_per_cycle for lv in hw.memory])
    shared = np.array([lv.write_bandwidth_bytes_per_cycle is None for lv in hw.memory])
    write_bw = np.array([lv.write_bandwidth_bytes_per_cycle or 1.0 for lv in hw.memory])
    cycles = np.where(shared, (reads + writes) / read_bw, np.maximum(reads / read_bw, writes / write_bw))
    return reads * read_e + writes * write_e, cycles


def traffic(hw: HardwareTarget, prob: Problem, mapping: Mapping) -> list[LevelTraffic]:
    """Bytes read and written at each level of ``hw.memory`` under ``mapping``."""
    reads, writes = _traffic(hw, prob, np.array([mapping.tiles]), mapping.orders, mapping.keeps)
    return [LevelTraffic(float(r), float(w)) for r, w in zip(reads[0], writes[0])]


def _fits(level, prob: Problem, tile, keeps) -> bool:
    """Whether the tile's data (and metadata, in its own store when the level has one) fits the level."""
    size = {s: math.prod(tile[GEMM_DIMS.index(d)] for d in INDEXED_BY[s]) for s in keeps}
    total = sum(n * prob.bytes_per_element(s, False) for s, n in size.items())
    metadata = (size.get("weight", 0) * prob.weight_metadata_bytes
                + size.get("activation", 0) * prob.activation_metadata_bytes * prob.reuse_ratio)
    if level.metadata_capacity_bytes is None:
        return total <= level.capacity_bytes
    return total - metadata <= level.capacity_bytes and metadata <= level.metadata_capacity_bytes


def _extents(child: int, full: int, bound: int | None) -> list[int]:
    """Tile extents over a child extent: powers-of-two multiples and the whole dimension, within ``bound``."""
    limit = full if bound is None else min(full, child * bound)
    out, e = {min(child, full)}, child
    while e * 2 <= limit:
        e *= 2
        out.add(e)
    if bound is None or -(-full // child) <= bound:
        out.add(full)
    return sorted(out)


def _whole_fits(hw: HardwareTarget, prob: Problem, keeps) -> bool:
    """Whether the level below the outermost (not the innermost) can hold the whole problem.

    Then it does in the best mapping: the outermost level's traffic is the compulsory minimum,
    and any loop the outermost level would run counts the same for the inner levels' refills
    when the level below runs it instead.  Pinning that tile makes a deep hierarchy with a large
    second level (an L2) as cheap to map as one level fewer."""
    full = (prob.m, prob.k, prob.n)
    reach = _reach(hw, 1, prob.array_step_tile(hw.array))
    return (len(hw.memory) > 2 and all(f <= r for f, r in zip(full, reach))
            and _fits(hw.memory[1], prob, full, keeps[1]))


def _tilings(hw: HardwareTarget, prob: Problem, keeps, pinned: bool = False):
    """Every nest of tiles (outermost first, below the outermost level) that fits the capacities;
    ``pinned``: the level below the outermost holds the whole problem."""
    full = (prob.m, prob.k, prob.n)
    array = prob.array_step_tile(hw.array)

    def build(level: int, child: tuple[int, int, int]):
        if level == 0:
            bound = {d: hw.memory[0].max_factor(d) for d in GEMM_DIMS}
            if all(b is None or -(-f // c) <= b for b, f, c in zip(bound.values(), full, child)):
                yield ()
            return
        spec = hw.memory[level]
        options = [_extents(c, f, spec.max_factor(d)) for c, f, d in zip(child, full, GEMM_DIMS)]
        if pinned and level == 1:
            options = [[e for e in extents if e == f] for extents, f in zip(options, full)]
        for tile in itertools.product(*options):
            if _fits(spec, prob, tile, keeps[level]):
                for outer in build(level - 1, tile):
                    yield outer + (tile,)

    yield from build(len(hw.memory) - 1, array)


#: Above this many tile nests (estimated) the mapper narrows the search level by level.
EXHAUSTIVE_LIMIT = 20000
BEAM_WIDTH = 24


def _reach(hw: HardwareTarget, level: int, array) -> list[float]:
    """The largest tile extent per dim a level can have: the array step times the bounds below it."""
    reach = []
    for d, a in zip(GEMM_DIMS, array):
        bounds = [lv.max_factor(d) for lv in hw.memory[level:]]
        reach.append(math.inf if None in bounds else a * math.prod(bounds))
    return reach


def _space_size(hw: HardwareTarget, prob: Problem, pinned: bool) -> int:
    """An upper bound of the tile nests the exhaustive search would enumerate."""
    array = prob.array_step_tile(hw.array)
    size = 1
    for level in range(2 if pinned else 1, len(hw.memory)):
        for f, a, r in zip((prob.m, prob.k, prob.n), array, _reach(hw, level, array)):
            size *= math.ceil(math.log2(max(min(f, r) / a, 1))) + 2
    return size


def _order_combos(chains: np.ndarray) -> list[tuple[str, ...]]:
    """Loop orders of the levels above the last: permutations of the loops that ever run."""
    moves = np.ceil(chains[:, :-1] / chains[:, 1:]).max(axis=0) > 1  # (level, dim)
    per_level = [["".join(p) for p in itertools.permutations(d for d, m in zip(GEMM_DIMS, row) if m)]
                 for row in moves]
    return list(itertools.product(*per_level))


def _chains(prob: Problem, tiles: np.ndarray) -> np.ndarray:
    """Each candidate's tiles with the whole problem on top: (candidates, levels, 3)."""
    return np.concatenate([np.broadcast_to([prob.m, prob.k, prob.n], (len(tiles), 1, 3)), tiles], axis=1)


def _score(hw: HardwareTarget, prob: Problem, tiles: np.ndarray, orders, keeps) -> tuple[np.ndarray, np.ndarray]:
    """(energy × cycles, energy) per candidate, compute cycles included."""
    energy, cycles = _energy_and_cycles(hw, *_traffic(hw, prob, tiles, orders, keeps))
    total = energy.sum(axis=1)
    return total * np.maximum(cycles.max(axis=1), prob.array_cycles), total


def _beam_tilings(hw: HardwareTarget, prob: Problem, keeps, pinned: bool = False, width: int = BEAM_WIDTH):
    """Tile nests chosen level by level from the outermost: each level keeps the ``width`` partial
    nests whose completion (inner levels holding as much of the tile as their bounds allow) has the
    least energy × cycles."""
    full, array, levels = (prob.m, prob.k, prob.n), prob.array_step_tile(hw.array), len(hw.memory)
    partial: list[tuple] = [()]
    for level in range(1, levels):
        spec, outer = hw.memory[level], hw.memory[level - 1]
        innermost, reach = level == levels - 1, _reach(hw, level, array)
        found = []
        for nest in partial:
            parent = nest[-1] if nest else full
            options = []
            for d, p, a, r in zip(GEMM_DIMS, parent, array, reach):
                smaller = set() if pinned and level == 1 else {a * 2 ** j for j in range(64) if a * 2 ** j < p}
                extents = {p} | smaller
                options.append(sorted(
                    e for e in extents if e <= r and (outer.max_factor(d) is None or -(-p // e) <= outer.max_factor(d))))
            found += [nest + (tile,) for tile in itertools.product(*options) if _fits(spec, prob, tile, keeps[level])]
        if not found or innermost:
            return found
        # complete each nest with the largest tiles the inner levels' bounds allow (capacities aside)
        inner_reach = [_reach(hw, j, array) for j in range(level + 1, levels)]
        completed = np.array([nest + tuple(tuple(min(t, r) for t, r in zip(nest[-1], reach)) for reach in inner_reach)
                              for nest in found])
        chains = _chains(prob, completed)
        score = np.full(len(found), np.inf)
        for combo in _order_combos(chains):
            score = np.minimum(score, _score(hw, prob, completed, combo, keeps)[0])
        partial = [found[i] for i in np.argsort(score, kind="stable")[:width]]
    return []


def _keep_choices(hw: HardwareTarget):
    per_level = []
    for level in hw.memory:
        optional = sorted(level.bypass)
        per_level.append([level.keeps - frozenset(drop) for r in range(len(optional) + 1)
                          for drop in itertools.combinations(optional, r)])
    return itertools.product(*per_level)


def evaluate(hw: HardwareTarget, prob: Problem, mapping: Mapping) -> tuple[dict, dict, dict]:
    """(energy pJ, cycles, bytes read + written) per level name under ``mapping``."""
    reads, writes = _traffic(hw, prob, np.array([mapping.tiles]), mapping.orders, mapping.keeps)
    energy, cycles = _energy_and_cycles(hw, reads, writes)
    names = [lv.name for lv in hw.memory]
    return tuple(dict(zip(names, values[0].tolist())) for values in (energy, cycles, reads + writes))


def _moving(order: str, parent, child) -> str:
    """The loops of ``order`` that run more than once."""
    return "".join(d for d in order if -(-parent[GEMM_DIMS.index(d)] // child[GEMM_DIMS.index(d)]) > 1)


@lru_cache(maxsize=4096)
def best_mapping(hw: HardwareTarget, prob: Problem) -> Mapping:
    """The mapping of least energy × cycles (compute cycles included), ties to less energy: over
    every tile nest when there are at most ``EXHAUSTIVE_LIMIT``, else over a beam search's."""
    best, best_key = None, None
    for keeps in _keep_choices(hw):
        pinned = _whole_fits(hw, prob, keeps)
        exhaustive = _space_size(hw, prob, pinned) <= EXHAUSTIVE_LIMIT
        nests = list(_tilings(hw, prob, keeps, pinned) if exhaustive else _beam_tilings(hw, prob, keeps, pinned))
        if not nests:
            continue
        tiles = np.array(nests)
        for combo in _order_combos(_chains(prob, tiles)):
            edp, total = _score(hw, prob, tiles, combo, keeps)
            i = int(np.lexsort((total, edp))[0])
            if best_key is None or (edp[i], total[i]) < best_key:
                best_key = (edp[i], total[i])
                chain = ((prob.m, prob.k, prob.n),) + nests[i]
                best = Mapping(nests[i], tuple(_moving(o, p, c) for o, p, c in zip(combo, chain, chain[1:])) + ("",),
                               keeps)
    if best is None:
        raise ValueError(f"target {hw.name!r}: no tiling of the {prob.m}x{prob.k}x{prob.n} GEMM fits its memory "
                         f"levels' capacities and max_factors ({hw.source_file}); raise a capacity or a factor bound")
    return best

"""Layer and model costs: the terms a layer runs, the bytes it moves, its energy and latency."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import TASDConfig
from ..hardware import Execution, HardwareTarget, MemoryLevel, load_target
from ..layer import Layer
from .nest import Problem, best_mapping, evaluate


def _pad(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class TermRun:
    """One operand term (or a dense operand) and how it runs on the target."""

    operand: str  # "weight" or "activation"
    execution: Execution  # execution.term is None for a dense operand
    reduction: float  # executed reduction length per row: padded K × executed density
    values: float  # stored value slots over all rows and batches
    metadata_bits: float
    dtype_bits: int

    @property
    def stored_bytes(self) -> float:
        return (self.values * self.dtype_bits + self.metadata_bits) / 8

    def __str__(self) -> str:
        return f"{self.operand} {self.execution.term or 'dense'}: {self.execution}"


class _Totals:
    """Comparisons shared by a layer and a model; needs ``energy_pj`` and ``latency_s``."""

    @property
    def edp(self) -> float:
        """Energy-delay product in pJ·s."""
        return self.energy_pj * self.latency_s

    def edp_vs(self, other: "_Totals") -> float:
        """EDP ratio self / other (< 1: self is better)."""
        return self.edp / other.edp

    def energy_vs(self, other: "_Totals") -> float:
        return self.energy_pj / other.energy_pj

    def speedup_vs(self, other: "_Totals") -> float:
        """How many times faster self is than other."""
        return other.latency_s / self.latency_s


@dataclass(frozen=True)
class LayerCost(_Totals):
    """Modelled cost of one layer; ``bytes_moved``, ``cycles_by`` and ``energy_breakdown_pj``
    are keyed by component: ``compute``, each memory level's name, ``metadata`` (energy
    only) and ``tasd_units``."""

    target: str
    m: int
    k: int
    n: int
    batch: int  # independent GEMMs of this shape (conv groups)
    weight: TASDConfig
    activation: TASDConfig
    dtype_bits: int
    clock_ghz: float
    terms: tuple[TermRun, ...]
    dense_macs: int
    executed_macs: float
    bytes_moved: dict[str, float]
    cycles_by: dict[str, float]
    energy_breakdown_pj: dict[str, float]
    name: str | None = None
    note: str = ""
    mapping: str = ""  # loop-nest targets: the tiling the mapper chose (nest.Mapping.describe)

    @property
    def cycles(self) -> float:
        return max(self.cycles_by.values())

    @property
    def bottleneck(self) -> str:
        return max(self.cycles_by, key=self.cycles_by.get)

    @property
    def latency_s(self) -> float:
        return self.cycles / (self.clock_ghz * 1e9)

    @property
    def energy_pj(self) -> float:
        return sum(self.energy_breakdown_pj.values())

    def to_dict(self) -> dict:
        return {
            "name": self.name, "target": self.target, "m": self.m, "k": self.k, "n": self.n,
            "batch": self.batch, "weight": str(self.weight), "activation": str(self.activation),
            "dtype_bits": self.dtype_bits, "terms": [str(t) for t in self.terms],
            "dense_macs": self.dense_macs, "executed_macs": self.executed_macs,
            "bytes_moved": dict(self.bytes_moved), "cycles_by": dict(self.cycles_by),
            "cycles": self.cycles, "bottleneck": self.bottleneck, "latency_s": self.latency_s,
            "energy_breakdown_pj": dict(self.energy_breakdown_pj), "energy_pj": self.energy_pj,
            "edp_pj_s": self.edp, "note": self.note, "mapping": self.mapping,
        }


@dataclass(frozen=True)
class ModelCost(_Totals):
    """A model = its layers run one after another: energy and latency add up,
    EDP = (Σ energy) × (Σ latency)."""

    layers: tuple[LayerCost, ...]

    @property
    def latency_s(self) -> float:
        return sum(layer.latency_s for layer in self.layers)

    @property
    def energy_pj(self) -> float:
        return sum(layer.energy_pj for layer in self.layers)

    @property
    def energy_breakdown_pj(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for layer in self.layers:
            for key, value in layer.energy_breakdown_pj.items():
                total[key] = total.get(key, 0.0) + value
        return total

    @property
    def dense_macs(self) -> int:
        return sum(layer.dense_macs for layer in self.layers)

    @property
    def executed_macs(self) -> float:
        return sum(layer.executed_macs for layer in self.layers)

    def to_dict(self) -> dict:
        return {
            "latency_s": self.latency_s, "energy_pj": self.energy_pj, "edp_pj_s": self.edp,
            "energy_breakdown_pj": self.energy_breakdown_pj, "dense_macs": self.dense_macs,
            "executed_macs": self.executed_macs, "layers": [layer.to_dict() for layer in self.layers],
        }


def _operand_runs(hw: HardwareTarget, config: TASDConfig, operand: str, rows: int,
                  segments: int, seg_len: int, batch: int, dtype_bits: int) -> list[TermRun]:
    """How each term of ``config`` runs, with the value slots and metadata it stores.

    The reduction axis is ``segments`` runs of ``seg_len`` (conv: one run of C_in
    per (kh, kw)); a sparse-run term pads each run to its M, then to the executed
    pattern's group size, and stores ``density`` of those slots.  A term that runs
    at density 1 is the dense operand: no padding.
    """
    k = segments * seg_len
    terms = config.terms or (None,)
    runs = []
    for term in terms:
        ex = hw.runs(term, operand)
        if not ex.faster_than_dense:  # dense, or a pattern keeping every slot: plain dense operand
            reduction = float(k)
        else:
            reduction = segments * _pad(_pad(seg_len, term.m), ex.group_size) * ex.density
        values = batch * rows * reduction
        runs.append(TermRun(operand, ex, reduction, values, values * ex.metadata_bits_per_value, dtype_bits))
    return runs


def _reuse(level: MemoryLevel, m: int, n: int) -> tuple[int, int]:
    """(activation reads, weight reads) through a level: one per output tile along the other axis."""
    if level.tile_m is None:
        return 1, 1
    return math.ceil(n / level.tile_n), math.ceil(m / level.tile_m)


def _config(value, operand: str, seg_len: int, notes: list[str]) -> TASDConfig:
    """Parse an operand's config; it stays dense when it does not fit its grouped axis (docs/semantics.md §1)."""
    try:
        cfg = TASDConfig.dense() if value is None else TASDConfig.parse(value)
    except ValueError as err:
        raise ValueError(f"{operand} config: {err}") from None
    if not cfg.fits(seg_len):
        notes.append(f"{operand} left dense: grouped axis {seg_len} < M = {cfg.max_m} of {cfg}")
        return TASDConfig.dense()
    return cfg


def _fixed_tiles(hw: HardwareTarget, m, n, act_offchip, act_onchip, weight_bytes, out_offchip, out_bytes, cycles):
    """Bytes, cycles and energy per level of a target without an array: operands re-read per fixed
    output tile (docs/cost_model.md "Memory"); metadata reaches the array with every innermost read."""
    bytes_moved = {}
    for i, level in enumerate(hw.memory):
        act_reads, weight_reads = _reuse(level, m, n)
        act, out = (act_offchip, out_offchip) if i == 0 else (act_onchip, out_bytes)
        bytes_moved[level.name] = act * act_reads + weight_bytes * weight_reads + out
    cycles_by = {"compute": cycles}
    cycles_by.update({lv.name: bytes_moved[lv.name] / lv.bandwidth_bytes_per_cycle for lv in hw.memory})
    level_energy = {lv.name: bytes_moved[lv.name] * lv.energy_pj_per_byte for lv in hw.memory}
    return bytes_moved, cycles_by, level_energy, "", _reuse(hw.memory[-1], m, n)


def _loop_nest(hw: HardwareTarget, m, k, n, batch, passes, w_runs, a_runs, bits, act_elements, resident):
    """Bytes, cycles and energy per level of a loop-nest target, under the mapper's tiling (nest.py);
    ``passes``: (reduction length executed, utilization) per pass (:func:`_passes`)."""
    am, ak, an = hw.array
    act_reads, weight_reads = -(-n // an), -(-m // am)  # the array streams each operand once per group
    # (array steps along k, executed density, utilization) per pass
    passes = [(-(-round(length) // ak), length / k, u) for length, u in passes]
    groups = weight_reads * act_reads
    steps = groups * sum(k_steps for k_steps, _, _ in passes)
    per_weight, per_activation = batch * k * n, batch * m * k
    prob = Problem(
        m=m, k=k, n=n, steps=steps, compute_cycles=groups * sum(s / u for s, _, u in passes),
        weight_bytes=sum(r.stored_bytes for r in w_runs) / per_weight,
        activation_bytes_offchip=0.0 if resident.input else bits / 8,
        activation_bytes_onchip=sum(r.stored_bytes for r in a_runs) / per_activation,
        output_bytes=bits / 8, output_bytes_offchip=0.0 if resident.output else bits / 8,
        reuse_ratio=act_elements / (m * k),
        weight_metadata_bytes=sum(r.metadata_bits for r in w_runs) / 8 / per_weight,
        activation_metadata_bytes=sum(r.metadata_bits for r in a_runs) / 8 / per_activation,
        streamed_k=max(k, max(round(k_steps * ak / density) for k_steps, density, _ in passes)))
    best = best_mapping(hw, prob)
    level_energy, level_cycles, level_bytes = ({name: batch * v for name, v in per_level.items()}
                                               for per_level in evaluate(hw, prob, best))
    if resident.output and "output" not in best.keeps[1]:  # it lands in the level below DRAM, not passing through
        landing, out_bytes = hw.memory[1], batch * m * n * bits / 8
        level_bytes[landing.name] += out_bytes
        level_energy[landing.name] += out_bytes * landing.write_energy
        level_cycles[landing.name] += out_bytes / (landing.write_bandwidth_bytes_per_cycle
                                                  or landing.bandwidth_bytes_per_cycle)
    cycles_by = {"compute": batch * prob.compute_cycles, **level_cycles}
    return level_bytes, cycles_by, level_energy, best.describe(hw), (act_reads, weight_reads)


def _passes(hw: HardwareTarget, k: int, w_runs, a_runs) -> list[tuple[float, float]]:
    """(reduction length executed, utilization) of each (weight term, activation term) pass over the unit.

    The reduction shares multiply because each operand skips its own zeros; the utilization is the share
    of the ideal speed-up the pass reaches, the product over its operands' modes ([compute] speedup).
    """
    return [(w.reduction * a.reduction / k, math.prod(hw.utilization(r.execution) for r in (w, a)))
            for w in w_runs for a in a_runs]


@dataclass(frozen=True)
class _Residency:
    """Which of a layer's input and output stay on chip between layers (``HardwareTarget.residency``)."""

    input: bool = False
    output: bool = False

    @classmethod
    def of(cls, hw: HardwareTarget, input_bytes: float, output_bytes: float) -> "_Residency":
        if not hw.residency:
            return cls()
        room = hw.memory[1].capacity_bytes / 2  # the other half holds the layer's working tiles
        return cls(input_bytes <= room, output_bytes <= room)


def _tasd_unit_work(hw: HardwareTarget, config: TASDConfig, elements: float) -> tuple[float, float]:
    """(cycles, energy in pJ) of decomposing ``elements`` activation values into ``config``'s terms:
    per block of M, an N:M term takes N extraction cycles of one unit and N·(M − 1) compares."""
    units = hw.tasd_units
    if config.is_dense or units is None:
        return 0.0, 0.0
    kept_share = sum(t.n / t.m for t in config.terms)
    compares = elements * sum(t.n * (t.m - 1) / t.m for t in config.terms)
    return elements * kept_share / (units.count * units.values_per_cycle), compares * units.compare_energy_pj


def _layer_cost(hw: HardwareTarget, m: int, n: int, segments: int, seg_len: int, batch: int, act_elements: int,
                weight, activation, dtype_bits, name) -> LayerCost:
    k = segments * seg_len
    bits = hw.dtype_bits if dtype_bits is None else _positive_int(dtype_bits, "dtype_bits")
    notes: list[str] = []
    w_cfg = _config(weight, "weight", seg_len, notes)
    a_cfg = _config(activation, "activation", seg_len, notes)

    if not a_cfg.is_dense and "activation" not in hw.sparse_operands:
        raise ValueError(
            f"target {hw.name!r} cannot decompose activations at run time (sparse_operands = "
            f"{sorted(hw.sparse_operands)} in {hw.source_file}); use a ttc-* target or activation=None")
    if not (w_cfg.is_dense or a_cfg.is_dense) and hw.max_sparse_operands < 2:
        raise ValueError(
            f"target {hw.name!r} takes one sparse operand per layer (max_sparse_operands = "
            f"{hw.max_sparse_operands} in {hw.source_file}); make the weight or the activation dense")

    w_runs = _operand_runs(hw, w_cfg, "weight", n, segments, seg_len, batch, bits)
    a_runs = _operand_runs(hw, a_cfg, "activation", m, segments, seg_len, batch, bits)

    passes = _passes(hw, k, w_runs, a_runs)
    executed = batch * m * n * sum(length for length, _ in passes)
    weight_bytes = sum(r.stored_bytes for r in w_runs)
    act_onchip = sum(r.stored_bytes for r in a_runs)  # compressed once the TASD units have seen it
    act_offchip = batch * act_elements * bits / 8  # as the previous layer wrote it: dense
    out_bytes = batch * m * n * bits / 8
    resident = _Residency.of(hw, act_offchip, out_bytes)

    if hw.array is None:
        cycles = batch * m * n * sum(length / u for length, u in passes) / hw.dense_macs_per_cycle
        memory = _fixed_tiles(hw, m, n, 0.0 if resident.input else act_offchip, act_onchip, weight_bytes,
                              0.0 if resident.output else out_bytes, out_bytes, cycles)
    else:
        memory = _loop_nest(hw, m, k, n, batch, passes, w_runs, a_runs, bits, act_elements, resident)
    bytes_moved, cycles_by, level_energy, mapping, (act_reads, weight_reads) = memory
    metadata_bits = (sum(r.metadata_bits for r in w_runs) * weight_reads
                     + sum(r.metadata_bits for r in a_runs) * act_reads)
    tasd_cycles, tasd_energy = _tasd_unit_work(hw, a_cfg, batch * act_elements)
    cycles_by["tasd_units"] = tasd_cycles

    energy = {"compute": executed * hw.mac_energy_pj}  # keys: hardware.NON_MEMORY_COMPONENTS + levels
    energy.update(level_energy)
    energy["metadata"] = metadata_bits * hw.metadata_energy_pj_per_bit
    energy["tasd_units"] = tasd_energy
    notes += [f"{what} stays on chip" for what, kept in (("input", resident.input), ("output", resident.output))
              if kept]

    return LayerCost(
        target=hw.name, m=m, k=k, n=n, batch=batch, weight=w_cfg, activation=a_cfg, dtype_bits=bits,
        clock_ghz=hw.clock_ghz, terms=tuple(w_runs + a_runs), dense_macs=batch * m * k * n,
        executed_macs=executed, bytes_moved=bytes_moved, cycles_by=cycles_by,
        energy_breakdown_pj=energy, name=name, note="; ".join(notes), mapping=mapping,
    )


def gemm_cost(target: "str | HardwareTarget", m: int, k: int, n: int, weight="dense", activation=None,
              dtype_bits: int | None = None, *, batch: int = 1, name: str | None = None) -> LayerCost:
    """Cost of ``out(m, n) = x(m, k) · W(k, n)`` with W as ``weight`` (a TASD config
    such as ``"2:8+1:8"``) and x as ``activation`` (None: dense; a config: decomposed
    at run time by TASD units).  ``batch`` independent GEMMs of this shape;
    ``dtype_bits`` defaults to the target's datatype."""
    m, k, n = (_positive_int(v, what) for v, what in ((m, "m"), (k, "k"), (n, "n")))
    batch = _positive_int(batch, "batch")
    return _layer_cost(load_target(target), m, n, 1, k, batch, m * k, weight, activation, dtype_bits, name)


def _pair(value, what: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2:
        raise ValueError(f"{what} must be an int or a pair, got {value!r}")
    return pair


def conv2d_cost(target: "str | HardwareTarget", data_shape, weight_shape, strides=1, padding=0,
                dilation=1, groups: int = 1, weight="dense", activation=None,
                dtype_bits: int | None = None, *, name: str | None = None) -> LayerCost:
    """Cost of an NCHW × OIHW conv2d through its implicit GEMM: m = N·OH·OW,
    k = C_in/groups·KH·KW, n = C_out/groups, one GEMM per group.  N:M groups
    run along the input channels, separately for each (kh, kw) (docs/semantics.md §1).
    ``padding``: int, (h, w) or (top, left, bottom, right), as Relax writes it."""
    (images, c, h, w), (o, i, kh, kw) = data_shape, weight_shape
    for value, what in ((images, "batch"), (c, "C_in"), (h, "H"), (w, "W"), (o, "C_out"), (i, "I"),
                        (kh, "KH"), (kw, "KW"), (groups, "groups")):
        _positive_int(value, what)
    if c != i * groups or o % groups:
        raise ValueError(f"conv2d shapes disagree: data C_in = {c}, weight {tuple(weight_shape)} with "
                         f"groups = {groups} needs C_in = I·groups and C_out divisible by groups")
    (sh, sw), (dh, dw) = _pair(strides, "strides"), _pair(dilation, "dilation")
    pads = (padding,) * 4 if isinstance(padding, int) else tuple(padding)
    pads = pads * 2 if len(pads) == 2 else pads
    if len(pads) != 4:
        raise ValueError(f"padding must be an int, (h, w) or (top, left, bottom, right), got {padding!r}")
    oh = (h + pads[0] + pads[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pads[1] + pads[3] - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"conv2d output would be {oh}x{ow}: kernel {kh}x{kw} does not fit the padded input")
    return _layer_cost(load_target(target), images * oh * ow, o // groups, kh * kw, i, groups, images * i * h * w,
                       weight, activation, dtype_bits, name)


def layer_cost(target: "str | HardwareTarget", layer: Layer, weight="dense", activation=None) -> LayerCost:
    """Modelled cost of one :class:`~tvm_tasd.layer.Layer` with the given weight/activation series."""
    if layer.op == "conv2d":
        return conv2d_cost(
            target, layer.activation_shape, layer.weight.shape, layer.conv["strides"], layer.conv["padding"],
            layer.conv["dilation"], layer.conv.get("groups", 1), weight=weight, activation=activation, name=layer.name,
        )
    return gemm_cost(target, layer.m, layer.k, layer.n, weight=weight, activation=activation, name=layer.name)


def model_cost(target: "str | HardwareTarget", layers, series: dict | None = None) -> ModelCost:
    """Modelled cost of ``layers`` run one after another; ``series`` maps a layer's name to its (weight,
    activation) series (a :meth:`~tvm_tasd.plan.Plan.series`), layers it does not name run dense."""
    hw = load_target(target)
    return ModelCost(tuple(layer_cost(hw, layer, *(series or {}).get(layer.name, ("dense", None))) for layer in layers))

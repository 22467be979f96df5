"""N:M hardware targets: the ``hardware_targets/*.toml`` files, loaded and checked.

A target file describes one piece of hardware: the N:M patterns
its unit runs, which operand may be sparse, dense MACs per cycle and clock,
its memory levels (outermost first), MAC / metadata / TASD-unit energies,
and the TVM target it compiles for.  Every number in a bundled file carries
a ``# source:`` or ``# assumption:`` comment.  :func:`load_target` takes a
bundled name (``"vegeta-m8"``) or the path of a user's own file with the
same layout; :func:`list_targets` names the bundled ones. A target's
``digest`` hashes what its file says, so plans, reports and artifacts can
tell a copied file that keeps a bundled name but changes its numbers from
the bundled one.

**How a term runs** (``docs/semantics.md`` §5, :meth:`HardwareTarget.runs`).
Among the supported patterns that can carry a term
(:func:`tvm_tasd.config.pattern_fits`, hierarchical ones included), the one
of lowest density wins (ties: native first, then fewer metadata bits, then
smaller M); if none fits, the term runs dense. A mode's modelled speed-up
over dense (:meth:`HardwareTarget.speedup`) is its measured ``[compute]
speedup`` where the file gives one, else ``sparse_utilization`` (1 unless the
file says less: software kernels pay for their gathers) times the ideal 1/ρ;
a term runs faster than dense only where that exceeds 1.

**TVM targets** (:meth:`HardwareTarget.tvm_target`).  The ``[tvm]`` table
gives the TVM target kind and extra attributes, custom ``keys`` and the
kernel ``intrinsic`` family.  ``stc-2of4`` compiles for
``{"kind": "cuda", "arch": "sm_80"}`` (``mma.sp``).  Every other bundled
target, including the modelled ones with no silicon here (dense tensor core,
VEGETA, HighLight, TTC), compiles for the host CPU, ``{"kind": "llvm"}``,
with the emulated N:M kernels; their extra keys (``"tasd"``, the target name)
let passes and schedules tell them apart, so a model built for
``vegeta-m8`` runs on the host CPU while its cost comes from the model.
The kind's default keys (``cpu``; ``cuda``, ``gpu``) are appended so TVM's
own schedules still dispatch.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .config import HierarchicalPattern, NMPattern, SupportedPattern, pattern_fits, pattern_shape

OPERANDS = ("weight", "activation")
#: What a memory level may hold (loop-nest targets, tvm_tasd.cost.nest): both operands and the output.
DATASPACES = ("weight", "activation", "output")
GEMM_DIMS = ("m", "k", "n")
#: Cost components that are not memory levels (tvm_tasd.cost); a level may not take these names.
NON_MEMORY_COMPONENTS = ("compute", "metadata", "tasd_units")
_PACKAGE = "tvm_tasd.hardware_targets"


@dataclass(frozen=True)
class Execution:
    """How one operand (a term, or a dense operand when ``term`` is None) runs on a unit."""

    term: NMPattern | None
    pattern: SupportedPattern | None  # None: runs dense

    @property
    def mode(self) -> str:
        if self.pattern is None:
            return "dense"
        return "native" if self.pattern == self.term else "compatible"

    @property
    def density(self) -> float:
        """Share of the dense MACs (and of the operand's value slots) it executes."""
        return 1.0 if self.pattern is None else pattern_shape(self.pattern)[0]

    @property
    def group_size(self) -> int:
        return 1 if self.pattern is None else pattern_shape(self.pattern)[1]

    @property
    def metadata_bits_per_value(self) -> float:
        return 0.0 if self.pattern is None else pattern_shape(self.pattern)[2]

    @property
    def faster_than_dense(self) -> bool:
        return self.density < 1.0

    def __str__(self) -> str:
        return {"dense": "dense", "native": f"native {self.pattern}", "compatible": f"on {self.pattern}"}[self.mode]


@dataclass(frozen=True)
class MemoryLevel:
    """One memory level.  ``tile_m``/``tile_n``: the output tile it serves (operand re-reads);
    None means each operand passes through it once (see docs/cost_model.md).

    Loop-nest targets (an ``array`` in ``[compute]``, docs/cost_model.md) also say which
    dataspaces the level ``keeps`` (and of those, which the mapper may ``bypass``), the
    largest loop ``max_factors`` the level may run over its child's tiles, separate write
    energy and write bandwidth (None: as read; a shared port for bandwidth)."""

    name: str
    capacity_bytes: int
    bandwidth_bytes_per_cycle: float
    energy_pj_per_byte: float
    tile_m: int | None = None
    tile_n: int | None = None
    write_energy_pj_per_byte: float | None = None
    write_bandwidth_bytes_per_cycle: float | None = None
    keeps: frozenset[str] = frozenset(DATASPACES)
    bypass: frozenset[str] = frozenset()
    max_factors: tuple[tuple[str, int], ...] = ()
    metadata_capacity_bytes: int | None = None  # a separate metadata store; None: metadata shares capacity_bytes

    @property
    def write_energy(self) -> float:
        return self.energy_pj_per_byte if self.write_energy_pj_per_byte is None else self.write_energy_pj_per_byte

    def max_factor(self, dim: str) -> int | None:
        return dict(self.max_factors).get(dim)


@dataclass(frozen=True)
class TASDUnits:
    """Run-time decomposition units for activations (TASD paper, TTC).

    A unit takes one block of M activation values and extracts a term's kept values one
    per cycle, each the largest remaining magnitude found by a comparator tree over the
    block (M − 1 compares): an N:M term costs N cycles and N·(M − 1) compares per block,
    a block up to M cycles (docs/cost_model.md, "TASD units")."""

    count: int
    values_per_cycle: float  # kept values one unit extracts per cycle
    compare_energy_pj: float  # one comparator of the tree, once
    area_overhead: float  # share of the base unit's area, informational


@dataclass(frozen=True)
class TVMSpec:
    kind: str
    keys: tuple[str, ...]
    intrinsic: str
    attrs: tuple[tuple[str, object], ...] = ()  # extra Target attributes (arch, mattr, …)


@dataclass(frozen=True)
class HardwareTarget:
    """One N:M hardware description; build it with :func:`load_target`."""

    name: str
    description: str
    patterns: tuple[SupportedPattern, ...]
    sparse_operands: frozenset[str]
    max_sparse_operands: int
    dense_macs_per_cycle: float
    clock_ghz: float
    dtype_bits: int
    mac_energy_pj: float
    metadata_energy_pj_per_bit: float
    memory: tuple[MemoryLevel, ...]  # outermost (DRAM) first
    tasd_units: TASDUnits | None
    tvm: TVMSpec
    source_file: str
    digest: str  # of the file's content as parsed: two files that say the same things share it
    array: tuple[int, int, int] | None = None  # MACs per step (m, k values, n): a loop-nest target
    speedups: tuple[tuple[SupportedPattern, float], ...] = ()  # measured speed-up of a mode over dense
    sparse_utilization: float = 1.0  # share of the ideal 1/ρ a sparse mode without a measured speed-up reaches
    # Not from the file: a what-if switch (dataclasses.replace(hw, residency=True)); a layer's input and output
    # that fit in half of the first on-chip level stay there between layers instead of going through DRAM.
    residency: bool = False

    def utilization(self, execution: Execution) -> float:
        """Share of the ideal 1/ρ speed-up a mode reaches: [compute] speedup × ρ where measured, else the
        file's ``sparse_utilization`` (1 for the dense mode)."""
        if execution.pattern is None:
            return 1.0
        measured = dict(self.speedups).get(execution.pattern)
        return self.sparse_utilization if measured is None else measured * execution.density

    def speedup(self, execution: Execution) -> float:
        """Modelled speed-up of a mode over the unit's dense mode (module docstring)."""
        return self.utilization(execution) / execution.density

    def runs(self, term: NMPattern | str | None, operand: str = "weight") -> Execution:
        """How ``term`` of ``operand`` runs here (module docstring); None = dense operand."""
        if operand not in OPERANDS:
            raise ValueError(f"unknown operand {operand!r}; choose one of {list(OPERANDS)}")
        if term is None:
            return Execution(None, None)
        term = NMPattern.parse(term) if isinstance(term, str) else term
        if operand not in self.sparse_operands:
            return Execution(term, None)
        fitting = [p for p in self.patterns if pattern_fits(p, term)]
        if not fitting:
            return Execution(term, None)

        def rank(p):
            density, size, bits = pattern_shape(p)
            return (density, p != term, bits, size)

        return Execution(term, min(fitting, key=rank))

    def accelerates(self, term: NMPattern | str, operand: str = "weight") -> bool:
        """True when the term runs faster than dense here (:meth:`speedup` > 1)."""
        return self.speedup(self.runs(term, operand)) > 1.0

    def tvm_target(self):
        """The ``tvm.target.Target`` this hardware compiles for (module docstring)."""
        import tvm  # deferred: loading and costing targets must not pay TVM's import

        kind = {"kind": self.tvm.kind, **dict(self.tvm.attrs)}
        try:
            defaults = tvm.target.Target(kind).keys
            keys = list(self.tvm.keys) + [k for k in defaults if k not in self.tvm.keys]
            return tvm.target.Target({**kind, "keys": keys})
        except Exception as err:  # TVM reports unknown kinds/attributes as ValueError or TVMError
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"{self.source_file}: [tvm] table is not a valid TVM target: {first}") from err

    def __str__(self) -> str:
        return self.name


# ---------------------------------------------------------------- loading


# Keys each table may hold; None: open (memory level names, TVM Target attributes).
_SCHEMA = {
    "": {"name", "description", "compute", "metadata", "memory", "tasd_units", "tvm"},
    "compute": {"dense_macs_per_cycle", "clock_ghz", "dtype_bits", "mac_energy_pj", "patterns",
                "any_pattern_max_m", "sparse_operands", "max_sparse_operands", "array", "speedup",
                "sparse_utilization"},
    "compute.array": set(GEMM_DIMS),
    "compute.speedup": None,
    "metadata": {"energy_pj_per_bit"},
    "memory": None,
    "memory.*": {"capacity_bytes", "bandwidth_bytes_per_cycle", "energy_pj_per_byte", "tile_m", "tile_n",
                 "write_energy_pj_per_byte", "write_bandwidth_bytes_per_cycle", "keeps", "bypass", "max_factors", "metadata_capacity_bytes"},
    "memory.*.max_factors": set(GEMM_DIMS),
    "tasd_units": {"count", "values_per_cycle", "compare_energy_pj", "area_overhead"},
    "tvm": None,
}
_TVM_FIELDS = ("kind", "keys", "intrinsic")
TVM_KINDS = ("llvm", "cuda")  # the TVM target kinds schedules/ has kernels for


class _Table:
    """A TOML table with its location, for one-line errors that name file, key and fix."""

    def __init__(self, data: dict, file: str, table: str, schema: str):
        self.data, self.file, self.table = data, file, table
        known = _SCHEMA[schema]
        for key in [] if known is None else sorted(set(data) - known):
            near = difflib.get_close_matches(key, sorted(known), n=1)
            raise self.fail(key, "is not a known key",
                            f"did you mean {near[0]!r}?" if near else f"known keys here: {', '.join(sorted(known))}")

    def fail(self, key: str, problem: str, fix: str) -> ValueError:
        where = " ".join(x for x in (self.table and f"[{self.table}]", key) if x)
        return ValueError(f"{self.file}: {where} {problem}; {fix}")

    def get(self, key: str, required: bool = True, example: str = "…"):
        if key not in self.data and required:
            raise self.fail(key, "is missing", f"add `{key} = {example}` with a `# source:` comment")
        return self.data.get(key)

    def number(self, key: str, *, integer: bool = False, strict: bool = True, required: bool = True,
               example: str = "1"):
        """A number > 0 (``strict``) or >= 0."""
        value = self.get(key, required, example)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            raise self.fail(key, f"must be {'an integer' if integer else 'a number'}, got {value!r}",
                            f"write e.g. `{key} = {example}`")
        if not math.isfinite(value):
            raise self.fail(key, f"must be a finite number, got {value!r}", f"write e.g. `{key} = {example}`")
        if value < 0 or (strict and value == 0):
            bound = "> 0" if strict else ">= 0"
            raise self.fail(key, f"must be {bound}, got {value!r}", f"give a {bound} value")
        return value

    def string(self, key: str, example: str = '"…"') -> str:
        value = self.get(key, True, example)
        if not (isinstance(value, str) and value.strip()):
            raise self.fail(key, f"must be a non-empty string, got {value!r}", f"write e.g. `{key} = {example}`")
        return value

    def strings(self, key: str, example: str) -> list[str]:
        value = self.get(key, True, example)
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise self.fail(key, f"must be a list of strings, got {value!r}", f"write e.g. `{key} = {example}`")
        return value

    def sub(self, key: str, schema: str | None = None, required: bool = True) -> "_Table | None":
        value = self.get(key, required, "{…}")
        if value is None:
            return None
        path = f"{self.table}.{key}" if self.table else key
        if not isinstance(value, dict):
            raise self.fail(key, "must be a table", f"write it as a [{path}] table")
        return _Table(value, self.file, path, key if schema is None else schema)


def _parse_pattern(text: str, table: _Table, key: str = "patterns") -> SupportedPattern:
    try:
        return HierarchicalPattern.parse(text) if ">" in text else NMPattern.parse(text)
    except ValueError:
        raise table.fail(key, f"has unknown pattern string {text!r}",
                         'write "N:M" (e.g. "2:4") or a hierarchical "U:Mu>L:Ml" (e.g. "2:4>2:4")') from None


def _read_compute(t: _Table) -> dict:
    patterns = tuple(dict.fromkeys(_parse_pattern(p, t) for p in t.strings("patterns", '["2:4"]')))
    any_max_m = t.number("any_pattern_max_m", integer=True, required=False, example="16")
    if any_max_m is not None:  # software units: every N:M with N < M <= max
        patterns += tuple(NMPattern(n, m) for m in range(2, any_max_m + 1) for n in range(1, m)
                          if NMPattern(n, m) not in patterns)
    operands = t.strings("sparse_operands", '["weight"]')
    for op in operands:
        if op not in OPERANDS:
            raise t.fail("sparse_operands", f"has unknown operand {op!r}", f"use a subset of {list(OPERANDS)}")
    if bool(patterns) != bool(operands):
        raise t.fail("sparse_operands", f"is {operands} while patterns is {[str(p) for p in patterns]}",
                     "a sparse unit needs both; a dense unit leaves both empty")
    max_sparse = t.number("max_sparse_operands", integer=True, required=False, example="1")
    array_t = t.sub("array", "compute.array", required=False)
    array = None if array_t is None else tuple(array_t.number(d, integer=True, example="16") for d in GEMM_DIMS)
    utilization = t.number("sparse_utilization", required=False, example="0.6")
    if utilization is not None and utilization > 1:
        raise t.fail("sparse_utilization", f"is {utilization}, above 1 (the ideal 1/density speed-up)",
                     "give the share of the ideal speed-up the unit's sparse modes reach, in (0, 1]")
    return dict(
        array=array,
        speedups=_read_speedups(t.sub("speedup", "compute.speedup", required=False), patterns),
        sparse_utilization=1.0 if utilization is None else float(utilization),
        patterns=patterns,
        sparse_operands=frozenset(operands),
        max_sparse_operands=1 if max_sparse is None else max_sparse,
        dense_macs_per_cycle=t.number("dense_macs_per_cycle", example="1024"),
        clock_ghz=t.number("clock_ghz", example="1.41"),
        dtype_bits=t.number("dtype_bits", integer=True, example="16"),
        mac_energy_pj=t.number("mac_energy_pj", example="2.0"),
    )


def _read_speedups(t: _Table | None, patterns) -> tuple[tuple[SupportedPattern, float], ...]:
    """``speedup = { "2:4" = 2.02 }``: a listed pattern's measured speed-up over the unit's dense mode,
    at most the ideal 1/ρ."""
    if t is None:
        return ()
    out = []
    for text in t.data:
        pattern = _parse_pattern(text, t, f'"{text}"')
        if pattern not in patterns:
            raise t.fail(f'"{text}"', "is not one of [compute] patterns", "calibrate only patterns the unit runs")
        ideal = 1 / pattern_shape(pattern)[0]
        value = t.number(text, example="2.02")
        if not 1 <= value <= ideal + 1e-9:
            raise t.fail(f'"{text}"', f"is {value}, outside [1, {ideal:g}] (dense to the ideal 1/density)",
                         "give the mode's measured speed-up over the unit's own dense mode")
        out.append((pattern, float(value)))
    return tuple(out)


def _read_memory(t: _Table, loop_nest: bool) -> tuple[MemoryLevel, ...]:
    """The levels, outermost first; ``loop_nest``: the target has an array (its mapper chooses the tiles)."""
    levels = []
    for name in t.data:  # TOML keeps the file's order: outermost first
        if name in NON_MEMORY_COMPONENTS:
            raise t.fail(name, "is a reserved cost component name", "call the level e.g. 'dram' or 'global_buffer'")
        level = t.sub(name, "memory.*")
        for key in () if loop_nest else [k for k in _NEST_KEYS if k in level.data]:
            raise level.fail(key, "needs a loop-nest target",
                             "add `array = { m = …, k = …, n = … }` to [compute] (docs/cost_model.md)")
        if loop_nest and "tile_m" in level.data:
            raise level.fail("tile_m", "is for targets without [compute] array",
                             "drop tile_m/tile_n: the mapper of a loop-nest target chooses the tiles")
        tile_m, tile_n = (level.number(k, integer=True, required=False, example="128") for k in ("tile_m", "tile_n"))
        if (tile_m is None) != (tile_n is None):
            raise level.fail("tile_m", "and tile_n must be given together", "give both or neither")
        keeps = _dataspaces(level, "keeps", DATASPACES)
        bypass = _dataspaces(level, "bypass", ())
        if not bypass <= keeps:
            raise level.fail("bypass", f"names {sorted(bypass - keeps)}, which the level does not keep",
                             "list only dataspaces from `keeps`")
        factors_t = level.sub("max_factors", "memory.*.max_factors", required=False)
        factors = () if factors_t is None else tuple(
            (d, factors_t.number(d, integer=True, example="8")) for d in GEMM_DIMS if d in factors_t.data)
        levels.append(MemoryLevel(
            name=name,
            capacity_bytes=level.number("capacity_bytes", integer=True, example="196608"),
            bandwidth_bytes_per_cycle=level.number("bandwidth_bytes_per_cycle", example="128"),
            energy_pj_per_byte=level.number("energy_pj_per_byte", example="6.1"),
            tile_m=tile_m,
            tile_n=tile_n,
            write_energy_pj_per_byte=level.number("write_energy_pj_per_byte", required=False, example="6.1"),
            write_bandwidth_bytes_per_cycle=level.number("write_bandwidth_bytes_per_cycle", required=False,
                                                         example="42"),
            keeps=keeps,
            bypass=bypass,
            max_factors=factors,
            metadata_capacity_bytes=level.number("metadata_capacity_bytes", integer=True, required=False,
                                                 example="65536"),
        ))
    if len(levels) < 2:
        raise t.fail("", f"has {len(levels)} level(s)",
                     "describe at least DRAM and an on-chip global buffer, outermost first")
    return tuple(levels)


def _dataspaces(t: _Table, key: str, default) -> frozenset[str]:
    if key not in t.data:
        return frozenset(default)
    names = t.strings(key, '["weight", "activation"]')
    for name in names:
        if name not in DATASPACES:
            raise t.fail(key, f"has unknown dataspace {name!r}", f"use a subset of {list(DATASPACES)}")
    return frozenset(names)


_NEST_KEYS = ("keeps", "bypass", "max_factors", "write_energy_pj_per_byte", "write_bandwidth_bytes_per_cycle",
              "metadata_capacity_bytes")


def _check_nest(memory_t: _Table, compute: dict, levels: tuple[MemoryLevel, ...]) -> None:
    """A loop-nest target's array matches its MAC rate, and its outermost level keeps everything."""
    if compute["array"] is None:
        return
    if math.prod(compute["array"]) != compute["dense_macs_per_cycle"]:
        raise memory_t.fail("", f"has an array {dict(zip(GEMM_DIMS, compute['array']))} of "
                            f"{math.prod(compute['array'])} MACs per step but dense_macs_per_cycle = "
                            f"{compute['dense_macs_per_cycle']}", "make m·k·n of [compute] array equal it")
    if levels[0].keeps != frozenset(DATASPACES) or levels[0].bypass:
        raise memory_t.sub(levels[0].name, "memory.*").fail(
            "keeps", "of the outermost level must be every dataspace", "drop keeps/bypass from the outermost level")


def _read_tasd_units(t: _Table | None) -> TASDUnits | None:
    if t is None:
        return None
    return TASDUnits(
        count=t.number("count", integer=True, example="16"),
        values_per_cycle=t.number("values_per_cycle", example="1"),
        compare_energy_pj=t.number("compare_energy_pj", example="0.4"),
        area_overhead=t.number("area_overhead", strict=False, example="0.02"),
    )


def _read_tvm(t: _Table) -> TVMSpec:
    # Keys other than kind/keys/intrinsic are TVM Target attributes; tvm_target() checks them.
    attrs = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in t.data.items() if k not in _TVM_FIELDS)
    kind = t.string("kind", '"llvm"')
    if kind not in TVM_KINDS:
        raise t.fail("kind", f"is {kind!r}", f"tvm_tasd has kernels for {' and '.join(TVM_KINDS)}")
    return TVMSpec(kind=kind, keys=tuple(t.strings("keys", '["tasd", "vegeta-m8"]')),
                   intrinsic=t.string("intrinsic", '"nm_emulated"'), attrs=attrs)


def _parse(data: dict, file: str) -> HardwareTarget:
    root = _Table(data, file, "", "")
    compute_t = root.sub("compute")
    compute = _read_compute(compute_t)
    units = _read_tasd_units(root.sub("tasd_units", required=False))
    if "activation" in compute["sparse_operands"] and units is None:
        raise compute_t.fail("sparse_operands", "lists 'activation' but the file has no [tasd_units] table",
                             "add [tasd_units] (count, values_per_cycle, compare_energy_pj, area_overhead)")
    memory_t = root.sub("memory")
    memory = _read_memory(memory_t, loop_nest=compute["array"] is not None)
    _check_nest(memory_t, compute, memory)
    return HardwareTarget(
        name=root.string("name", '"my-unit"'),
        description=root.string("description", '"what the unit is"').strip(),
        metadata_energy_pj_per_bit=root.sub("metadata").number("energy_pj_per_bit", strict=False, example="0.03"),
        memory=memory,
        tasd_units=units,
        tvm=_read_tvm(root.sub("tvm")),
        source_file=file,
        digest=hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16],
        **compute,
    )


def _load_text(text: str, file: str) -> HardwareTarget:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{file}: not valid TOML ({err}); fix the syntax at that line") from None
    return _parse(data, file)


def list_targets() -> list[str]:
    """Names of the bundled target files."""
    files = resources.files(_PACKAGE).iterdir()
    return sorted(f.name[: -len(".toml")] for f in files if f.name.endswith(".toml"))


@lru_cache(maxsize=None)
def _bundled(name: str) -> HardwareTarget:
    res = resources.files(_PACKAGE) / f"{name}.toml"
    return _load_text(res.read_text(encoding="utf-8"), str(res))


def load_target(target: "str | os.PathLike | HardwareTarget") -> HardwareTarget:
    """A bundled target by name (``"vegeta-m8"``), or a user's TOML file by path."""
    if isinstance(target, HardwareTarget):
        return target
    if not isinstance(target, (str, os.PathLike)):
        raise ValueError(f"a hardware target is a bundled name ({', '.join(list_targets())}) or the path of a .toml "
                         f"file, got {type(target).__name__} {target!r}")
    if isinstance(target, str) and target in list_targets():
        return _bundled(target)
    path = Path(target)
    if path.is_file():
        return _load_text(path.read_text(encoding="utf-8"), str(path))
    if path.suffix == ".toml" or os.sep in str(target):
        raise ValueError(f"hardware target file {str(target)!r} does not exist; check the path")
    raise ValueError(f"unknown hardware target {str(target)!r}; bundled targets: {', '.join(list_targets())} "
                     "(or give the path of a .toml file)")

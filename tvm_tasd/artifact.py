"""Compiled models on disk: ``tvmc compile``'s one-file artifact, written, read and run.

:func:`compile_model` imports a model (ONNX, or a PyTorch ``.pt2`` program),
builds it with :func:`tvm_tasd.build` — rewritten by TASD, or dense through
the same scheduled dense kernels so the two builds compare fairly — and
writes one ``.tar``, atomically:

``mod.so``         the compiled Relax VM library (``export_library``)
``metadata.json``  inputs/outputs (name, shape, dtype), TVM target, hardware,
                   pass, config or plan, versions
``plan.json``      the plan the build applied, if any
``report.json``    the per-layer report (:mod:`tvm_tasd.report`)

:func:`read_artifact` and :func:`run_artifact` open and run one on the host
CPU; :func:`load_report` turns an artifact, a saved report or a plan (with
its model) into a :class:`~tvm_tasd.report.Report`. Only CPU (``llvm``)
artifacts are built: modelled hardware runs emulated on the host, its cost
comes from the model. Every mistake is a ``ValueError`` with one line that
says what to do.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tvm
from tvm import relax
from tvm.target import codegen

from . import __version__
from .config import TASDConfig
from .frontend import ImportedModel, import_model, model_format
from .hardware import HardwareTarget, list_targets, load_target
from .io import atomic_output, check_not_inputs, parse_json, private_tempdir
from .matcher import find_layers
from .pipeline import HOST, build, target_spec, warn_if_generic_cpu
from .plan import Plan
from .report import Report, plan_source
from .schedules.llvm_common import host_target
from .tuning import Tuning

ARTIFACT_FORMAT = "tvm_tasd.tvmc/1"
LIBRARY, METADATA, PLAN, REPORT = "mod.so", "metadata.json", "plan.json", "report.json"
REPORT_SUFFIXES = (".html", ".json", ".txt")
_CPU_ONLY = ("{what} compiles for {kind}, but this tvmc builds CPU (llvm) artifacts only, the ones `tvmc run` "
             "runs here (GPU kernels are separate work); emulate the hardware on the CPU: --target host --tasd-hw {hw}")


# ------------------------------------------------------------------ targets and reports


def compile_target(text: str) -> tuple[tvm.target.Target, HardwareTarget | None]:
    """The TVM target an artifact is built for, from ``host`` (this machine's CPU), ``llvm``, an old-style flag
    string (``"llvm -mcpu=znver3"``), a JSON dict, or a hardware target name (whose hardware it also returns)."""
    text = text.strip()
    if text == HOST:
        return host_target(), None
    if text in list_targets() or text.endswith(".toml"):
        hardware = load_target(text)
        if hardware.tvm.kind != "llvm":
            raise ValueError(_CPU_ONLY.format(what=f"hardware target {hardware.name}", kind=hardware.tvm.kind,
                                              hw=hardware.name))
        return hardware.tvm_target(), hardware
    if text.startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"--target {text!r} is not valid JSON: {err}") from None
    else:
        try:
            spec = target_spec(text)
        except ValueError as err:
            raise ValueError(f"--target: {err}") from None
    kind = spec.get("kind")
    if kind not in tvm.target.Target.list_kinds():
        raise ValueError(f"unknown target {text!r}: give {HOST}, llvm, \"llvm -mcpu=…\", or a hardware target "
                         f"({', '.join(list_targets())}; see tasd targets)")
    if kind != "llvm":
        raise ValueError(_CPU_ONLY.format(what=f"--target {text!r}", kind=kind, hw="stc-2of4"))
    try:
        target = tvm.target.Target(spec)
    except ValueError as err:
        raise ValueError(f"invalid --target {text!r}: {str(err).strip().splitlines()[0]}") from None
    _check_host_target(target, text)
    warn_if_generic_cpu(target, stacklevel=3)
    return target, None


def _check_host_target(target: tvm.target.Target, text: str) -> None:
    """An artifact runs on this machine: its triple's architecture must be the host's, its -mcpu one LLVM knows."""
    host = codegen.llvm_get_system_triple()
    triple = str(target.attrs.get("mtriple", host))
    if triple.split("-")[0] != host.split("-")[0]:
        raise ValueError(f"--target {text!r} builds for {triple.split('-')[0] or triple!r}; tvmc builds artifacts "
                         f"that tvmc run runs on this {host.split('-')[0]} machine")
    cpu = target.attrs.get("mcpu")
    if cpu is not None and not codegen.llvm_is_valid_cpu(str(cpu), triple):
        raise ValueError(f"LLVM does not know -mcpu={cpu} for {triple}; this machine is "
                         f"-mcpu={codegen.llvm_get_system_cpu()}")


def check_report_paths(paths) -> None:
    """Fail before any work when a report path's suffix names no format."""
    for path in paths:
        if Path(path).suffix not in REPORT_SUFFIXES:
            raise ValueError(f"report file {path}: the suffix picks the format, one of {', '.join(REPORT_SUFFIXES)}")


def render_report(report: Report, path) -> str:
    """``report`` in the format the suffix of ``path`` names (see :func:`check_report_paths`)."""
    suffix = Path(path).suffix
    if suffix == ".html":
        return report.html()
    if suffix == ".json":
        return json.dumps(report.to_json(), indent=1, sort_keys=True, allow_nan=False) + "\n"
    return report.text() + "\n"


# ------------------------------------------------------------------ compile


def compile_model(model, output, target=HOST, input_shapes: dict | None = None, *, tasd: bool = False,
                  hw=None, config=None, plan=None, error_threshold: float | None = None, activation=None,
                  report=None, fmt: str | None = None, tuning: Tuning | None = None, nm_kernels: str | None = None) -> Report:
    """``tvmc compile``: import, optionally rewrite with TASD, build, write the artifact; the report.

    ``tasd=True`` takes exactly one of ``config`` (one series for every
    layer), ``plan`` (a plan file or :class:`~tvm_tasd.plan.Plan`) and
    ``error_threshold`` (per layer by weight error; quality unchecked).
    ``activation``: one run-time activation series for every matmul and ungrouped conv layer (alone: dense weights; a plan
    carries its own per layer).
    ``hw``: the N:M hardware deciding the series and the
    modelled costs (default: the ``target`` hardware, else the plan's, else
    ``cpu-emulated``). ``report``: also write the report there (.html, .json
    or .txt). ``fmt``: ``"onnx"`` or ``"pt2"`` (default: from the suffix).
    ``tuning``: MetaSchedule-tune the ops the rewrite leaves to TVM first (:mod:`~tvm_tasd.tuning`).
    ``nm_kernels``: as :class:`~tvm_tasd.transform.TASDRewrite` takes it (default ``"auto"``); the layers whose
    series runs on the dense kernel are listed in the report's ``dense_kernel_layers``.
    Nothing is written unless everything succeeds (the tuning database keeps what it measured).
    """
    chosen = sum(x is not None for x in (config, plan, error_threshold))
    if (chosen or activation is not None or nm_kernels is not None) and not tasd:
        raise ValueError("--tasd-config, --tasd-plan, --tasd-error-threshold, --tasd-activation and --tasd-kernels "
                         "need --pass tasd")
    nm_kernels = nm_kernels or "auto"
    if activation is not None and plan is not None:
        raise ValueError("a plan carries its own activation series per layer; drop --tasd-activation")
    if tasd and chosen == 0 and activation is not None:
        config = "dense"  # the activation series alone: weights stay dense
        chosen = 1
    if tasd and chosen != 1:
        raise ValueError("--pass tasd needs one of --tasd-config SERIES (everywhere), --tasd-plan PLAN (from tasd "
                         "search: quality checked) or --tasd-error-threshold E (per layer by weight error, unchecked)")
    config = None if config is None else TASDConfig.parse(config)
    activation = None if activation is None else TASDConfig.parse(activation)
    check_not_inputs([output, report], [model, plan if isinstance(plan, (str, os.PathLike)) else None])
    plan = None if plan is None else Plan.coerce(plan)
    if report is not None:
        check_report_paths([report])
    fmt = model_format(model, fmt)

    with contextlib.ExitStack() as stack:
        stack.enter_context(private_tempdir())  # TVM's temporary objects, removed even when interrupted
        artifact = stack.enter_context(atomic_output(output))  # unwritable paths fail before the work
        report_tmp = stack.enter_context(atomic_output(report)) if report is not None else None
        tvm_target, target_hw = compile_target(target)
        if plan is None:
            hardware = load_target(hw or target_hw or "cpu-emulated")
        else:
            hardware = plan.target(hw or target_hw)
            if plan.hardware not in (None, hardware.name):
                warnings.warn(f"the plan was searched for {plan.hardware}; checking and costing it on {hardware.name}")
        if (activation is not None and not activation.is_dense and config is not None and not config.is_dense
                and hardware.max_sparse_operands < 2):
            raise ValueError(f"{hardware.name} takes one sparse operand per layer: with --tasd-activation "
                             f"{activation}, drop --tasd-config (the weights stay dense)")
        imported = import_model(model, input_shapes, fmt)
        executable = build(imported.mod, hardware, config=config if tasd else "dense", plan=plan, target=tvm_target,
                           error_threshold=error_threshold, activation=activation, tuning=tuning,
                           nm_kernels=nm_kernels)
        errors = {entry["name"]: entry["weight_error"] for entry in executable.layers}
        result = Report.from_choices(hardware, find_layers(imported.mod), executable.choices, plan,
                                     weight_errors=errors, model=Path(model).name, mode="tasd" if tasd else "dense",
                                     source=_how_chosen(tasd, config, plan, error_threshold, activation))
        result.data["dense_kernel_layers"] = [entry["name"] for entry in executable.layers
                                              if entry["kernel"] == "dense" and entry["weight"] != "dense"]
        members = {METADATA: _metadata(model, imported, tvm_target, hardware, tasd, config, plan, activation,
                                       tuning, nm_kernels),
                   REPORT: result.to_json()}
        if plan is not None:
            members[PLAN] = plan.to_json()
        _write_artifact(artifact, executable, members)
        if report_tmp is not None:
            report_tmp.write_text(render_report(result, report))
    return result


def _how_chosen(tasd: bool, config, plan, error_threshold, activation=None) -> str:
    if not tasd:
        return "no --pass tasd"
    if plan is not None:
        return plan_source(plan)
    extra = "" if activation is None else f", activation series {activation} at run time"
    if config is not None:
        return f"uniform config {config}{extra}"
    return f"per layer: cheapest series with weight error ≤ {error_threshold:.0%} (quality unchecked){extra}"


def _tensor_specs(ty, names: list[str]) -> list[dict]:
    """Name, shape and dtype of each output of ``main`` (a tensor or a tuple of tensors)."""
    types = list(ty.fields) if isinstance(ty, relax.TupleType) else [ty]
    names = names if len(names) == len(types) else [f"output_{i}" for i in range(len(types))]
    return [{"name": name, "shape": [int(d) for d in t.shape.values], "dtype": str(t.dtype)}
            for name, t in zip(names, types)]


def _metadata(model, imported: ImportedModel, tvm_target, hardware: HardwareTarget, tasd: bool, config, plan,
              activation, tuning: Tuning | None, nm_kernels: str) -> dict:
    """What ``tvmc run`` and ``tasd report`` need, and where the artifact came from."""
    return {
        "format": ARTIFACT_FORMAT,
        "tvm_tasd": __version__,
        "tvm": tvm.__version__,
        "model": Path(model).name,
        "target": json.loads(str(tvm_target)),  # TVM 0.27 prints a Target as its JSON dict
        "hardware": hardware.name,
        "hardware_digest": hardware.digest,
        "pass": "tasd" if tasd else None,
        "config": None if config is None else str(config),
        "activation": None if activation is None else str(activation),
        "plan": PLAN if plan is not None else None,
        "nm_kernels": nm_kernels,
        "tuning": None if tuning is None else {"seconds": tuning.seconds, "database": str(tuning.work_dir)},
        "inputs": [{"name": n, "shape": list(s), "dtype": d} for n, (s, d) in imported.inputs.items()],
        "outputs": _tensor_specs(imported.mod["main"].ret_ty, imported.outputs),
        "library": LIBRARY,
    }


def _write_artifact(path: Path, executable, members: dict[str, dict]) -> None:
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(path, "w") as tar:
        library = Path(tmp) / LIBRARY
        executable.export_library(str(library))
        tar.add(library, LIBRARY)
        for name, data in members.items():
            blob = (json.dumps(data, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(blob), int(time.time())
            tar.addfile(info, io.BytesIO(blob))


# ------------------------------------------------------------------ read and run


@dataclass
class Artifact:
    """What ``tvmc compile`` wrote: metadata, report and plan (JSON), and the library."""

    path: Path
    metadata: dict
    report: dict
    plan: dict | None

    def virtual_machine(self) -> relax.VirtualMachine:
        """The library loaded into a Relax VM on the host CPU."""
        with tarfile.open(self.path) as tar, tempfile.TemporaryDirectory() as tmp:
            library = Path(tmp) / LIBRARY
            library.write_bytes(tar.extractfile(LIBRARY).read())
            module = tvm.runtime.load_module(str(library))
        return relax.VirtualMachine(module, tvm.cpu())


def read_artifact(path) -> Artifact:
    """Open a ``tvmc compile`` artifact, with one-line errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"artifact {path} does not exist")
    try:
        with tarfile.open(path) as tar:
            names = set(tar.getnames())
            if not {LIBRARY, METADATA, REPORT} <= names:
                raise ValueError(f"{path} is a tar file but not a tvmc artifact (it lacks {METADATA}/{LIBRARY})")
            metadata, report = (parse_json(tar.extractfile(name).read(), f"{path}: {name}") for name in (METADATA, REPORT))
            plan = parse_json(tar.extractfile(PLAN).read(), f"{path}: {PLAN}") if PLAN in names else None
    except tarfile.ReadError:
        raise ValueError(f"{path} is not a tvmc artifact (a .tar written by tvmc compile)") from None
    if not isinstance(metadata, dict) or metadata.get("format") != ARTIFACT_FORMAT:
        found = metadata.get("format") if isinstance(metadata, dict) else None
        raise ValueError(f"{path} was written by another tvmc (format {found!r}, this one reads {ARTIFACT_FORMAT})")
    _check_metadata(path, metadata)
    return Artifact(path, metadata, report, plan)


def _check_metadata(path, metadata: dict) -> None:
    """The members ``tvmc run`` reads: a target kind, and inputs/outputs each with a name, shape and dtype."""
    tensors = [*(metadata.get("inputs") or [None]), *(metadata.get("outputs") or [None])]
    well_formed = isinstance(metadata.get("target"), dict) and isinstance(metadata["target"].get("kind"), str) and all(
        isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("dtype"), str)
        and isinstance(t.get("shape"), list) and all(isinstance(d, int) and d > 0 for d in t["shape"])
        for t in tensors)
    if not well_formed:
        raise ValueError(f"{path}: {METADATA} is damaged (target, inputs or outputs); recompile with tvmc compile")


@dataclass
class RunResult:
    outputs: dict[str, np.ndarray]
    times: object | None  # tvm's BenchmarkResult; str() is old tvmc's timing summary


def _filled(shape, dtype: np.dtype, mode: str, rng: np.random.Generator) -> np.ndarray:
    if mode == "zeros":
        return np.zeros(shape, dtype)
    if mode == "ones":
        return np.ones(shape, dtype)
    if dtype.kind == "f":
        return rng.random(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    return rng.integers(0, 10, shape).astype(dtype)  # small values are valid ids for embedding inputs too


def _feeds(specs: list[dict], given: dict | None, fill_mode: str) -> dict[str, np.ndarray]:
    names = [spec["name"] for spec in specs]
    unknown = sorted(set(given or {}) - set(names))
    if unknown:
        raise ValueError(f"inputs {unknown} are not inputs of this model; it takes {names}")
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in specs:
        name, shape, dtype = spec["name"], tuple(spec["shape"]), np.dtype(spec["dtype"])
        if given is None:
            feeds[name] = _filled(shape, dtype, fill_mode, rng)
            continue
        if name not in given:
            raise ValueError(f"the inputs lack {name!r}; the model takes {names}")
        value = np.asarray(given[name])
        if value.shape != shape:
            raise ValueError(f"input {name!r} has shape {value.shape}; the artifact was compiled for {shape} "
                             "(recompile with --input-shapes)")
        if not np.can_cast(value.dtype, dtype, "same_kind"):
            raise ValueError(f"input {name!r} is {value.dtype}; the model takes {dtype}")
        feeds[name] = value.astype(dtype)
    return feeds


def run_artifact(path, inputs: dict | None = None, fill_mode: str = "random", repeat: int = 0,
                 number: int = 1) -> RunResult:
    """``tvmc run``: the outputs on ``inputs`` (default: filled per ``fill_mode``); with ``repeat``,
    also ``repeat`` timings of ``number`` runs each."""
    artifact = read_artifact(path)
    kind = artifact.metadata["target"]["kind"]
    if kind != "llvm":
        raise ValueError(f"{path} was compiled for {kind}; tvmc run here runs CPU (llvm) builds")
    feeds = _feeds(artifact.metadata["inputs"], inputs, fill_mode)
    for name, value in feeds.items():
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            warnings.warn(f"input {name!r} holds NaN or inf: the outputs will not mean much")
    vm = artifact.virtual_machine()
    args = [tvm.runtime.tensor(feeds[spec["name"]]) for spec in artifact.metadata["inputs"]]
    result = vm["main"](*args)
    values = [result] if isinstance(result, tvm.runtime.Tensor) else list(result)
    outputs = {spec["name"]: value.numpy() for spec, value in zip(artifact.metadata["outputs"], values)}
    times = vm.time_evaluator("main", tvm.cpu(), number=number, repeat=repeat)(*args) if repeat else None
    return RunResult(outputs, times)


def load_report(source, hw=None, model=None, input_shapes: dict | None = None) -> Report:
    """A report from a ``tvmc`` artifact (.tar), a saved report (.json) or a plan (.json) plus its model."""
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    if tarfile.is_tarfile(path):
        return Report.from_json(read_artifact(path).report, hw)
    data = parse_json(path.read_bytes(), f"{path} (neither a tvmc artifact .tar, nor a plan or report .json)")
    if isinstance(data, dict) and "report_version" in data:
        return Report.from_json(data, hw)
    plan = Plan.load(path)  # with the OBS terms saved beside it
    recorded = plan.info.get("model", {})
    if model is not None:
        imported = import_model(model, input_shapes or recorded.get("inputs"))
    elif recorded.get("path") is not None:
        # A path written inside a data file is only ever read as ONNX (parsing it runs no code), never as .pt2.
        model = recorded["path"]
        imported = import_model(model, input_shapes or recorded.get("inputs"), fmt="onnx")
    else:
        raise ValueError(f"{path} does not name its model; give --model MODEL.onnx")
    return Report.from_plan(plan, find_layers(imported.mod), hw, model=Path(model).name)

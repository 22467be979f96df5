"""``tvmc``: compile a model into one artifact and run it, as old TVM's tvmc did — plus ``--pass tasd``.

Upstream TVM stopped shipping ``tvmc`` together with Relay in 0.20. This
console script keeps its habits (flag names, the ``.tar`` artifact, the
timing summary) for Relax::

    tvmc compile model.onnx --target llvm --input-shapes "input:[1,64]" -o dense.tar
    tvmc compile model.onnx --target llvm --input-shapes "input:[1,64]" \\
        --pass tasd --tasd-hw vegeta-m8 --tasd-plan plan.json --tasd-report report.html -o tasd.tar
    tvmc run tasd.tar --inputs inputs.npz --outputs outputs.npz --print-time --repeat 10

``compile`` imports the model (ONNX; a PyTorch ``.pt2`` exported program when
torch is installed), builds it with :func:`tvm_tasd.build` — with ``--pass
tasd`` after :class:`~tvm_tasd.transform.TASDRewrite` picks each layer's series
(``--tasd-config``, ``--tasd-plan``, or automatically), without it dense,
through the same scheduled dense kernels so the two builds compare fairly —
and writes one artifact, atomically:

``mod.so``         the compiled Relax VM library (``export_library``)
``metadata.json``  inputs/outputs (name, shape, dtype), TVM target, hardware,
                   pass, config or plan, versions
``plan.json``      the plan given with ``--tasd-plan``
``report.json``    the per-layer report (:mod:`tvm_tasd.report`)

``--target`` takes ``llvm``, an old-style flag string (``"llvm -mcpu=znver3"``,
which TVM 0.27 no longer parses: it is turned into the dict form here), a
JSON dict, or a hardware target (its ``tvm_target()``). Modelled hardware
runs emulated on the host CPU; ``--tasd-hw`` names the hardware whose N:M
patterns and cost model decide the series (default: the ``--target``
hardware, else the plan's, else ``cpu-emulated``). ``run`` loads the library
with ``tvm.runtime.load_module`` into a ``relax.VirtualMachine`` on the CPU.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import tarfile
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cli import (
    UserError,
    atomic_output,
    check_report_paths,
    load_npz,
    new_parser,
    render_report,
    run_command,
    save_npz,
)
from .config import TASDConfig
from .plan import Plan
from .report import Report, package_version, plan_source

ARTIFACT_FORMAT = "tvm_tasd.tvmc/1"
LIBRARY, METADATA, PLAN, REPORT = "mod.so", "metadata.json", "plan.json", "report.json"
_CPU_ONLY = ("{what} compiles for {kind}, but this tvmc builds CPU (llvm) artifacts only, the ones `tvmc run` "
             "runs here (GPU kernels are separate work); emulate the hardware on the CPU: --target llvm --tasd-hw {hw}")


# ------------------------------------------------------------------ arguments


_SHAPE_ENTRY = re.compile(r"\s*(?P<name>[^\s\[\]]+?)\s*:\s*\[(?P<dims>[^\]]*)\]\s*,?")


def parse_input_shapes(text: str) -> dict[str, list[int]]:
    """Old tvmc's ``--input-shapes`` syntax: ``"name:[1,3,224,224] other:[1,5]"``."""
    shapes, position, text = {}, 0, text.strip()
    while position < len(text):
        match = _SHAPE_ENTRY.match(text, position)
        if match is None:
            raise UserError(f"cannot read --input-shapes {text!r}: write name:[d1,d2,…], several separated by "
                            'spaces, e.g. "input:[1,64] mask:[1,64]"')
        dims = [d.strip() for d in match["dims"].split(",") if d.strip()]
        if not all(d.isdigit() and int(d) > 0 for d in dims):
            raise UserError(f"input {match['name']!r}: shape [{match['dims']}] must list positive integers "
                            "(a dynamic dimension needs a fixed size here)")
        shapes[match["name"]] = [int(d) for d in dims]
        position = match.end()
    return shapes


def parse_target(text: str):
    """``(tvm.target.Target, HardwareTarget | None)`` for ``--target`` (see the module docstring)."""
    from .hardware import list_targets, load_target
    from .pipeline import target_spec

    text = text.strip()
    if text in list_targets() or text.endswith(".toml"):
        hardware = load_target(text)
        if hardware.tvm.kind != "llvm":
            raise UserError(_CPU_ONLY.format(what=f"hardware target {hardware.name}", kind=hardware.tvm.kind,
                                             hw=hardware.name))
        return hardware.tvm_target(), hardware
    if text.startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"--target {text!r} is not valid JSON: {err}") from None
    else:
        try:
            spec = target_spec(text)
        except ValueError as err:
            raise UserError(f"--target: {err}") from None
    import tvm

    kind = spec.get("kind")
    if kind not in tvm.target.Target.list_kinds():
        raise UserError(f"unknown target {text!r}: give llvm, \"llvm -mcpu=…\", or a hardware target "
                        f"({', '.join(list_targets())}; see tasd targets)")
    if kind != "llvm":
        raise UserError(_CPU_ONLY.format(what=f"--target {text!r}", kind=kind, hw="stc-2of4"))
    try:
        return tvm.target.Target(spec), None
    except ValueError as err:
        raise UserError(f"invalid --target {text!r}: {str(err).strip().splitlines()[0]}") from None


# ------------------------------------------------------------------ import


def model_format(path, given: str | None = None) -> str:
    """``"onnx"`` or ``"pt2"`` (from the suffix unless given), once the file is known to exist."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file {path} does not exist")
    return given or ("pt2" if path.suffix == ".pt2" else "onnx")


def import_model(path, input_shapes: dict | None = None, fmt: str | None = None):
    """ONNX or PyTorch ``.pt2`` → :class:`~tvm_tasd.frontend.ImportedModel` (weights bound, source names kept)."""
    path = Path(path)
    if model_format(path, fmt) == "pt2":
        return _from_pt2(path, input_shapes)
    from .frontend import from_onnx

    return from_onnx(path, input_shapes)


def _from_pt2(path: Path, input_shapes: dict | None):
    """A ``torch.export`` program; layers are named by their PyTorch parameter names."""
    try:
        import torch
    except ImportError:
        raise UserError("reading a PyTorch .pt2 program needs torch: pip install -e '.[models]'") from None
    from tvm.relax.frontend.torch import from_exported_program

    from .frontend import (
        WEIGHT_NAMES_ATTR,
        ImportedModel,
        ModelImportError,
        weight_name_map,
    )

    try:
        program = torch.export.load(str(path))
    except Exception as err:  # noqa: BLE001 — torch raises many types for a file that is no program
        raise ModelImportError(f"{path} is not a PyTorch exported program (torch.export.save): "
                               f"{type(err).__name__}") from None
    placeholders = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    inputs = {}
    for name in program.graph_signature.user_inputs:
        value = placeholders[name].meta["val"]
        if not all(isinstance(d, int) for d in value.shape):
            raise ModelImportError(f"input {name!r} of {path} has a dynamic shape {tuple(value.shape)}; "
                                   "export it with fixed shapes")
        inputs[name] = (tuple(value.shape), str(value.dtype).removeprefix("torch."))
    wanted = {name: tuple(shape) for name, shape in (input_shapes or {}).items()}
    if any(inputs.get(name, (None,))[0] != shape for name, shape in wanted.items()):
        fixed = ", ".join(f"{n}:{list(s)}" for n, (s, _) in inputs.items())
        raise UserError(f"a .pt2 program fixes its input shapes when exported ({fixed}); re-export to change them")
    params = {name: tensor.detach().numpy() for name, tensor in program.state_dict.items()}
    mod = from_exported_program(program).with_attr(WEIGHT_NAMES_ATTR, weight_name_map(params))
    return ImportedModel(mod, params, inputs, list(program.graph_signature.user_outputs))


def _tensor_specs(ty, names: list[str]) -> list[dict]:
    """Name, shape and dtype of each output of ``main`` (a tensor or a tuple of tensors)."""
    from tvm import relax

    types = list(ty.fields) if isinstance(ty, relax.TupleType) else [ty]
    names = names if len(names) == len(types) else [f"output_{i}" for i in range(len(types))]
    return [{"name": name, "shape": [int(d) for d in t.shape.values], "dtype": str(t.dtype)}
            for name, t in zip(names, types)]


# ------------------------------------------------------------------ compile


def compile_model(model, output, target="llvm", input_shapes: dict | None = None, *, tasd: bool = False,
                  hw=None, config=None, plan=None, report=None, fmt: str | None = None) -> Report:
    """``tvmc compile``: import, optionally rewrite with TASD, build, write the artifact; the report.

    ``config`` (one series for every layer) or ``plan`` (a plan file or
    :class:`~tvm_tasd.plan.Plan`) need ``tasd=True``; with neither, the pass
    chooses per layer. ``report``: also write the report there (.html, .json
    or .txt). ``fmt``: ``"onnx"`` or ``"pt2"`` (default: from the suffix).
    Nothing is written unless everything succeeds.
    """
    if (config is not None or plan is not None) and not tasd:
        raise UserError("--tasd-config and --tasd-plan need --pass tasd")
    if config is not None and plan is not None:
        raise UserError("give either --tasd-config or --tasd-plan, not both")
    config = None if config is None else TASDConfig.parse(config)
    plan = None if plan is None else Plan.coerce(plan)
    if report is not None:
        check_report_paths([report])
    fmt = model_format(model, fmt)
    from .hardware import load_target

    with contextlib.ExitStack() as stack:
        artifact = stack.enter_context(atomic_output(output))  # unwritable paths fail before the work
        report_tmp = stack.enter_context(atomic_output(report)) if report is not None else None
        tvm_target, target_hw = parse_target(target)
        hardware = load_target(hw or target_hw or (plan.hardware if plan and plan.hardware else "cpu-emulated"))
        if plan is not None and plan.hardware not in (None, hardware.name):
            warnings.warn(f"the plan was searched for {plan.hardware}; checking and costing it on {hardware.name}")
        imported = import_model(model, input_shapes, fmt)
        from .layers import find_layers
        from .pipeline import build

        executable = build(imported.mod, hardware, config=config if tasd else "dense", plan=plan, target=tvm_target)
        result = Report.from_layers(hardware, find_layers(imported.mod), executable.layers, plan,
                                    model=Path(model).name, mode="tasd" if tasd else "dense",
                                    source=_how_chosen(tasd, config, plan))
        members = {METADATA: _metadata(model, imported, tvm_target, hardware, tasd, config, plan),
                   REPORT: result.to_json()}
        if plan is not None:
            members[PLAN] = plan.to_json()
        _write_artifact(artifact, executable, members)
        if report_tmp is not None:
            report_tmp.write_text(render_report(result, report))
    return result


def _how_chosen(tasd: bool, config, plan) -> str:
    from .transform import DEFAULT_ERROR_THRESHOLD

    if not tasd:
        return "no --pass tasd"
    if plan is not None:
        return plan_source(plan)
    if config is not None:
        return f"uniform config {config}"
    return f"automatic: cheapest series with weight error ≤ {DEFAULT_ERROR_THRESHOLD:.0%}"


def _metadata(model, imported, tvm_target, hardware, tasd: bool, config, plan) -> dict:
    """What ``tvmc run`` and ``tasd report`` need, and where the artifact came from."""
    import tvm

    return {
        "format": ARTIFACT_FORMAT,
        "tvm_tasd": package_version(),
        "tvm": tvm.__version__,
        "model": Path(model).name,
        "target": json.loads(str(tvm_target)),  # TVM 0.27 prints a Target as its JSON dict
        "hardware": hardware.name,
        "pass": "tasd" if tasd else None,
        "config": None if config is None else str(config),
        "plan": PLAN if plan is not None else None,
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
            blob = (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(blob), int(time.time())
            tar.addfile(info, io.BytesIO(blob))


# ------------------------------------------------------------------ run


@dataclass
class Artifact:
    """What ``tvmc compile`` wrote: metadata, report and plan (JSON), and the library."""

    path: Path
    metadata: dict
    report: dict
    plan: dict | None

    def virtual_machine(self):
        """The library loaded into a Relax VM on the host CPU."""
        import tvm
        from tvm import relax

        with tarfile.open(self.path) as tar, tempfile.TemporaryDirectory() as tmp:
            library = Path(tmp) / LIBRARY
            library.write_bytes(tar.extractfile(LIBRARY).read())
            module = tvm.runtime.load_module(str(library))
        return relax.VirtualMachine(module, tvm.cpu())


def read_artifact(path) -> Artifact:
    """Open a ``tvmc compile`` artifact, with one-line errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"artifact {path} does not exist")
    try:
        with tarfile.open(path) as tar:
            names = set(tar.getnames())
            if not {LIBRARY, METADATA, REPORT} <= names:
                raise UserError(f"{path} is a tar file but not a tvmc artifact (it lacks {METADATA}/{LIBRARY})")
            metadata, report = json.load(tar.extractfile(METADATA)), json.load(tar.extractfile(REPORT))
            plan = json.load(tar.extractfile(PLAN)) if PLAN in names else None
    except tarfile.ReadError:
        raise UserError(f"{path} is not a tvmc artifact (a .tar written by tvmc compile)") from None
    if metadata.get("format") != ARTIFACT_FORMAT:
        raise UserError(f"{path} was written by another tvmc (format {metadata.get('format')!r}, "
                        f"this one reads {ARTIFACT_FORMAT})")
    return Artifact(path, metadata, report, plan)


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
        raise UserError(f"inputs {unknown} are not inputs of this model; it takes {names}")
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in specs:
        name, shape, dtype = spec["name"], tuple(spec["shape"]), np.dtype(spec["dtype"])
        if given is None:
            feeds[name] = _filled(shape, dtype, fill_mode, rng)
            continue
        if name not in given:
            raise UserError(f"the inputs lack {name!r}; the model takes {names}")
        value = np.asarray(given[name])
        if value.shape != shape:
            raise UserError(f"input {name!r} has shape {value.shape}; the artifact was compiled for {shape} "
                            "(recompile with --input-shapes)")
        if not np.can_cast(value.dtype, dtype, "same_kind"):
            raise UserError(f"input {name!r} is {value.dtype}; the model takes {dtype}")
        feeds[name] = value.astype(dtype)
    return feeds


def run_artifact(path, inputs: dict | None = None, fill_mode: str = "random", repeat: int = 0,
                 number: int = 1) -> RunResult:
    """``tvmc run``: the outputs on ``inputs`` (default: filled per ``fill_mode``); with ``repeat``,
    also ``repeat`` timings of ``number`` runs each."""
    artifact = read_artifact(path)
    kind = artifact.metadata["target"]["kind"]
    if kind != "llvm":
        raise UserError(f"{path} was compiled for {kind}; tvmc run here runs CPU (llvm) builds")
    feeds = _feeds(artifact.metadata["inputs"], inputs, fill_mode)
    import tvm  # after the checks: a mistake is reported without TVM's 3 s import

    vm = artifact.virtual_machine()
    args = [tvm.runtime.tensor(feeds[spec["name"]]) for spec in artifact.metadata["inputs"]]
    result = vm["main"](*args)
    values = [result] if isinstance(result, tvm.runtime.Tensor) else list(result)
    outputs = {spec["name"]: value.numpy() for spec, value in zip(artifact.metadata["outputs"], values)}
    times = vm.time_evaluator("main", tvm.cpu(), number=number, repeat=repeat)(*args) if repeat else None
    return RunResult(outputs, times)


# ------------------------------------------------------------------ commands


def cmd_compile(args) -> None:
    shapes = parse_input_shapes(args.input_shapes) if args.input_shapes else None
    report = compile_model(args.model, args.output, args.target, shapes, tasd=args.tasd_pass == "tasd",
                           hw=args.tasd_hw, config=args.tasd_config, plan=args.tasd_plan, report=args.tasd_report,
                           fmt=args.model_format)
    if report.data["mode"] == "tasd":
        print(report.text())
    extra = f", report → {args.tasd_report}" if args.tasd_report else ""
    print(f"compiled {args.model} ({report.data['mode']}, {len(report.data['layers'])} layers, modelled EDP "
          f"{report.edp_ratio:.2f}× dense on {report.data['hardware']}) → {args.output}{extra}")


def cmd_run(args) -> None:
    if args.repeat < 1 or args.number < 1:
        raise UserError("--repeat and --number must be at least 1")
    inputs = load_npz(args.inputs, "inputs") if args.inputs else None
    result = run_artifact(args.artifact, inputs, args.fill_mode, args.repeat if args.print_time else 0, args.number)
    if args.outputs:
        save_npz(args.outputs, result.outputs)
    for name, value in result.outputs.items():
        where = f" → {args.outputs}" if args.outputs else ""
        print(f"output {name}: {value.dtype}{list(value.shape)}{where}")
    if result.times is not None:
        print(result.times)


COMPILE_EPILOG = """\
examples:
  tvmc compile model.onnx --target llvm --input-shapes "input:[8,64]" -o dense.tar
  tvmc compile model.onnx --target llvm --input-shapes "input:[8,64]" --pass tasd \\
      --tasd-hw vegeta-m8 --tasd-config 2:8+1:8 -o tasd.tar
  tvmc compile model.onnx --target "llvm -mcpu=znver3" --pass tasd --tasd-plan plan.json \\
      --tasd-report report.html -o tasd.tar       # plan from: tasd search
  tvmc compile program.pt2 --target vegeta-m8 --pass tasd -o tasd.tar   # torch.export.save output

Without --pass tasd the build is dense (the same scheduled dense kernels), so the
two artifacts compare directly. Modelled hardware runs emulated on this CPU."""

RUN_EPILOG = """\
examples:
  tvmc run tasd.tar                                    # random inputs
  tvmc run tasd.tar --inputs inputs.npz --outputs outputs.npz
  tvmc run tasd.tar --print-time --repeat 10 --number 5

--inputs: an .npz with one array per model input (its name), of the compiled shape."""


def build_parser():
    parser, add = new_parser("tvmc", "TVM compiler driver for Relax (old tvmc's habits), with --pass tasd.")
    p = add("compile", "compile a model into one artifact (.tar)", cmd_compile, COMPILE_EPILOG)
    p.add_argument("model", help="an ONNX model, or a PyTorch .pt2 exported program")
    p.add_argument("--target", required=True, help='llvm, "llvm -mcpu=…", a JSON dict, or a hardware target name')
    p.add_argument("--input-shapes", help='fixed input shapes, e.g. "input:[1,3,224,224] mask:[1,128]"')
    p.add_argument("--model-format", choices=["onnx", "pt2"], help="default: from the file suffix")
    p.add_argument("-o", "--output", default="module.tar", help="artifact path (default module.tar)")
    p.add_argument("--pass", dest="tasd_pass", choices=["tasd"], help="rewrite with TASD before building")
    p.add_argument("--tasd-hw", help="N:M hardware deciding the series and the modelled costs "
                                     "(default: the --target hardware, else the plan's, else cpu-emulated)")
    choice = p.add_mutually_exclusive_group()
    choice.add_argument("--tasd-config", help="one series for every layer, e.g. 2:8+1:8")
    choice.add_argument("--tasd-plan", help="per-layer series: a plan.json from tasd search")
    p.add_argument("--tasd-report", help="also write the per-layer report (.html, .json or .txt)")

    p = add("run", "run a compiled artifact on this CPU", cmd_run, RUN_EPILOG)
    p.add_argument("artifact", help="a .tar from tvmc compile")
    p.add_argument("--inputs", help="an .npz with the model's inputs (default: filled per --fill-mode)")
    p.add_argument("--outputs", help="write the outputs to this .npz")
    p.add_argument("--fill-mode", choices=["random", "zeros", "ones"], default="random",
                   help="inputs when --inputs is not given (default random, seeded)")
    p.add_argument("--print-time", action="store_true", help="time the model and print a summary")
    p.add_argument("--repeat", type=int, default=1, help="timing: how many measurements (default 1)")
    p.add_argument("--number", type=int, default=1, help="timing: runs averaged per measurement (default 1)")
    return parser


def main(argv=None) -> int:
    return run_command("tvmc", build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

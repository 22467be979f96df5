"""The ``tasd`` command, and the command-line plumbing it shares with ``tvmc``.

``tasd`` holds everything TASD-specific: ``targets`` (list/describe hardware),
``decompose`` (one weight's error and density per series), ``search`` (TASDER
→ plan.json), ``report`` (per-layer table/JSON/HTML of a plan or a ``tvmc``
artifact), ``bench`` (the benchmark scripts in ``tvm_tasd.benchmarks``) and
``demo`` (the main job, end to end on a bundled model).

Shared with :mod:`tvm_tasd.tvmc`: :func:`new_parser` (common ``--verbose`` and
``--version``), :func:`run_command` — a mistake the user can fix
(:class:`UserError`, ``ValueError``, ``OSError``) prints one line on stderr
and exits 2, anything else is an internal error (exit 1); ``--verbose``
shows the traceback — and :func:`atomic_output`, so a failed command never
leaves a partial file behind.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.util
import json
import os
import pkgutil
import shlex
import sys
import tarfile
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .config import TASDConfig
from .decompose import approximate, kept_magnitude_share, relative_error
from .plan import Plan
from .report import Report, format_table, package_version

DEFAULT_HW = "vegeta-m8"
REPORT_SUFFIXES = (".html", ".json", ".txt")


class UserError(Exception):
    """A mistake in the command line or its inputs: printed as one line."""


# ------------------------------------------------------------------ shared plumbing


def new_parser(prog: str, description: str) -> tuple[argparse.ArgumentParser, Callable]:
    """A parser with ``-v/--verbose`` (accepted before or after the subcommand) and ``--version``,
    and ``add(name, summary, func, epilog=None)`` to declare a subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand that does not see the flag must not reset the top-level one.
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show the Python traceback of an error")
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog=prog, description=description, parents=[common], formatter_class=formatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s (tvm_tasd {package_version()})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, summary: str, func: Callable, epilog: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=summary, description=summary, epilog=epilog, parents=[common],
                           formatter_class=formatter)
        p.set_defaults(func=func)
        return p

    return parser, add


def _describe(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename and err.strerror:
        return f"{err.filename}: {err.strerror}"
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def run_command(prog: str, parser: argparse.ArgumentParser, argv=None) -> int:
    """Parse ``argv`` and run the chosen subcommand; the exit code."""
    args = parser.parse_args(argv)
    verbose = getattr(args, "verbose", False)  # absent unless given: the flag's default is SUPPRESS
    try:
        with warnings.catch_warnings():
            for noise in (DeprecationWarning, FutureWarning):  # library internals, not the user's business
                warnings.simplefilter("ignore", noise)
            warnings.showwarning = lambda message, *_: print(f"{prog}: warning: {message}", file=sys.stderr)
            args.func(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if verbose:
            raise
        if isinstance(err, (UserError, ValueError, OSError)):
            print(f"{prog}: error: {_describe(err)}", file=sys.stderr)
            return 2
        print(f"{prog}: internal error: {type(err).__name__}: {_describe(err)} (--verbose shows the traceback)",
              file=sys.stderr)
        return 1
    return 0


@contextlib.contextmanager
def atomic_output(path):
    """Yield a temporary path beside ``path`` and rename it to ``path`` only if the block succeeds.

    The temporary file is created on entry, so an unwritable destination
    fails before any expensive work.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a directory")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as err:
        problem = "no such directory" if isinstance(err, FileNotFoundError) else err.strerror
        raise UserError(f"cannot write {path}: {problem}") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; the result is an ordinary user file
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_npz(path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` written atomically (a file handle: savez would append .npz to a temporary name)."""
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def load_npz(path, what: str) -> dict[str, np.ndarray]:
    """All arrays of an .npz file, with one-line errors."""
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"{what} file {path} does not exist") from None
    except (OSError, ValueError):
        raise UserError(f"{what} file {path} is not an .npz archive (write it with np.savez)") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise UserError(f"{what} file {path} holds a single array; use np.savez(path, name=array, …)")
    with archive:
        return {name: archive[name] for name in archive.files}


# ------------------------------------------------------------------ targets, decompose


def cmd_targets(args) -> None:
    from .hardware import list_targets, load_target

    names = args.target or list_targets()
    rows = []
    for name in names:
        hw = load_target(name)
        patterns = [str(p) for p in hw.patterns]
        if len(patterns) > 4:  # long lists (software units, hierarchies) are summarised
            patterns = [*patterns[:3], f"… {len(patterns)} patterns"]
        rows.append([
            hw.name,
            ", ".join(patterns) or "—",
            "+".join(sorted(hw.sparse_operands)) or "—",
            f"{hw.dense_macs_per_cycle:g}",
            f"{hw.clock_ghz:g}",
            str(hw.tvm.kind),
        ])
        if args.target:
            print(f"{hw.name}: {hw.description}\n  file: {hw.source_file}")
    header = ["target", "N:M patterns", "sparse operand", "MACs/cycle", "GHz", "TVM kind"]
    print("\n".join(format_table(rows, header, left=3)))


def cmd_decompose(args) -> None:
    """One weight: from a .npy file or an initializer of an ONNX model."""
    from .decompose import decompose

    weight, axis = _load_weight(args)
    rows = []
    for text in args.config:
        config = TASDConfig.parse(text)
        terms = decompose(weight, config, axis=axis)
        approx = approximate(weight, config, axis=axis)
        rows.append([
            str(config),
            f"{config.density:.3f}",
            " ".join(f"{t.nonzero_density:.3f}" for t in terms) or "—",
            f"{relative_error(weight, approx):.2%}",
            f"{kept_magnitude_share(weight, approx):.2%}",
        ])
    print(f"weight {args.name or args.file} shape {weight.shape}, groups along axis {axis}")
    print("\n".join(format_table(rows, ["series", "MAC density", "nonzero density per term", "rel. error", "kept |w|"])))


def _load_weight(args):
    path = Path(args.file)
    if not path.exists():
        raise UserError(f"{path} does not exist")
    if path.suffix == ".npy":
        return np.load(path), args.axis if args.axis is not None else 0
    from onnx import numpy_helper

    from .frontend import load_onnx

    proto = load_onnx(path)
    inits = {i.name: i for i in proto.graph.initializer}
    if args.name not in inits:
        names = [n for n, i in inits.items() if len(i.dims) >= 2]
        raise UserError(f"no initializer {args.name!r} in {path}; weights there: {', '.join(names[:8])}")
    weight = numpy_helper.to_array(inits[args.name])
    return weight, args.axis if args.axis is not None else (1 if weight.ndim == 4 else 0)


# ------------------------------------------------------------------ search


def load_calibration(path, proto, batch: int | None = None) -> tuple[list[dict], np.ndarray | None]:
    """Calibration batches from an .npz: one array per model input (first axis = samples),
    optional ``labels``; batches of ``batch`` samples (a model with a fixed batch takes
    whole batches of that size only)."""
    import onnx

    from .evaluate import model_inputs

    if batch is not None and batch < 1:
        raise UserError(f"--batch must be at least 1, got {batch}")
    arrays = load_npz(path, "calibration")
    labels = arrays.pop("labels", None)
    required = model_inputs(proto)
    if set(arrays) != set(required):
        raise UserError(f"calibration file {path} has arrays {sorted(arrays)}; it needs one per model input "
                        f"{sorted(required)} (and optionally 'labels')")
    counts = {name: len(a) for name, a in arrays.items()} | ({"labels": len(labels)} if labels is not None else {})
    if len(set(counts.values())) != 1:
        raise UserError(f"arrays in {path} disagree on the number of samples (first axis): {counts}")
    samples = next(iter(counts.values()))
    types = {v.name: v.type.tensor_type for v in proto.graph.input if v.name in required}
    fixed = {t.shape.dim[0].dim_value for t in types.values() if t.shape.dim and t.shape.dim[0].HasField("dim_value")}
    if fixed:
        (model_batch,) = fixed
        if batch not in (None, model_batch):
            raise UserError(f"the model's batch size is fixed at {model_batch}: use --batch {model_batch}")
        batch = model_batch
        samples -= samples % batch
        if samples == 0:
            raise UserError(f"calibration file {path} has fewer samples than one batch of {batch}")
    batch = batch or 64
    dtypes = {name: onnx.helper.tensor_dtype_to_np_dtype(t.elem_type) for name, t in types.items()}
    feeds = [{name: arrays[name][i : i + batch].astype(dtypes[name], copy=False) for name in required}
             for i in range(0, samples, batch)]
    return feeds, None if labels is None else labels[:samples]


def search_plan(model, hw, calibration, output, *, metric="cosine", budget=0.99, batch=None,
                strategy="surrogate", max_terms=2, seed=0) -> Plan:
    """TASDER on an ONNX model with calibration data from an .npz; the plan is saved to ``output``.

    The plan also records the model's path and the input shapes searched at
    (``info["model"]``), so ``tasd report plan.json`` finds the model again.
    """
    from .frontend import load_onnx
    from .hardware import load_target

    target = load_target(hw)
    proto = load_onnx(model)
    feeds, labels = load_calibration(calibration, proto, batch)
    if metric == "accuracy" and labels is None:
        raise UserError(f"--metric accuracy needs a 'labels' array (one label per sample) in {calibration}")
    with atomic_output(output) as tmp:
        from .tasder import search

        plan = search(proto, target, feeds, metric=metric, budget=budget, labels=labels, max_terms=max_terms,
                      strategy=strategy, seed=seed)
        plan.info["model"] = {"path": str(Path(model).resolve()),
                              "inputs": {name: list(value.shape) for name, value in feeds[0].items()}}
        plan.save(tmp)
    return plan


def cmd_search(args) -> None:
    plan = search_plan(args.model, args.hw, args.calibration, args.output, metric=args.metric, budget=args.budget,
                       batch=args.batch, strategy=args.strategy, max_terms=args.max_terms, seed=args.seed)
    quality, search = plan.info["quality"], plan.info["search"]
    rewritten = sum(not layer.weight.is_dense for layer in plan.layers)
    print(f"plan → {args.output}: {rewritten} of {len(plan.layers)} layers rewritten for {plan.hardware}, "
          f"modelled EDP {plan.info['edp_vs_dense']:.2f}× dense")
    print(f"{plan.info['metric']} on the calibration data: {quality['original']:.4f} → {quality['plan']:.4f} "
          f"({quality['relative']:.1%} of the original, budget {plan.budget:.1%}); "
          f"{search['full_evaluations']} full evaluations")
    print(f"next: tasd report {shlex.quote(str(args.output))}  |  "
          f"tvmc compile {shlex.quote(str(args.model))} --target llvm --pass tasd --tasd-plan {shlex.quote(str(args.output))}")


# ------------------------------------------------------------------ report


def load_report(source, hw=None, model=None, input_shapes: dict | None = None) -> Report:
    """A report from a ``tvmc`` artifact (.tar), a saved report (.json) or a plan (.json) plus its model."""
    path = Path(source)
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    if tarfile.is_tarfile(path):
        from .tvmc import read_artifact

        return Report.from_json(read_artifact(path).report, hw)
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{path} is neither a tvmc artifact (.tar) nor a plan or report (.json)") from None
    if isinstance(data, dict) and "report_version" in data:
        return Report.from_json(data, hw)
    plan = Plan.from_json(data)
    recorded = plan.info.get("model", {})
    model = model or recorded.get("path")
    if model is None:
        raise UserError(f"{path} does not name its model; give --model MODEL.onnx")
    from .tvmc import import_model

    imported = import_model(model, input_shapes or recorded.get("inputs"))
    return Report.from_plan(plan, imported, hw, model=Path(model).name)


def render_report(report: Report, path) -> str:
    """``report`` in the format the suffix of ``path`` names (see :func:`check_report_paths`)."""
    suffix = Path(path).suffix
    if suffix == ".html":
        return report.html()
    if suffix == ".json":
        return json.dumps(report.to_json(), indent=1, sort_keys=True) + "\n"
    return report.text() + "\n"


def check_report_paths(paths) -> None:
    """Fail before any work when a report path's suffix names no format."""
    for path in paths:
        if Path(path).suffix not in REPORT_SUFFIXES:
            raise UserError(f"report file {path}: the suffix picks the format, one of {', '.join(REPORT_SUFFIXES)}")


def cmd_report(args) -> None:
    check_report_paths(args.output)
    with contextlib.ExitStack() as stack:
        targets = [stack.enter_context(atomic_output(path)) for path in args.output]  # unwritable paths fail first
        shapes = None
        if args.input_shapes:
            from .tvmc import parse_input_shapes

            shapes = parse_input_shapes(args.input_shapes)
        report = load_report(args.source, args.hw, args.model, shapes)
        for tmp, path in zip(targets, args.output):
            tmp.write_text(render_report(report, path))
    print(report.text())
    for path in args.output:
        print(f"→ {path}")


# ------------------------------------------------------------------ bench


def benchmarks() -> dict[str, str]:
    """Benchmark scripts of ``tvm_tasd.benchmarks`` (modules with a ``main``) → their first docstring line.

    Read from source, not imported: listing must not run a benchmark's set-up.
    """
    import tvm_tasd.benchmarks as package

    found = {}
    for info in pkgutil.iter_modules(package.__path__):
        spec = importlib.util.find_spec(f"{package.__name__}.{info.name}")
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
        if any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body):
            found[info.name] = (ast.get_docstring(tree) or "").strip().splitlines()[0]
    return dict(sorted(found.items()))


def cmd_bench(args) -> None:
    available = benchmarks()
    if args.name is None:
        width = max(map(len, available))
        print("benchmarks (tasd bench NAME [args…]; tasd bench NAME --help for its options):")
        for name, summary in available.items():
            print(f"  {name.ljust(width)}  {summary}")
        return
    if args.name not in available:
        raise UserError(f"unknown benchmark {args.name!r}; available: {', '.join(available)}")
    sys.argv[0] = f"tasd bench {args.name}"  # so the benchmark's usage line names the command to type
    importlib.import_module(f"tvm_tasd.benchmarks.{args.name}").main(args.args)


# ------------------------------------------------------------------ demo


def _show(argv: list) -> None:
    print("  $ " + shlex.join(str(a) for a in argv), flush=True)


def cmd_demo(args) -> None:
    """The full flow on a bundled model: TASDER plan, dense and TASD builds, both run, report."""
    from . import tvmc
    from .models.digits import accuracy, load_data, model_path

    started = time.perf_counter()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model_path(args.model)
    data = load_data()
    calibration, test = out / "digits_calibration.npz", out / "digits_test.npz"
    plan, dense_tar, tasd_tar, html = (out / f"{args.model}{s}" for s in ("_plan.json", "_dense.tar", "_tasd.tar",
                                                                         "_report.html"))
    save_npz(calibration, {"input": data.train_x, "labels": data.train_y})
    save_npz(test, {"input": data.test_x})
    print(f"tasd demo: {args.model} on {args.hw}. Calibration: the {len(data.train_x)} training images "
          f"({calibration}); test: the {len(data.test_x)} held-out images ({test}).")

    print(f"\n1. TASDER searches a plan keeping ≥ {args.budget:.1%} of the training accuracy:")
    argv = ["tasd", "search", model, "--hw", args.hw, "--calibration", calibration, "--metric", "accuracy",
            "--budget", args.budget, "--batch", 128, "-o", plan]
    _show(argv)
    search_plan(model, args.hw, calibration, plan, metric="accuracy", budget=args.budget, batch=128)

    print("\n2. Compile the model dense and with the plan (tvmc):")
    shapes = {"input": [len(data.test_x), data.test_x.shape[1]]}
    shape_text = f"input:[{len(data.test_x)},{data.test_x.shape[1]}]"
    _show(["tvmc", "compile", model, "--target", "llvm", "--input-shapes", shape_text, "--tasd-hw", args.hw,
           "-o", dense_tar])
    dense = tvmc.compile_model(model, dense_tar, "llvm", shapes, hw=args.hw)
    _show(["tvmc", "compile", model, "--target", "llvm", "--input-shapes", shape_text, "--pass", "tasd",
           "--tasd-hw", args.hw, "--tasd-plan", plan, "--tasd-report", html, "-o", tasd_tar])
    tasd = tvmc.compile_model(model, tasd_tar, "llvm", shapes, tasd=True, hw=args.hw, plan=plan, report=html)

    print("\n3. Run both on the held-out test images (the emulated target runs on this CPU):")
    scores = {}
    for name, tar in (("dense", dense_tar), ("TASD", tasd_tar)):
        _show(["tvmc", "run", tar, "--inputs", test])
        (logits,) = tvmc.run_artifact(tar, {"input": data.test_x}).outputs.values()
        scores[name] = accuracy(logits, data.test_y)

    print(f"\n4. Side by side ({args.hw}; EDP modelled over the {len(tasd.data['layers'])} matmul/conv layers, "
          f"batch {len(data.test_x)}):\n")
    rows = [["test accuracy", f"{scores['dense']:.4f}", f"{scores['TASD']:.4f}"],
            ["modelled EDP vs dense", f"{dense.edp_ratio:.2f}×", f"{tasd.edp_ratio:.2f}×"],
            ["modelled energy vs dense", f"{dense.data['totals']['ratio']['energy']:.2f}×",
             f"{tasd.data['totals']['ratio']['energy']:.2f}×"]]
    print("\n".join("  " + line for line in format_table(rows, ["", "dense", "TASD"])))
    print(f"\n{tasd.text()}")
    print(f"\nreport: {html}   (again: tasd report {tasd_tar} -o {html}); "
          f"finished in {time.perf_counter() - started:.0f} s")


# ------------------------------------------------------------------ parser


SEARCH_EPILOG = """\
calibration .npz: one array per model input (its name; first axis = samples),
and for --metric accuracy a 'labels' array. Example:
  python -c "import numpy as np; np.savez('calib.npz', input=x, labels=y)"
  tasd search model.onnx --hw vegeta-m8 --calibration calib.npz --metric accuracy --budget 0.99 -o plan.json"""

REPORT_EPILOG = """\
examples:
  tasd report out.tar                      # what tvmc compile --pass tasd built
  tasd report out.tar --hw stc-2of4        # the same choices, costed on another target
  tasd report plan.json -o report.html -o report.json
  tasd report plan.json --model model.onnx --input-shapes "input:[1,64]\""""


def build_parser() -> argparse.ArgumentParser:
    parser, add = new_parser("tasd", "TASD: N:M structured decomposition for TVM (see also: tvmc).")

    p = add("targets", "list or describe hardware targets", cmd_targets)
    p.add_argument("target", nargs="*", help="target names or paths of your own .toml files")

    p = add("decompose", "decompose one weight and show error/density per series", cmd_decompose,
            "example: tasd decompose model.onnx --name fc1.weight --config 2:4 2:8+1:8")
    p.add_argument("file", help="an ONNX model or a .npy array")
    p.add_argument("--name", help="initializer name (ONNX)")
    p.add_argument("--axis", type=int, help="reduction axis (default: 0 for (K, N) matmul weights, 1 for OIHW)")
    p.add_argument("--config", nargs="+", default=["2:4", "2:8+1:8"], help="TASD series, e.g. 2:8+1:8")

    p = add("search", "TASDER: the lowest-EDP series per layer that keeps a quality budget", cmd_search, SEARCH_EPILOG)
    p.add_argument("model", help="an ONNX model")
    p.add_argument("--hw", default=DEFAULT_HW, help=f"hardware target name or .toml file (default {DEFAULT_HW})")
    p.add_argument("--calibration", required=True, help="an .npz file (see below)")
    p.add_argument("--metric", default="cosine", choices=["cosine", "top1", "accuracy"],
                   help="quality measure: output cosine or top-1 agreement with the original model, "
                        "or accuracy against the labels (default cosine)")
    p.add_argument("--budget", type=float, default=0.99, help="share of the original quality to keep (default 0.99)")
    p.add_argument("--batch", type=int, help="samples per batch (default: the model's fixed batch, else 64)")
    p.add_argument("--strategy", default="surrogate", choices=["surrogate", "bisect", "walk"],
                   help="how the greedy path is verified (default surrogate)")
    p.add_argument("--max-terms", type=int, default=2, help="longest series considered (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", default="plan.json", help="plan file to write (default plan.json)")

    p = add("report", "per-layer report of a plan or a tvmc artifact: text, JSON, HTML", cmd_report, REPORT_EPILOG)
    p.add_argument("source", help="plan.json, a report .json, or a .tar from tvmc compile")
    p.add_argument("--hw", help="cost on this target (default: the one the plan or artifact was made for)")
    p.add_argument("--model", help="the plan's model (default: the path the plan records)")
    p.add_argument("--input-shapes", help='with --model: fixed input shapes, e.g. "input:[1,64]"')
    p.add_argument("-o", "--output", action="append", default=[],
                   help="also write the report here; .html, .json or .txt picks the format (repeatable)")

    p = add("bench", "run a benchmark of the suite (no name: list them)", cmd_bench,
            "examples:\n  tasd bench\n  tasd bench cost_table --out /tmp/results\n  tasd bench kernels --quick")
    p.add_argument("name", nargs="?", help="benchmark name")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark")

    p = add("demo", "the main job: search, compile dense and TASD, run both, report", cmd_demo)
    p.add_argument("--model", default="digits-mlp", choices=["digits-mlp", "digits-cnn"])
    p.add_argument("--hw", default=DEFAULT_HW, help=f"hardware target (default {DEFAULT_HW})")
    p.add_argument("--budget", type=float, default=0.99, help="TASDER quality budget (default 0.99)")
    p.add_argument("--out-dir", default="out", help="where files go (default out/)")
    return parser


def tasd_main(argv=None) -> int:
    return run_command("tasd", build_parser(), argv)


if __name__ == "__main__":
    sys.exit(tasd_main())

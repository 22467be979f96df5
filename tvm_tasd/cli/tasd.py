"""The ``tasd`` command: everything TASD-specific, over the library.

``targets`` (list/describe hardware), ``decompose`` (one weight's error and
density per series), ``search`` (TASDER → plan.json), ``apply`` (an ONNX
model with a plan's weights, for any runtime), ``report`` (per-layer
table/JSON/HTML of a plan or a ``tvmc`` artifact), ``bench`` (the benchmark
scripts of ``tvm_tasd.benchmarks``) and ``demo`` (the main job, end to end
on a bundled model). Commands that compile or search import TVM when they
run, so ``tasd targets`` and ``tasd decompose`` answer at once.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.util
import pkgutil
import shlex
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .. import benchmarks as bench_package
from ..config import TASDConfig
from ..decompose import approximate, decompose, kept_magnitude_share, relative_error
from ..hardware import list_targets, load_target
from ..io import atomic_output, check_not_inputs, load_npy
from ..report import format_table
from .common import new_parser, parse_input_shapes, run_command

DEFAULT_HW = "vegeta-m8"


def cmd_targets(args) -> None:
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
        raise ValueError(f"{path} does not exist")
    if path.suffix == ".npy":
        weight = load_npy(path, "weight")
        if weight.dtype.kind != "f":
            raise ValueError(f"{path} holds {weight.dtype} values; TASD decomposes float weights")
        return weight, args.axis if args.axis is not None else 0
    from ..frontend import load_onnx  # the importer module loads TVM

    proto = load_onnx(path)
    inits = {i.name: i for i in proto.graph.initializer}
    if args.name not in inits:
        names = [n for n, i in inits.items() if len(i.dims) >= 2]
        raise ValueError(f"no initializer {args.name!r} in {path}; weights there: {', '.join(names[:8])}")
    weight = numpy_helper.to_array(inits[args.name])
    return weight, args.axis if args.axis is not None else (1 if weight.ndim == 4 else 0)


def cmd_search(args) -> None:
    from ..tasder import search_file  # TVM loads only for the commands that need it

    plan = search_file(args.model, args.hw, args.calibration, args.output, metric=args.metric, budget=args.budget,
                       batch=args.batch, strategy=args.strategy, max_terms=args.max_terms, seed=args.seed,
                       outputs=args.output_name, holdout=args.holdout, fit_share=args.fit_share, damp=args.damp)
    quality, search = plan.info["quality"], plan.info["search"]
    rewritten = sum(not layer.weight.is_dense for layer in plan.layers)
    print(f"plan → {args.output}: {rewritten} of {len(plan.layers)} layers rewritten for {plan.hardware}, "
          f"modelled EDP {plan.info['edp_vs_dense']:.2f}× dense")
    print(f"{plan.info['metric']} of {', '.join(plan.info['outputs'])} on the calibration data: "
          f"{quality['original']:.4f} → {quality['plan']:.4f} "
          f"({quality['relative']:.1%} of the original, budget {plan.budget:.1%}); "
          f"{search['full_evaluations']} full evaluations")
    if fit := plan.info["inputs"].get("fit_batches"):
        print(f"layer statistics from {fit} batch(es) the search did not score on (cross-fitting)")
    if held := quality["held_out"]:
        print(f"on the {held['batches']} held-out batch(es) the search never saw: {held['original']:.4f} → "
              f"{held['plan']:.4f} ({held['relative']:.1%}; {held['rejected']} cheaper plan(s) failed there)")
    print(f"next: tasd report {shlex.quote(str(args.output))}  |  "
          f"tvmc compile {shlex.quote(str(args.model))} --target host --pass tasd --tasd-plan {shlex.quote(str(args.output))}")


def cmd_apply(args) -> None:
    from ..frontend import load_onnx
    from ..plan import Plan
    from ..reference import approximate_onnx, weight_axes

    check_not_inputs([args.output], [args.plan, args.model])
    with atomic_output(args.output) as tmp:  # an unwritable output fails before the work
        plan = Plan.load(args.plan)
        model = load_onnx(args.model)  # computed weights folded, as every path names them
        layers = weight_axes(model)
        chosen = {c.name for c in plan.layers if not c.weight.is_dense}
        if chosen and not chosen & set(layers):
            raise ValueError(f"the plan rewrites none of the layers of {args.model} (e.g. {min(chosen)!r}): "
                             "is it a plan for another model?")
        approximated = approximate_onnx(model, plan=plan)
        onnx.save(approximated, tmp)
    before = {init.name: init.SerializeToString() for init in model.graph.initializer if init.name in layers}
    replaced = [init.name for init in approximated.graph.initializer
                if init.name in before and init.SerializeToString() != before[init.name]]
    print(f"{args.output}: {len(replaced)} of {len(layers)} layer weights replaced by their TASD approximation "
          "(same graph: any ONNX runtime runs the plan's weights)")
    if missing := sorted(chosen - set(layers)):
        print(f"warning: the plan rewrites layers this model does not have: {', '.join(missing[:5])}"
              f"{'…' if len(missing) > 5 else ''}", file=sys.stderr)
    if acting := [c.name for c in plan.layers if c.activation is not None]:
        print(f"warning: the plan's run-time activation series ({len(acting)} layers) are not in the written model "
              "(an ONNX graph holds weights); tvm_tasd.evaluation.onnx.run_plan emulates them", file=sys.stderr)


def cmd_report(args) -> None:
    from ..artifact import check_report_paths, load_report, render_report  # loads TVM

    check_report_paths(args.output)
    check_not_inputs(args.output, [args.source, args.model])
    with contextlib.ExitStack() as stack:
        targets = [stack.enter_context(atomic_output(path)) for path in args.output]  # unwritable paths fail first
        shapes = parse_input_shapes(args.input_shapes) if args.input_shapes else None
        report = load_report(args.source, args.hw, args.model, shapes)
        for tmp, path in zip(targets, args.output):
            tmp.write_text(render_report(report, path))
    print(report.text())
    for path in args.output:
        print(f"→ {path}")


def benchmarks() -> dict[str, str]:
    """Benchmark scripts of ``tvm_tasd.benchmarks`` (modules with a ``main``) → their first docstring line.

    Read from source, not imported: listing must not run a benchmark's set-up.
    """
    found = {}
    for info in pkgutil.iter_modules(bench_package.__path__):
        spec = importlib.util.find_spec(f"{bench_package.__name__}.{info.name}")
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
        raise ValueError(f"unknown benchmark {args.name!r}; available: {', '.join(available)}")
    sys.argv[0] = f"tasd bench {args.name}"  # so the benchmark's usage line names the command to type
    try:
        importlib.import_module(f"{bench_package.__name__}.{args.name}").main(args.args)
    except ModuleNotFoundError as err:
        if not (err.name or "").startswith(f"{bench_package.__name__}.models"):
            raise
        raise ValueError(f"benchmark {args.name!r} uses the benchmark model zoo (benchmarks/models/), which only a "
                         "source checkout has: run it from one, installed with pip install -e .") from None


def _demo(args) -> None:
    from .demo import cmd_demo  # compiles and runs: loads TVM

    cmd_demo(args)


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
    p.add_argument("--model-output", dest="output_name", action="append", metavar="NAME",
                   help="model output the metric scores (repeatable; default: every float output a layer "
                        "influences; top1/accuracy need exactly one)")
    p.add_argument("--metric", default="cosine", choices=["cosine", "top1", "accuracy"],
                   help="quality measure: output cosine or top-1 agreement with the original model, "
                        "or accuracy against the labels (default cosine)")
    p.add_argument("--budget", type=float, default=0.99, help="share of the original quality to keep (default 0.99)")
    p.add_argument("--holdout", type=float, default=0.25,
                   help="share of the calibration batches kept out of the search; the plan must keep the budget "
                        "on them too (default 0.25; 0 checks nothing unseen)")
    p.add_argument("--fit-share", type=float, default=0.0,
                   help="share of the calibration batches (the first ones) that only feed the layer statistics and "
                        "OBS fits, so the search scores on data they were not fitted to (default 0: no cross-fitting)")
    p.add_argument("--damp", type=float, default=0.01,
                   help="OBS damping, a share of the mean Hessian diagonal (default 0.01; more fits the calibration "
                        "data less closely)")
    p.add_argument("--batch", type=int, help="samples per batch (default: the model's fixed batch, else 64)")
    p.add_argument("--strategy", default="surrogate", choices=["surrogate", "bisect", "walk"],
                   help="how the greedy path is verified (default surrogate)")
    p.add_argument("--max-terms", type=int, default=2, help="longest series considered (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", default="plan.json", help="plan file to write (default plan.json)")

    p = add("apply", "write an ONNX model whose layer weights are a plan's approximations", cmd_apply,
            "example: tasd apply plan.json model.onnx -o approximated.onnx")
    p.add_argument("plan", help="a plan from tasd search (its .weights.npz beside it, if it has one)")
    p.add_argument("model", help="the ONNX model the plan is for")
    p.add_argument("-o", "--output", required=True, help="the ONNX model to write")

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

    p = add("demo", "the main job: search, compile dense and TASD, run both, report", _demo)
    p.add_argument("--model", default="digits-mlp", choices=["digits-mlp", "digits-cnn"])
    p.add_argument("--hw", default=DEFAULT_HW, help=f"hardware target (default {DEFAULT_HW})")
    p.add_argument("--budget", type=float, default=0.99, help="TASDER quality budget (default 0.99)")
    p.add_argument("--out-dir", default="out", help="where files go (default out/)")
    return parser


def main(argv=None) -> int:
    return run_command("tasd", build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

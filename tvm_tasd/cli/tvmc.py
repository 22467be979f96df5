"""``tvmc``: compile a model into one artifact and run it, as old TVM's tvmc did — plus ``--pass tasd``.

Upstream TVM stopped shipping ``tvmc`` together with Relay in 0.20. This
console script keeps its habits (flag names, the ``.tar`` artifact, the
timing summary) for Relax::

    tvmc compile model.onnx --target host --input-shapes "input:[1,64]" -o dense.tar
    tvmc compile model.onnx --target host --input-shapes "input:[1,64]" \\
        --pass tasd --tasd-hw vegeta-m8 --tasd-plan plan.json --tasd-report report.html -o tasd.tar
    tvmc run tasd.tar --inputs inputs.npz --outputs outputs.npz --print-time --repeat 10

The work is :mod:`tvm_tasd.artifact`'s (:func:`~tvm_tasd.artifact.compile_model`,
:func:`~tvm_tasd.artifact.run_artifact`); this module parses the flags.
"""

from __future__ import annotations

import sys

from ..artifact import compile_model, run_artifact
from ..io import check_not_inputs, load_npz, save_npz
from ..tuning import Tuning
from .common import new_parser, parse_input_shapes, run_command


def cmd_compile(args) -> None:
    shapes = parse_input_shapes(args.input_shapes) if args.input_shapes else None
    report = compile_model(args.model, args.output, args.target, shapes, tasd=args.tasd_pass == "tasd",
                           hw=args.tasd_hw, config=args.tasd_config, plan=args.tasd_plan,
                           error_threshold=args.tasd_error_threshold, activation=args.tasd_activation,
                           report=args.tasd_report,
                           fmt=args.model_format, tuning=_tuning(args), nm_kernels=args.tasd_kernels)
    if report.data["mode"] == "tasd":
        print(report.text())
        if dense_run := report.data["dense_kernel_layers"]:
            print(f"{len(dense_run)} layer(s) run the dense kernel on their approximated weights, faster on this "
                  f"CPU than their series' N:M kernel (same outputs; --tasd-kernels always keeps the N:M kernels): "
                  f"{', '.join(dense_run)}")
    extra = f", report → {args.tasd_report}" if args.tasd_report else ""
    print(f"compiled {args.model} ({report.data['mode']}, {len(report.data['layers'])} layers, modelled EDP "
          f"{report.edp_ratio:.2f}× dense on {report.data['hardware']}) → {args.output}{extra}")


def _tuning(args) -> Tuning | None:
    if args.tune is None:
        if args.tune_dir is not None:
            raise ValueError("--tune-dir needs --tune SECONDS (0: only apply what the database holds)")
        return None
    return Tuning(args.tune) if args.tune_dir is None else Tuning(args.tune, args.tune_dir)


def cmd_run(args) -> None:
    if args.repeat < 1 or args.number < 1:
        raise ValueError("--repeat and --number must be at least 1")
    check_not_inputs([args.outputs], [args.artifact, args.inputs])
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
  tvmc compile model.onnx --target host --input-shapes "input:[8,64]" -o dense.tar   # this machine's CPU
  tvmc compile model.onnx --target host --input-shapes "input:[8,64]" --pass tasd \\
      --tasd-hw vegeta-m8 --tasd-config 2:8+1:8 -o tasd.tar
  tvmc compile model.onnx --target "llvm -mcpu=znver3" --pass tasd --tasd-plan plan.json \\
      --tasd-report report.html -o tasd.tar       # plan from: tasd search
  tvmc compile program.pt2 --target vegeta-m8 --pass tasd --tasd-config 2:4 -o tasd.tar   # torch.export.save output
  tvmc compile model.onnx --target host --input-shapes "input:[8,64]" --pass tasd \\
      --tasd-hw ttc-vegeta-m8 --tasd-activation 2:8 -o act.tar   # ReLU-fed layers: activation series
  tvmc compile model.onnx --target host --input-shapes "input:[8,64]" --tune 600 -o tuned.tar

--target llvm without -mcpu compiles for generic x86-64 (SSE2), about 2.5x slower
than host or cpu-emulated (portable AVX2); it warns.
Without --pass tasd the build is dense (the same scheduled dense kernels), so the
two artifacts compare directly. Modelled hardware runs emulated on this CPU.
--tune measures each remaining operator's default schedule, searches for SECONDS,
and builds with the faster of the two per operator."""

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
    p.add_argument("--target", required=True, help="host (this machine's CPU), llvm (generic x86-64: slow), "
                                                   '"llvm -mcpu=…", a JSON dict, or a hardware target name')
    p.add_argument("--input-shapes", help='fixed input shapes, e.g. "input:[1,3,224,224] mask:[1,128]"')
    p.add_argument("--model-format", choices=["onnx", "pt2"], help="default: from the file suffix")
    p.add_argument("-o", "--output", default="module.tar", help="artifact path (default module.tar)")
    p.add_argument("--pass", dest="tasd_pass", choices=["tasd"], help="rewrite with TASD before building")
    p.add_argument("--tasd-hw", help="N:M hardware deciding the series and the modelled costs "
                                     "(default: the --target hardware, else the plan's, else cpu-emulated)")
    choice = p.add_mutually_exclusive_group()
    choice.add_argument("--tasd-config", help="one series for every layer, e.g. 2:8+1:8")
    choice.add_argument("--tasd-plan", help="per-layer series: a plan.json from tasd search")
    choice.add_argument("--tasd-error-threshold", type=float, metavar="E",
                        help="per layer, the cheapest series whose relative weight error is ≤ E "
                             "(nothing checks the model's quality)")
    p.add_argument("--tasd-activation", metavar="SERIES",
                   help="decompose every matmul and conv layer's input into SERIES at run time (the TASD units; a target "
                        "whose unit takes a sparse activation, e.g. ttc-vegeta-m8); alone, weights stay dense")
    p.add_argument("--tasd-kernels", choices=["auto", "always"],
                   help="auto (default): on cpu-emulated a layer whose series is too dense for its N:M kernel to "
                        "beat the dense kernel runs the dense kernel on its approximated weights; always: every "
                        "rewritten layer runs its N:M kernel")
    p.add_argument("--tasd-report", help="also write the per-layer report (.html, .json or .txt)")
    p.add_argument("--tune", type=float, metavar="SECONDS",
                   help="MetaSchedule-tune the ops TASD leaves to TVM (attention, norms, elementwise) for SECONDS "
                        "of search; operators already in the database are not re-tuned; CPU targets only")
    p.add_argument("--tune-dir", help="the tuning database (default ~/.cache/tvm_tasd/tuning)")

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

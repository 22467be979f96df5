"""The ``tasd`` command: targets, decomposition and the bundled demo.

Errors the user can fix print one line on stderr and exit 2; ``--verbose``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .config import TASDConfig
from .decompose import approximate, kept_magnitude_share, relative_error

DEFAULT_HW = "vegeta-m8"
DEMO_CONFIGS = ("2:8", "4:8", "2:8+1:8", "4:8+2:8")


class UserError(Exception):
    """A mistake in the command line or its inputs: printed as one line."""


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def cmd_targets(args) -> None:
    from .hardware import list_targets, load_target

    names = args.target or list_targets()
    rows = []
    for name in names:
        hw = load_target(name)
        rows.append([
            hw.name,
            ", ".join(map(str, hw.patterns)) or "—",
            "+".join(sorted(hw.sparse_operands)) or "—",
            f"{hw.dense_macs_per_cycle:g}",
            f"{hw.clock_ghz:g}",
            str(hw.tvm.kind),
        ])
        if args.target:
            print(f"{hw.name}: {hw.description}\n  file: {hw.source_file}")
    print(_table(rows, ["target", "N:M patterns", "sparse operand", "MACs/cycle", "GHz", "TVM kind"]))


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
    print(_table(rows, ["series", "MAC density", "nonzero density per term", "rel. error", "kept |w|"]))


def _load_weight(args):
    path = Path(args.file)
    if not path.exists():
        raise UserError(f"{path} does not exist")
    if path.suffix == ".npy":
        return np.load(path), args.axis if args.axis is not None else 0
    from .frontend import ModelImportError, _load_onnx
    from onnx import numpy_helper

    try:
        proto = _load_onnx(path)
    except ModelImportError as err:
        raise UserError(str(err)) from None
    inits = {i.name: i for i in proto.graph.initializer}
    if args.name not in inits:
        names = [n for n, i in inits.items() if len(i.dims) >= 2]
        raise UserError(f"no initializer {args.name!r} in {path}; weights there: {', '.join(names[:8])}")
    weight = numpy_helper.to_array(inits[args.name])
    return weight, args.axis if args.axis is not None else (1 if weight.ndim == 4 else 0)


def cmd_demo(args) -> None:
    """Per layer of a bundled model: weight error and modelled EDP of a few series."""
    from .candidates import layer_cost
    from .frontend import from_onnx
    from .hardware import load_target
    from .layers import find_layers
    from .models.digits import model_path

    hw = load_target(args.hw)
    imported = from_onnx(model_path(args.model), {"input": [args.batch, 64]})
    layers = find_layers(imported.mod)
    print(f"model {args.model} (batch {args.batch}), target {hw.name} — EDP is modelled from {hw.source_file}")
    header = ["layer", "op", "m×k×n"] + [f"{c} err / EDP" for c in args.config]
    rows = []
    totals = {c: [0.0, 0.0] for c in ["dense", *args.config]}  # energy, latency
    for layer in layers:
        dense = layer_cost(hw, layer, "dense")
        totals["dense"][0] += dense.energy_pj
        totals["dense"][1] += dense.latency_s
        row = [layer.name, layer.op, f"{layer.m}×{layer.k}×{layer.n}"]
        for text in args.config:
            config = TASDConfig.parse(text)
            if layer.grouped_length < config.max_m or layer.ineligible:
                cost, cell = dense, "dense (too few channels)" if not layer.ineligible else "dense"
            else:
                approx = approximate(layer.weight, config, axis=layer.axis)
                cost = layer_cost(hw, layer, config)
                cell = f"{relative_error(layer.weight, approx):.1%} / {cost.edp / dense.edp:.2f}×"
            totals[text][0] += cost.energy_pj
            totals[text][1] += cost.latency_s
            row.append(cell)
        rows.append(row)
    edp = {c: e * d for c, (e, d) in totals.items()}
    rows.append(["model", "", ""] + [f"EDP {edp[c] / edp['dense']:.2f}× dense" for c in args.config])
    print(_table(rows, header))
    print("err = relative Frobenius error of the weight; EDP = modelled energy×delay vs the dense model on this target")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tasd", description="TASD: N:M structured decomposition for TVM.")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("targets", help="list or describe hardware targets")
    p.add_argument("target", nargs="*", help="target names or paths of your own .toml files")
    p.set_defaults(func=cmd_targets)

    p = sub.add_parser("decompose", help="decompose one weight and show error/density per series",
                       epilog="example: tasd decompose model.onnx --name fc1.weight --config 2:4 2:8+1:8")
    p.add_argument("file", help="an ONNX model or a .npy array")
    p.add_argument("--name", help="initializer name (ONNX)")
    p.add_argument("--axis", type=int, help="reduction axis (default: 0 for (K, N) matmul weights, 1 for OIHW)")
    p.add_argument("--config", nargs="+", default=["2:4", "2:8+1:8"], help="TASD series, e.g. 2:8+1:8")
    p.set_defaults(func=cmd_decompose)

    p = sub.add_parser("demo", help="the main job on a bundled model")
    p.add_argument("--model", default="digits-mlp", choices=["digits-mlp", "digits-cnn"])
    p.add_argument("--hw", default=DEFAULT_HW, help=f"hardware target (default {DEFAULT_HW})")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--config", nargs="+", default=list(DEMO_CONFIGS))
    p.set_defaults(func=cmd_demo)
    return parser


def tasd_main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (UserError, ValueError, FileNotFoundError, TypeError) as err:
        if args.verbose:
            raise
        print(f"tasd: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(tasd_main())

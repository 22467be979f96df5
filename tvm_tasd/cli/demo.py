"""``tasd demo``: the main job end to end on the bundled digits model, each step shown as its command.

TASDER searches a plan on the training images, ``tvmc`` compiles the model
dense and with the plan, both run on the held-out test images, and the
test accuracy and modelled EDP are printed side by side with the per-layer
table; the report is written as HTML.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..artifact import compile_model, run_artifact
from ..io import save_npz
from ..models.digits import accuracy, load_data, model_path
from ..report import format_table
from ..tasder import search_file
from .common import show_command


def cmd_demo(args) -> None:
    """The full flow on a bundled model: TASDER plan, dense and TASD builds, both run, report."""
    if not 0 < args.budget <= 1:
        raise ValueError(f"--budget is the share of the accuracy to keep, in (0, 1]; got {args.budget}")
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
    show_command(["tasd", "search", model, "--hw", args.hw, "--calibration", calibration, "--metric", "accuracy",
                  "--budget", args.budget, "--batch", 128, "-o", plan])
    search_file(model, args.hw, calibration, plan, metric="accuracy", budget=args.budget, batch=128)

    print("\n2. Compile the model dense and with the plan (tvmc):")
    shapes = {"input": [len(data.test_x), data.test_x.shape[1]]}
    shape_text = f"input:[{len(data.test_x)},{data.test_x.shape[1]}]"
    show_command(["tvmc", "compile", model, "--target", "host", "--input-shapes", shape_text, "--tasd-hw", args.hw,
                  "-o", dense_tar])
    dense = compile_model(model, dense_tar, "host", shapes, hw=args.hw)
    show_command(["tvmc", "compile", model, "--target", "host", "--input-shapes", shape_text, "--pass", "tasd",
                  "--tasd-hw", args.hw, "--tasd-plan", plan, "--tasd-report", html, "-o", tasd_tar])
    tasd = compile_model(model, tasd_tar, "host", shapes, tasd=True, hw=args.hw, plan=plan, report=html)

    print("\n3. Run both on the held-out test images (the emulated target runs on this CPU):")
    scores = {}
    for name, tar in (("dense", dense_tar), ("TASD", tasd_tar)):
        show_command(["tvmc", "run", tar, "--inputs", test])
        (logits,) = run_artifact(tar, {"input": data.test_x}).outputs.values()
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

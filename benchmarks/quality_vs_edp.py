"""Quality vs modelled EDP: TASDER against one-shot single-pattern baselines.

For each model and target: every supported single-pattern config applied
uniformly with magnitude selection (apex-style N:M pruning), with the
Wanda score |w|·‖x‖ (calibration channel norms) and with SparseGPT's OBS
reconstruction (matmul and conv layers), the paper's magnitude TASD series (also
activation-aware and OBS-reconstructed), and TASDER plans at several budgets. Quality is measured on data the
search never saw (onnxruntime, weights replaced); EDP is **modelled**
(``tvm_tasd.cost``, the target's file) over the model's matmul/conv layers,
relative to the same model running dense on the same target.

Models: ``minilm`` (all-MiniLM-L6-v2; calibration SICK_trial, unseen STS15
images + STS16 headlines, Spearman), ``crepe-tiny`` / ``crepe-full`` (RPA on synthetic tones,
calibration and test from different seeds), ``digits-mlp`` / ``digits-cnn``
(accuracy; calibration = training images, unseen = the test split),
``ppocr-rec`` (PP-OCRv4 text recognition, line accuracy) and ``ppocr-cls``
(orientation accuracy) on lines rendered offline, calibration and test from
different seeds.

    python benchmarks/quality_vs_edp.py [--models minilm digits-mlp ...]
        [--targets vegeta-m8 stc-2of4 ttc-vegeta-m8] [--budgets 0.98 0.99 0.995] [--quick]

Writes ``quality_vs_edp.{json,md}``, one SVG plot per model and target, and the committed plans under
``results/plans/`` (``<model>_<target>.json`` at budget 0.99).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx

from tvm_tasd import tasder
from tvm_tasd.benchmarks.common import RESULTS, stamp, stamp_markdown, write
from tvm_tasd.evaluation import calibrate
from tvm_tasd.candidates import useful_terms
from tvm_tasd.cost import model_cost
from tvm_tasd.config import TASDConfig
from tvm_tasd.decompose import approximate
from tvm_tasd.evaluation.onnx import OnnxWeightFedModel, run_plan
from tvm_tasd.frontend import from_onnx
from tvm_tasd.hardware import load_target
from tvm_tasd.matcher import find_layers

TASD_SERIES = {"vegeta-m8": ["4:8+2:8", "2:8+1:8", "4:8+1:8"], "stc-2of4": [], "ttc-vegeta-m8": ["4:8+2:8", "2:8+1:8"],
               "vegeta-m4": ["2:4+1:4"], "highlight": ["2:4+2:16"], "ttc-stc": [], "cpu-emulated": ["2:8+1:8"]}


@dataclass
class Task:
    """A model with its calibration feeds and metric, held-out feeds the search checks its plan on
    (never searched or calibrated on), and unseen test feeds and metric (never seen by the search)."""

    name: str
    model: onnx.ModelProto
    calibration: list[dict]
    calibration_metric: Callable
    validation: list[dict]
    validation_metric: Callable
    test: list[dict]
    test_metric: Callable
    fit: list[dict] | None = None  # cross-fitting: the layer statistics come from these, the search scores on the rest

    @property
    def statistics_feeds(self) -> list[dict]:
        """Every batch a one-shot baseline may calibrate on: the same data TASDER gets in all."""
        return [*(self.fit or ()), *self.calibration]

    def search(self, target, budget: float, model=None, **options):
        """TASDER on the calibration data, the plan checked on the validation data."""
        return tasder.search(self.model if model is None else model, target, self.calibration,
                             metric=self.calibration_metric, budget=budget, progress=False,
                             validation=(self.validation, self.validation_metric), fit=self.fit, **options)


def _drawn_calibration(draw: Callable, count: int, cross_fit: bool) -> tuple[list[dict] | None, list[dict], Callable]:
    """(fit feeds, calibration feeds, their metric) from ``draw(count, seed)`` of a synthetic or image set:
    ``count`` samples to calibrate on (seed 1), or with ``cross_fit`` half of them and the other half drawn
    afresh (seed 4) for the layer statistics alone."""
    fit = draw(count // 2, seed=4)[0] if cross_fit else None
    return fit, *draw(count - count // 2 if cross_fit else count, seed=1)


def _sentence_encoder(name: str, quick: bool, cross_fit: bool) -> Task:
    """MiniLM or mpnet: STS Spearman of the mean-pooled embeddings; SICK_trial split for the search."""
    from tvm_tasd.benchmarks.models import minilm

    batch, seq = 50, 40
    tok = minilm.Tokenizer(seq, name)

    def pairs_task(sets):
        feeds, spans = [], []
        for pairs in sets:
            sentences = pairs.first + pairs.second
            if len(sentences) % batch:
                sentences += [""] * (batch - len(sentences) % batch)
            start = len(feeds)
            feeds += [tok(sentences[i : i + batch]) for i in range(0, len(sentences), batch)]
            spans.append((start, len(feeds), len(pairs.gold)))

        def metric(outputs):
            scores = []
            for (start, stop, count), pairs in zip(spans, sets):
                hidden = np.concatenate([outputs[i][0] for i in range(start, stop)])
                mask = np.concatenate([feeds[i]["attention_mask"] for i in range(start, stop)])[..., None]
                pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
                pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
                scores.append(minilm.spearman(pooled[:count], pooled[count : 2 * count], pairs.gold))
            return float(np.mean(scores))

        return feeds, metric

    sick = minilm.load_sts("sick")
    part = lambda start, stop: minilm.STSPairs(sick.first[start:stop], sick.second[start:stop], sick.gold[start:stop])  # noqa: E731
    cut = len(sick.gold) * 3 // 4  # the last quarter of SICK_trial: the search's held-out check
    start = cut // 2 if cross_fit else 0
    calibration, calibration_metric = pairs_task([part(start, cut)])
    validation, validation_metric = pairs_task([part(cut, len(sick.gold))])
    test, test_metric = pairs_task([minilm.load_sts(n) for n in (["sts16"] if quick else ["sts15", "sts16"])])
    model = onnx.load(minilm.onnx_path(batch, seq, name))
    return Task(name, model, calibration, calibration_metric, validation, validation_metric, test, test_metric,
                pairs_task([part(0, start)])[0] if cross_fit else None)


def _crepe(capacity: str, quick: bool, cross_fit: bool) -> Task:
    from tvm_tasd.benchmarks.models import crepe

    batch = 64
    model = onnx.load(crepe.onnx_path(capacity, batch))

    def tones(count, seed):
        frames, f0 = crepe.synthetic_tones(count, seed)
        feeds = [{"frames": frames[i : i + batch]} for i in range(0, count, batch)]
        return feeds, lambda outputs: crepe.raw_pitch_accuracy(np.concatenate([o[0] for o in outputs]), f0)

    fit, calibration, calibration_metric = _drawn_calibration(tones, 256 if quick else 512, cross_fit)
    validation, validation_metric = tones(128, seed=3)
    test, test_metric = tones(256 if quick else 1024, seed=2)
    return Task(f"crepe-{capacity}", model, calibration, calibration_metric, validation, validation_metric, test,
                test_metric, fit)


def _digits(name: str, quick: bool, cross_fit: bool) -> Task:
    from tvm_tasd.models.digits import load_data, model_path

    data = load_data()
    batch = 120

    def feeds_and_metric(x, y):
        feeds = [{"input": x[i : i + batch]} for i in range(0, len(x) - len(x) % batch, batch)]
        labels = y[: len(feeds) * batch]
        return feeds, tasder.accuracy_metric(labels)

    cut = len(data.train_x) * 3 // 4 // batch * batch  # the last quarter of the training set: held out
    start = cut // 2 // batch * batch if cross_fit else 0
    calibration, calibration_metric = feeds_and_metric(data.train_x[start:cut], data.train_y[start:cut])
    validation, validation_metric = feeds_and_metric(data.train_x[cut:], data.train_y[cut:])
    test, test_metric = feeds_and_metric(data.test_x, data.test_y)
    fit = feeds_and_metric(data.train_x[:start], data.train_y[:start])[0] if cross_fit else None
    return Task(name, onnx.load(model_path(name)), calibration, calibration_metric, validation, validation_metric,
                test, test_metric, fit)


def _ppocr(kind: str, quick: bool, cross_fit: bool) -> Task:
    """PP-OCR rec (line accuracy of the CTC decoding) or cls (orientation accuracy) on rendered lines."""
    from tvm_tasd.benchmarks.models import ppocr

    batch = 8

    def lines(count, seed):
        if kind == "rec":
            images, texts = ppocr.text_lines(count, seed)
            score = lambda probabilities: ppocr.line_accuracy(ppocr.ctc_decode(probabilities), texts)  # noqa: E731
        else:
            images, labels = ppocr.orientation_lines(count, seed)
            score = lambda probabilities: ppocr.orientation_accuracy(probabilities, labels)  # noqa: E731
        feeds = [{"x": images[i : i + batch]} for i in range(0, count, batch)]
        return feeds, lambda outputs: score(np.concatenate([o[0] for o in outputs]))

    fit, calibration, calibration_metric = _drawn_calibration(lines, 128 if quick else 256, cross_fit)
    validation, validation_metric = lines(64, seed=3)
    test, test_metric = lines(128 if quick else 512, seed=2)
    model = onnx.load(ppocr.onnx_path(kind, batch))
    return Task(f"ppocr-{kind}", model, calibration, calibration_metric, validation, validation_metric, test,
                test_metric, fit)


def _efficientnet(quick: bool, cross_fit: bool) -> Task:
    """EfficientNet-Lite0: top-1 agreement with the dense network on crops of images no other split uses."""
    from tvm_tasd.benchmarks.models import efficientnet
    from tvm_tasd.evaluation.onnx import inference_session

    batch = 16
    model = onnx.load(efficientnet.onnx_path(batch))
    dense = inference_session(model)

    def crops(split, count, seed):
        images = efficientnet.crops(split, count, seed)
        feeds = [{"images": images[i : i + batch]} for i in range(0, count, batch)]
        reference = np.concatenate([dense.run(None, feed)[0] for feed in feeds])
        return feeds, lambda outputs: efficientnet.top1_agreement(np.concatenate([o[0] for o in outputs]), reference)

    fit, calibration, calibration_metric = _drawn_calibration(
        lambda count, seed: crops("calibration", count, seed), 128 if quick else 256, cross_fit)
    validation, validation_metric = crops("validation", 64, seed=3)
    test, test_metric = crops("test", 128 if quick else 384, seed=2)
    return Task("efficientnet-lite0", model, calibration, calibration_metric, validation, validation_metric, test,
                test_metric, fit)


TASKS = {
    "minilm": lambda *args: _sentence_encoder("minilm", *args),
    "mpnet": lambda *args: _sentence_encoder("mpnet", *args),
    "crepe-tiny": lambda *args: _crepe("tiny", *args),
    "crepe-full": lambda *args: _crepe("full", *args),
    "digits-mlp": lambda *args: _digits("digits-mlp", *args),
    "digits-cnn": lambda *args: _digits("digits-cnn", *args),
    "ppocr-rec": lambda *args: _ppocr("rec", *args),
    "ppocr-cls": lambda *args: _ppocr("cls", *args),
    "efficientnet-lite0": _efficientnet,
}


def load_task(name: str, quick: bool, cross_fit: bool = False) -> Task:
    """A benchmark model's data; ``cross_fit`` gives half the calibration data to the layer statistics
    alone (``Task.fit``; the synthetic and image sets draw that half afresh) and the search scores on the
    other half."""
    if name not in TASKS:
        raise ValueError(f"unknown model {name!r}; benchmark models: {', '.join(TASKS)}")
    return TASKS[name](quick, cross_fit)


def _model_edp(target, layers, dense_edp: float, configs: dict, activations: dict | None = None) -> float:
    """Modelled model EDP (Σ energy × Σ latency over the layers) relative to ``dense_edp``; ``activations``:
    the run-time activation series of a plan's layers."""
    def fitting(layer):
        config = configs.get(layer.name, TASDConfig.dense())
        return config if layer.fits(config) else TASDConfig.dense()

    series = {layer.name: (fitting(layer), (activations or {}).get(layer.name)) for layer in layers}
    return model_cost(target, layers, series).edp / dense_edp


def uniform_weights(layers, config, norms=None, hessians=None, damp=0.01):
    """Weights for a uniform config: magnitude; Wanda-style with channel norms; with ``hessians``, OBS
    reconstruction (SparseGPT) where a layer has one and its channels come in whole groups, Wanda-style
    elsewhere."""
    weights = {}
    for layer in layers:
        if config.is_dense or not layer.fits(config):
            continue
        if hessians is not None and layer.name in hessians and layer.reconstructs(config):
            weights[layer.name] = approximate(layer.weight, config, axis=layer.axis, name=layer.name,
                                              hessian=hessians[layer.name], damp=damp)
            continue
        score = norms[layer.name] if norms is not None else "magnitude"
        weights[layer.name] = approximate(layer.weight, config, axis=layer.axis, score=score, name=layer.name)
    return weights


def plan_weights(plan, layers) -> dict:
    """The approximated weight of every layer the plan does not leave dense, by layer name."""
    by_name = plan.by_name()
    return {layer.name: by_name[layer.name].approximated(layer.weight, layer.axis)
            for layer in layers if layer.name in by_name and not by_name[layer.name].weight.is_dense}


def run_task(task: Task, targets: list[str], budgets: list[float], out_plans, log, damp: float = 0.01) -> list[dict]:
    shapes = {k: list(v.shape) for k, v in task.calibration[0].items()}
    layers = [layer for layer in find_layers(from_onnx(task.model, shapes).mod)]
    test_model = OnnxWeightFedModel(task.model, task.test)
    dense_test = task.test_metric(test_model.run())
    stats = calibrate(task.model, task.statistics_feeds, progress=False, hessians=True)
    norms, hessians = stats.norms, stats.hessians
    rows = []

    def record(target, method, config, weights, edp, plan=None, **extra):
        if plan is not None and any(choice.activation is not None for choice in plan.layers):
            quality = task.test_metric(run_plan(task.model, plan, task.test))  # with its activation series
        else:
            quality = task.test_metric(test_model.run(weights)) if weights else dense_test
        rows.append({"model": task.name, "target": target, "method": method, "config": config,
                     "edp_vs_dense": edp, "quality": quality, "relative_quality": quality / dense_test, **extra})
        log(f"{task.name:11s} {target:14s} {method:22s} {config:10s} EDP {edp:.3f}  quality {quality / dense_test:.4f}")

    for target_name in targets:
        target = load_target(target_name)
        dense_edp = model_cost(target, layers).edp
        singles = [TASDConfig((t,)) for t in useful_terms(target)]
        series = [TASDConfig.parse(s) for s in TASD_SERIES.get(target_name, [])]
        for config in singles:
            edp = _model_edp(target, layers, dense_edp, {l.name: config for l in layers})
            record(target_name, "magnitude N:M", str(config), uniform_weights(layers, config), edp)
            record(target_name, "Wanda N:M", str(config), uniform_weights(layers, config, norms), edp)
            record(target_name, "SparseGPT N:M", str(config),
                   uniform_weights(layers, config, norms, hessians, damp), edp)
        for config in series:
            edp = _model_edp(target, layers, dense_edp, {l.name: config for l in layers})
            record(target_name, "magnitude TASD", str(config), uniform_weights(layers, config), edp)
            record(target_name, "activation-aware TASD", str(config), uniform_weights(layers, config, norms), edp)
            record(target_name, "OBS TASD", str(config), uniform_weights(layers, config, norms, hessians, damp), edp)
        for budget in budgets:
            start = time.perf_counter()
            plan = task.search(target, budget, damp=damp)
            seconds = time.perf_counter() - start
            by_name = plan.by_name()
            weights = plan_weights(plan, layers)
            edp = _model_edp(target, layers, dense_edp, {n: e.weight for n, e in by_name.items()},
                             {n: e.activation for n, e in by_name.items()})
            record(target_name, f"TASDER @ {budget}", "per layer", weights, edp, plan=plan, search_seconds=seconds,
                   calibration_relative=plan.info["quality"]["relative"],
                   held_out_relative=plan.info["quality"]["held_out"]["relative"], search=plan.info["search"],
                   choices=plan_choices(plan))
            if budget == 0.99 and out_plans is not None:
                out_plans.mkdir(parents=True, exist_ok=True)
                plan.save(out_plans / f"{task.name}_{target_name}.json")
    return rows


def plan_choices(plan) -> dict:
    """What a plan chose, compactly: how many layers took each weight series and method, and which
    layers took an activation series (the run-time route the weight-only twin lacks)."""
    return {"weight": dict(Counter(str(c.weight) for c in plan.layers).most_common()),
            "method": dict(Counter(c.method for c in plan.layers if not c.weight.is_dense).most_common()),
            "activation": {c.name: str(c.activation) for c in plan.layers if c.activation is not None}}


def _choices_line(row: dict) -> str:
    choices = row["choices"]
    weights = ", ".join(f"{config} ×{count}" for config, count in choices["weight"].items())
    methods = ", ".join(f"{method} ×{count}" for method, count in choices["method"].items()) or "none"
    acts = choices["activation"]
    activation = (f"{len(acts)}: " + ", ".join(f"`{name}` {config}" for name, config in acts.items())) if acts else "none"
    return f"- {row['method']}: weights {weights}; methods {methods}; activation series {activation}."


def to_markdown(data: dict) -> str:
    lines = ["# Quality vs modelled EDP", "", *stamp_markdown(data["meta"]), "",
             "Quality is measured on unseen data (relative to the dense model); EDP is **modelled** "
             "(`tvm_tasd.cost`, target files in `hardware_targets/`) over the matmul/conv layers, "
             "relative to the same model running dense on the same target. SparseGPT N:M and OBS TASD "
             "choose the mask by SparseGPT's OBS sweep on each layer's calibration Hessian, then re-fit "
             "every kept value to it by least squares (stronger than SparseGPT as published; matmul and "
             "ungrouped conv layers with K ≤ 4096, the others take the Wanda score). TASDER searches on the "
             "calibration data and checks its plan on a held-out part; the test data is seen by neither."
             + (" Cross-fitted (`--cross-fit`): TASDER's layer statistics and OBS fits come from one half of "
                "the calibration data and it scores states on the other; the baselines calibrate on both halves."
                if data["meta"].get("cross_fit") else ""), ""]
    for (model, target) in dict.fromkeys((r["model"], r["target"]) for r in data["rows"]):
        lines += [f"## {model} on {target}", "", "| method | config | EDP vs dense | relative quality (unseen) |",
                  "|---|---|---:|---:|"]
        for r in (r for r in data["rows"] if r["model"] == model and r["target"] == target):
            config = r["config"] + (f" (held out: {r['held_out_relative']:.4f})" if "held_out_relative" in r else "")
            lines.append(f"| {r['method']} | {config} | {r['edp_vs_dense']:.3f} | {r['relative_quality']:.4f} |")
        lines.append("")
        chosen = [_choices_line(r) for r in data["rows"] if r["model"] == model and r["target"] == target
                  and "choices" in r]
        lines += [*chosen, ""] if chosen else []
    return "\n".join(lines)


def write_plots(rows: list[dict], name: str, out=RESULTS) -> list[str]:
    """One SVG per model and target: every method's (EDP, quality) points."""
    from tvm_tasd.svg import scatter

    files = []
    for model, target in dict.fromkeys((r["model"], r["target"]) for r in rows):
        series: dict[str, list] = {}
        for r in rows:
            if r["model"] == model and r["target"] == target:
                method = "TASDER" if r["method"].startswith("TASDER") else r["method"]
                series.setdefault(method, []).append((r["edp_vs_dense"], r["relative_quality"]))
        svg = scatter(series, f"modelled EDP ÷ dense (hardware_targets/{target}.toml)",
                      "quality ÷ dense (unseen data, measured)", f"{model} on {target}", y_line=0.99)
        path = out / f"{name}_{model}_{target}.svg"
        path.write_text(svg)
        files.append(path.name)
    return files


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["minilm", "crepe-tiny", "digits-mlp", "digits-cnn"], choices=list(TASKS))
    parser.add_argument("--targets", nargs="+", default=["vegeta-m8", "stc-2of4", "ttc-vegeta-m8"])
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.98, 0.99, 0.995])
    parser.add_argument("--quick", action="store_true", help="smaller data sets")
    parser.add_argument("--name", default="quality_vs_edp", help="results file name")
    parser.add_argument("--damp", type=float, default=0.01, help="OBS damping (SparseGPT's default 0.01)")
    parser.add_argument("--cross-fit", action="store_true",
                        help="TASDER fits its layer statistics on half the calibration data and scores on the other")
    args = parser.parse_args(argv)
    rows = []
    for model in args.models:
        task = load_task(model, args.quick, args.cross_fit)
        rows += run_task(task, args.targets, args.budgets, None if args.quick else RESULTS / "plans", print, args.damp)
    data = {"meta": stamp("quality vs modelled EDP (quality measured, EDP modelled)", quick=args.quick,
                          damp=args.damp, cross_fit=args.cross_fit), "rows": rows}
    write(args.name, data, to_markdown(data))
    print("plots:", ", ".join(write_plots(rows, args.name)))


if __name__ == "__main__":
    main()

"""TASDRewrite on small hand-written modules: the IR it produces, compared structurally.

As TVM's own pass tests do, each case writes the module before the pass
and the module the pass must produce, and compares them with
``tvm.ir.assert_structural_equal`` — no model file, no build.
"""

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from tvm_tasd import approximate, decompose
from tvm_tasd.blocked_layout import WEIGHT_K_AXIS_ATTR
from tvm_tasd.hardware import load_target
from tvm_tasd.schedules.selection import kernels_for
from tvm_tasd.transform import LAYERS_ATTR, TASDRewrite

W = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)


@I.ir_module
class Linear:
    @R.function
    def main(x: R.Tensor((4, 16), "float32"), w: R.Tensor((16, 8), "float32")) -> R.Tensor((4, 8), "float32"):
        with R.dataflow():
            y = R.matmul(x, w)
            z = R.nn.relu(y)
            R.output(z)
        return z


@I.ir_module
class DynamicBatch:
    @R.function
    def main(x: R.Tensor(("n", 16), "float32"), w: R.Tensor((16, 8), "float32")) -> R.Tensor(("n", 8), "float32"):
        with R.dataflow():
            y = R.matmul(x, w)
            R.output(y)
        return y


@I.ir_module
class IntegerLayer:
    @R.function
    def main(x: R.Tensor((4, 16), "int32"), w: R.Tensor((16, 8), "int32")) -> R.Tensor((4, 8), "int32"):
        with R.dataflow():
            y = R.matmul(x, w)
            R.output(y)
        return y


def _rewritten(mod, **options):
    options.setdefault("nm_kernels", "always")  # at 4 rows the dense kernel would run every series (below)
    out = TASDRewrite("cpu-emulated", params={"w": W.astype(str(mod["main"].params[1].ty.dtype))}, **options)(mod)
    return out, {str(e["name"]): e for e in out.attrs[LAYERS_ATTR]}


@pytest.mark.parametrize("mod, reason", [(DynamicBatch, "dynamic activation shape"), (IntegerLayer, "only float")])
def test_layers_it_cannot_take_are_left_exactly_as_they_were(mod, reason):
    out, table = _rewritten(mod, config="2:4")
    tvm.ir.assert_structural_equal(out["main"], mod["main"])
    assert reason in table["w"]["reason"] and table["w"]["weight"] == "dense"


def test_a_dense_choice_leaves_the_layer_a_relax_op():
    out, table = _rewritten(Linear, plan={"w": "dense"})
    tvm.ir.assert_structural_equal(out["main"], Linear["main"])
    assert table["w"]["reason"] == "dense (from the plan)"


def _functions(mod: tvm.IRModule) -> tvm.IRModule:
    """The module's functions alone (the pass also records its layer table as a module attribute)."""
    return tvm.IRModule(dict(mod.functions_items()))


def _expected_linear(config: str, dense_kernel: bool = False) -> tvm.IRModule:
    """What the pass must emit for ``Linear``: one fused N:M kernel reading the packed terms as constants — or,
    with ``dense_kernel``, the dense kernel reading the approximated weight —, the ReLU in its output stage."""
    terms = decompose(W, config, axis=0)
    kernels = kernels_for(load_target("cpu-emulated"))
    if dense_kernel:
        runs, kernel = "dense", kernels.dense_matmul(4, 16, 8, "float32", output_activation="relu")
        packed, density = kernel.pack(approximate(W, config, axis=0)), 1.0
    else:
        runs, kernel = config, kernels.nm_matmul(4, 16, 8, [t.pattern for t in terms], "float32",
                                                 output_activation="relu")
        packed, density = kernel.pack(terms), float(sum(t.pattern.density for t in terms))
    symbol = "tasd_matmul_4x16x8_" + runs.replace(":", "_").replace("+", "_") + "_relu"
    attrs = {"tasd.config": runs, "tasd.density": density,
             "tasd.executed_macs": int(kernel.executed_macs), "tirx.is_scheduled": True,
             "op_pattern": 8,  # scheduled already; never fused with neighbours
             "global_symbol": symbol, "tasd.layers": ["w"]}
    if dense_kernel:  # its weight rows may be permuted with its input's columns (a flatten of blocked channels)
        attrs[WEIGHT_K_AXIS_ATTR] = 1
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 16), "float32"))
    w = relax.Var("w", relax.TensorType((16, 8), "float32"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            kernel_var = bb.add_func(kernel.func.with_attrs(attrs), symbol)
            operands = [relax.const(a) for a in packed]
            z = bb.emit_output(relax.call_tir(kernel_var, [x, *operands], relax.TensorType((4, 8), "float32")))
        bb.emit_func_output(z)
    return bb.get()


@pytest.mark.parametrize("config", ["2:4", "2:8+1:8"])
def test_a_layer_becomes_one_kernel_call_on_its_packed_terms(config):
    out, table = _rewritten(Linear, config=config)
    tvm.ir.assert_structural_equal(_functions(out), _expected_linear(config))
    assert table["w"]["weight"] == config and table["w"]["kernel"] == "nm"
    assert table["w"]["executed_macs"] < table["w"]["dense_macs"]


def test_a_series_too_dense_for_its_nm_kernel_runs_the_dense_kernel_on_the_approximated_weight():
    """At 4 rows an N:M entry's index load and the kernel's set-up cost more than 2:8+1:8 saves: the plain CPU
    kernels run it dense, on the same approximated values; ``nm_kernels="always"`` keeps the series' own kernel."""
    config = "2:8+1:8"
    auto, table = _rewritten(Linear, config=config, nm_kernels="auto")
    tvm.ir.assert_structural_equal(_functions(auto), _expected_linear(config, dense_kernel=True))
    assert table["w"]["weight"] == config and table["w"]["kernel"] == "dense"
    assert table["w"]["executed_macs"] == table["w"]["dense_macs"] and table["w"]["weight_error"] > 0
    always, table = _rewritten(Linear, config=config)
    tvm.ir.assert_structural_equal(_functions(always), _expected_linear(config))
    assert table["w"]["kernel"] == "nm"
    x = np.random.default_rng(2).standard_normal((4, 16)).astype(np.float32)
    expected = np.maximum(x @ approximate(W, config, axis=0), 0)
    for mod in (auto, always):
        ex = tvm.compile(mod, target=load_target("cpu-emulated").tvm_target())
        got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(W)).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_kernels_that_emulate_a_unit_always_run_the_series():
    out = TASDRewrite("vegeta-m8", config="4:8+2:8", params={"w": W}, dense_kernels=True)(Linear)  # 4 rows
    assert [e["kernel"] for e in out.attrs[LAYERS_ATTR]] == ["nm"]


def test_an_unknown_kernel_choice_is_a_clear_error():
    with pytest.raises(ValueError, match="nm_kernels must be one of 'auto', 'always', not 'fastest'"):
        TASDRewrite("cpu-emulated", config="2:4", nm_kernels="fastest")


def test_the_pass_is_idempotent_on_its_own_output():
    once, _ = _rewritten(Linear, config="2:4")
    twice = TASDRewrite("cpu-emulated", config="2:4", params={"w": W})(once)
    tvm.ir.assert_structural_equal(twice, once)


@I.ir_module
class TwoLinear:
    @R.function
    def main(x: R.Tensor((4, 16), "float32"), w: R.Tensor((16, 16), "float32"), v: R.Tensor((16, 16), "float32")):
        with R.dataflow():
            y = R.nn.relu(R.matmul(x, w))
            z = R.nn.relu(R.matmul(y, v))  # both with the ReLU in their kernel's output stage
            R.output(z)
        return z


def test_layers_of_one_shape_and_series_share_one_kernel():
    """The kernel is compiled once; each call reads its own layer's packed terms, so the outputs stay exact."""
    rng = np.random.default_rng(1)
    w, v = (rng.standard_normal((16, 16)).astype(np.float32) for _ in range(2))
    x = rng.standard_normal((4, 16)).astype(np.float32)
    out = TASDRewrite("cpu-emulated", config="2:8+1:8", params={"w": w, "v": v})(TwoLinear)
    kernels = [f for _, f in out.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert len(kernels) == 1 and [str(n) for n in kernels[0].attrs["tasd.layers"]] == ["w", "v"]
    ex = tvm.compile(out, target=load_target("cpu-emulated").tvm_target())
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](*(tvm.runtime.tensor(a) for a in (x, w, v))).numpy()
    approx = [approximate(a, "2:8+1:8", axis=0) for a in (w, v)]
    np.testing.assert_allclose(got, np.maximum(np.maximum(x @ approx[0], 0) @ approx[1], 0), rtol=1e-5, atol=1e-5)


@I.ir_module
class TwoConvs:
    @R.function
    def main(x: R.Tensor((2, 1, 8, 8), "float32"), w1: R.Tensor((16, 1, 3, 3), "float32"),
             w2: R.Tensor((32, 16, 3, 3), "float32")) -> R.Tensor((2, 32, 8, 8), "float32"):
        with R.dataflow():
            y = R.nn.conv2d(x, w1, padding=(1, 1, 1, 1))
            z = R.nn.conv2d(y, w2, padding=(1, 1, 1, 1))
            R.output(z)
        return z


def test_dense_kernels_take_every_conv_except_those_with_too_short_a_reduction():
    """1×3×3 = 9 values per output stays TVM's conv (the kernel loses there: llvm_conv2d.MIN_DENSE_REDUCTION);
    16×3×3 goes through the scheduled dense kernel."""
    rng = np.random.default_rng(0)
    params = {"w1": rng.standard_normal((16, 1, 3, 3)).astype(np.float32),
              "w2": rng.standard_normal((32, 16, 3, 3)).astype(np.float32)}
    mod = relax.transform.BindParams("main", params)(TwoConvs)
    hw = load_target("cpu-emulated")
    with hw.tvm_target():
        out = TASDRewrite(hw, config="dense", dense_kernels=True)(mod)
    kernels = [gv.name_hint for gv in out.functions if gv.name_hint.startswith("tasd_")]
    assert kernels == ["tasd_conv2d_128x144x32_dense"]
    ops = [b.value.op.name for b in out["main"].body.blocks[0].bindings if isinstance(b.value, relax.Call)
           and isinstance(b.value.op, tvm.ir.Op)]
    assert ops.count("relax.nn.conv2d") == 1 and "relax.call_tir" in ops

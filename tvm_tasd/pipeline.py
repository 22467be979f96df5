"""``tvm_tasd.build``: rewrite with TASD, lower and compile for the target.

The flow: :class:`~tvm_tasd.transform.TASDRewrite` (a no-op on an already
rewritten module) → optionally MetaSchedule tuning of the ops it left to TVM
(``tuning=``, :mod:`~tvm_tasd.tuning`) → a Relax pipeline (on the CPU TVM's CPU pipeline:
``LegalizeOps``, fusion, every op the rewrite left to TVM scheduled right
after fusion, VM lowering; :func:`relax_pipeline`) → ``tvm.compile`` for the target's TVM target: the host CPU for
every modelled target, CUDA for ``stc-2of4``; ``target=`` overrides it
(a ``Target``, a dict, or a flag string such as ``"cuda -arch=sm_90"``:
:func:`as_tvm_target`).
The N:M kernels arrive already scheduled from ``tvm_tasd.schedules``
(``schedules.selection`` picks them by the target's intrinsic family and
kind); on the CPU, dense layers use the scheduled dense kernel of the same
file so a dense build and a TASD build compare fairly, dense convs in
blocked channels (``blocked_channels``: :mod:`~tvm_tasd.blocked_layout`).

The returned :class:`TASDExecutable` is a ``relax.VMExecutable`` —
``relax.VirtualMachine(ex, tvm.cpu())`` runs it — that also carries the
per-layer table (``layers``): each layer's choice (weight and activation
series, score, reason), the MACs its kernel executes, counted from the
compiled kernel's shape (``executed_macs``), next to the dense count
(``dense_macs``), and the relative weight error; ``choices`` gives the same
decisions as :class:`~tvm_tasd.policy.Choice` values.
"""

from __future__ import annotations

import contextlib
import warnings

import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu

from .hardware import load_target
from .policy import Choice, TASDWarning
from .schedules.llvm_common import host_target
from .schedules.llvm_default import default_cpu_schedule
from .schedules.llvm_depthwise_rows import depthwise_row_legalizations
from .schedules.llvm_fast_math import fast_math_legalizations
from .transform import LAYERS_ATTR, TASDRewrite
from .tuning import Tuning, tune


class TASDExecutable(relax.VMExecutable):
    """A compiled model plus the TASD layer table of the module it came from."""

    def __init__(self, executable: relax.VMExecutable, module: tvm.IRModule, hardware: str):
        super().__init__(executable.mod)
        self.module = module
        self.hardware = hardware

    @property
    def layers(self) -> list[dict]:
        attrs = self.module.attrs
        table = attrs[LAYERS_ATTR] if attrs is not None and LAYERS_ATTR in attrs else []
        return [{k: plain(v) for k, v in entry.items()} for entry in table]

    @property
    def choices(self) -> dict[str, Choice]:
        """Each layer's :class:`~tvm_tasd.policy.Choice`, by name."""
        return {entry["name"]: Choice.from_json(entry) for entry in self.layers}


def plain(value):
    """FFI values (strings, numbers, arrays) → Python values (None stays None)."""
    if value is None or isinstance(value, (int, float, bool)):
        return value
    if hasattr(value, "value"):
        return value.value
    if isinstance(value, str):
        return str(value)
    return [plain(item) for item in value]


#: Target attributes TVM takes as lists, even with one value (``-mattr=+avx2``).
LIST_ATTRS = ("mattr", "keys", "libs", "options")


def target_spec(text: str) -> dict:
    """``"kind -key=value …"`` (old flag string) → ``{"kind": kind, key: value, …}``.

    TVM 0.27 rejects flag strings. Comma-separated values and the
    :data:`LIST_ATTRS` become lists, digits ints, a bare ``-flag`` True.
    """
    kind, *flags = text.split() or [""]
    spec: dict = {"kind": kind}
    for flag in flags:
        key, has_value, value = flag.lstrip("-").partition("=")
        if not flag.startswith("-") or not key:
            raise ValueError(f"cannot read target {text!r}: after the kind come -key=value flags, got {flag!r}")
        if not has_value:
            spec[key] = True
        elif key in LIST_ATTRS or "," in value:
            spec[key] = value.split(",")
        else:
            spec[key] = int(value) if value.isdigit() else value
    return spec


#: The target name for this machine's own CPU (``llvm -mcpu=<host cpu>``: AVX-512 on a Zen 4 host).
HOST = "host"


def as_tvm_target(target) -> tvm.target.Target:
    """A ``Target``, a dict, a kind name, :data:`HOST`, or a flag string ``"cuda -arch=sm_80"``; a spelled-out
    ``llvm`` that names no CPU gets :func:`warn_if_generic_cpu`'s warning."""
    if isinstance(target, tvm.target.Target):
        return target
    if target == HOST:
        return host_target()
    target = tvm.target.Target(target_spec(target) if isinstance(target, str) else target)
    warn_if_generic_cpu(target, stacklevel=3)
    return target


def warn_if_generic_cpu(target: tvm.target.Target, stacklevel: int = 2) -> None:
    """Warn when an x86 ``llvm`` target names neither a CPU nor its features: LLVM then compiles for generic
    x86-64 (SSE2, 4 fp32 lanes), which ran MiniLM at 8 × 40 in 108 ms against 42 ms for cpu-emulated's AVX2
    and 40 ms for the host's own CPU (dense builds, measured side by side on a Zen 4 host)."""
    if target.kind.name != "llvm" or target.attrs.get("mcpu") is not None or target.attrs.get("mattr"):
        return
    if not str(target.attrs.get("mtriple", "x86_64")).startswith("x86_64"):
        return
    warnings.warn(f"target {target.kind.name} names no CPU: LLVM compiles for generic x86-64 (SSE2, 4 fp32 "
                  f"lanes), about 2.5x slower than AVX2; give '{HOST}' for this machine's CPU, 'cpu-emulated' for "
                  "portable AVX2, or 'llvm -mcpu=…'", TASDWarning, stacklevel=stacklevel + 1)


def fusion_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    """TVM's CPU passes up to fused, still unscheduled TIR: library dispatch, legalization (GELU and softmax
    with fast ``erf``/``exp``: :mod:`~schedules.llvm_fast_math`; depthwise convs on rows no vector fits computed
    on wider rows: :mod:`~schedules.llvm_depthwise_rows`), fusion."""
    # TVM's legalize passes start with a plain LegalizeOps, which finds nothing left after this one.
    legalizations = {**fast_math_legalizations(), **depthwise_row_legalizations(target)}
    return [*cpu.library_dispatch_passes(target),
            relax.transform.LegalizeOps(customize_legalize_map=legalizations),
            *cpu.legalize_passes(target)]


def scheduling_passes(target: tvm.target.Target, tuned: bool = False) -> list[tvm.transform.Pass]:
    """:func:`fusion_passes`, then :func:`~schedules.llvm_default.default_cpu_schedule` for every op the
    rewrite left to TVM; ``tuned``: the tuning database's best schedules first (:mod:`~tvm_tasd.tuning`)."""
    tuned_passes = [relax.transform.MetaScheduleApplyDatabase()] if tuned else []
    return [*fusion_passes(target), *tuned_passes, default_cpu_schedule()]


def relax_pipeline(target: tvm.target.Target, database=None) -> tvm.transform.Pass | str:
    """What ``tvm.compile`` takes as ``relax_pipeline``: for an LLVM target, TVM's CPU pipeline with
    :func:`scheduling_passes` in place of its legalization, so attention, norms and elementwise ops run in
    parallel and vectorised rather than as TVM's plain loop nests; for any other target ``"default"``
    (``tvm.compile`` picks the target's own pipeline, e.g. dlight's GPU rules for CUDA). ``database``: a
    MetaSchedule database from :func:`tvm_tasd.tuning.tune`, whose records win over the default schedules.

    ``tvm.compile``'s default CPU pipeline leaves fusion out because it can drop a ``call_pure_packed`` whose
    result is unused but whose side effect is relied on; imported models and the rewrite emit no such call."""
    if target.kind.name != "llvm":
        return "default"
    passes = [*scheduling_passes(target, tuned=database is not None), *cpu.dataflow_lower_passes(target),
              *cpu.finalize_passes(target)]

    @tvm.transform.module_pass(opt_level=0, name="TASDCPUPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target, database if database is not None else contextlib.nullcontext():  # an empty one is falsy
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def compile_module(mod: tvm.IRModule, target: tvm.target.Target, database=None) -> relax.VMExecutable:
    """``tvm.compile`` of an already rewritten module through :func:`relax_pipeline`."""
    return tvm.compile(mod, target=target, relax_pipeline=relax_pipeline(target, database))


def build(mod: tvm.IRModule, hw, config=None, plan=None, params=None, target=None, tuning: Tuning | None = None,
          **rewrite_options) -> TASDExecutable:
    """Rewrite ``mod`` for hardware ``hw`` and compile it.

    ``config``/``plan``/``params`` and the other options are those of
    :class:`TASDRewrite` (one of ``config``, ``plan`` and ``error_threshold``;
    ``config="dense"`` builds the dense baseline through the same kernels).
    ``target`` overrides the TVM target the hardware file names (see
    :func:`as_tvm_target`); the rewrite picks its kernels for it. ``tuning``: tune the ops the rewrite
    leaves to TVM with MetaSchedule first (:class:`~tvm_tasd.tuning.Tuning`; CPU targets only).
    """
    hardware = load_target(hw)
    rewrite_options.setdefault("dense_kernels", True)
    rewrite_options.setdefault("blocked_channels", True)
    tvm_target = hardware.tvm_target() if target is None else as_tvm_target(target)
    with tvm_target:
        rewritten = TASDRewrite(hardware, config=config, plan=plan, params=params, **rewrite_options)(mod)
        database = None if tuning is None else tune(rewritten, tvm_target, tuning, fusion_passes(tvm_target))
        executable = compile_module(rewritten, tvm_target, database)
    return TASDExecutable(executable, rewritten, hardware.name)

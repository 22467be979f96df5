"""``tvm_tasd.build``: rewrite with TASD, lower and compile for the target.

The emulated flow: :class:`~tvm_tasd.transform.TASDRewrite` (a no-op on an
already rewritten module) → TVM's default Relax pipeline (``LegalizeOps``,
fusion, VM lowering) → ``tvm.compile`` for the target's TVM target (the host
CPU for every modelled target). The N:M kernels arrive already scheduled
from ``tvm_tasd.schedules``; dense layers use the scheduled dense kernel of
the same file so a dense build and a TASD build compare fairly.

The returned :class:`TASDExecutable` is a ``relax.VMExecutable`` —
``relax.VirtualMachine(ex, tvm.cpu())`` runs it — that also carries the
per-layer table: config, reason, and the MACs each kernel executes, counted
from the compiled kernels' shapes (``executed_macs``) next to the dense
count (``dense_macs``).
"""

from __future__ import annotations

import tvm
from tvm import relax

from .hardware import load_target
from .transform import LAYERS_ATTR, TASDRewrite


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
        return [{k: _plain(v) for k, v in entry.items()} for entry in table]


def _plain(value):
    """FFI containers/strings → Python values."""
    if isinstance(value, (int, float, bool)):
        return value
    if hasattr(value, "value"):
        return value.value
    return str(value)


def build(mod: tvm.IRModule, hw, config=None, plan=None, params=None, target=None, **rewrite_options) -> TASDExecutable:
    """Rewrite ``mod`` for hardware ``hw`` and compile it.

    ``config``/``plan``/``params`` are those of :class:`TASDRewrite`; with
    neither config nor plan the pass picks per layer (its error threshold).
    ``target`` overrides the TVM target the hardware file names.
    """
    hardware = load_target(hw)
    rewrite_options.setdefault("dense_kernels", True)
    rewritten = TASDRewrite(hardware, config=config, plan=plan, params=params, **rewrite_options)(mod)
    tvm_target = hardware.tvm_target() if target is None else tvm.target.Target(target)
    with tvm_target:
        executable = tvm.compile(rewritten, target=tvm_target)
    return TASDExecutable(executable, rewritten, hardware.name)

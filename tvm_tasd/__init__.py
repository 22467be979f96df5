"""tvm_tasd: TASD (tensor approximation via structured decomposition) for TVM.

Entry points: :class:`TASDConfig`, :func:`decompose`, :func:`approximate`,
:func:`tvm_tasd.hardware.load_target`, the Relax pass
:class:`TASDRewrite` and :func:`build` (both load TVM on first use).
"""

from importlib import metadata

from .config import MAX_M, MAX_TERMS, NMPattern, TASDConfig
from .decompose import (
    NMTerm,
    approximate,
    compress,
    decompose,
    decompose_activation,
    decompress,
    kept_magnitude_share,
    pseudo_density,
    relative_error,
)


def _installed_version() -> str:
    try:
        return metadata.version("tvm-tasd")
    except metadata.PackageNotFoundError:
        return "unknown"


__version__ = _installed_version()  # recorded in reports and artifacts


def __getattr__(name):
    # TVM takes ~1.5 s to import: the compiler entry points load it on first use only.
    if name == "build":
        from .pipeline import build

        return build
    if name == "TASDRewrite":
        from .transform import TASDRewrite

        return TASDRewrite
    raise AttributeError(f"module 'tvm_tasd' has no attribute {name!r}")


__all__ = [
    "__version__",
    "TASDRewrite",
    "build",
    "MAX_M",
    "MAX_TERMS",
    "NMPattern",
    "NMTerm",
    "TASDConfig",
    "approximate",
    "compress",
    "decompose",
    "decompose_activation",
    "decompress",
    "kept_magnitude_share",
    "pseudo_density",
    "relative_error",
]

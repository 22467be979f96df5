"""tvm_tasd: TASD (tensor approximation via structured decomposition) for TVM.

Entry points: :class:`TASDConfig`, :func:`decompose`, :func:`approximate`,
:func:`load_target`, and the Relax pass ``tvm_tasd.transform.TASDRewrite``.
"""

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

__all__ = [
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

"""N:M patterns and TASD series as validated values, and the pattern math between them.

A configuration is the ordered list of N:M terms that approximate a tensor
(``docs/semantics.md`` §2); ``dense`` is the empty series, meaning the
tensor is used as it is. :meth:`TASDConfig.fits` is the one rule for
whether a series can run along a grouped axis of a given length.

**Which pattern can carry a term** (§5, :func:`pattern_fits`).  A term N:M
runs on a supported N':M' when every aligned M'-window of the reduction
axis is guaranteed to hold ≤ N' nonzeros; :func:`worst_case_nonzeros`
computes that bound exactly for any M, M' (the worst aligned window over one
period lcm(M, M'), each N:M group placing min(N, overlap) nonzeros inside
it).  A supported pattern with N' = M' carries everything but skips nothing.

**Hierarchical patterns** (HighLight, MICRO 2023).  ``"U:Mu>L:Ml"`` means:
the reduction axis is cut into blocks of Ml values; in every run of Mu
blocks at most U blocks hold nonzeros, and a block holds at most L.  An N:M
term fits when (a) every aligned block holds ≤ L nonzeros (exact bound
above) and (b) every aligned span of Mu·Ml values has ≤ U non-empty blocks;
(b) uses the bound min(Mu, worst nonzeros in the span), which is safe (it
never admits a term that could break the pattern) but may reject a term
whose nonzeros could not in fact spread over that many blocks.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

MAX_M = 256  # indices are stored as uint8 positions 0…M−1
MAX_TERMS = 4  # a longer series never pays: each term costs a full pass of the unit

_EXAMPLE = "valid examples: '2:4', '2:8+1:8', 'dense'"
_TERM_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True, order=True)
class NMPattern:
    """One N:M pattern: at most ``n`` nonzeros in every group of ``m``."""

    n: int
    m: int

    def __post_init__(self):
        if not (isinstance(self.n, int) and isinstance(self.m, int)):
            raise ValueError(f"N:M pattern needs integers, got {self.n!r}:{self.m!r}; {_EXAMPLE}")
        if self.m < 1 or self.m > MAX_M:
            raise ValueError(f"M must be in 1…{MAX_M} (uint8 indices), got {self.n}:{self.m}; {_EXAMPLE}")
        if self.n < 1 or self.n > self.m:
            raise ValueError(f"N must be in 1…M, got {self.n}:{self.m}; {_EXAMPLE}")

    @classmethod
    def parse(cls, text: str) -> "NMPattern":
        match = _TERM_RE.match(text)
        if not match:
            raise ValueError(f"cannot read N:M term {text!r}; {_EXAMPLE}")
        return cls(int(match.group(1)), int(match.group(2)))

    @property
    def density(self) -> float:
        return self.n / self.m

    @property
    def metadata_bits(self) -> int:
        """Bits of position metadata per kept value: ceil(log2 M)."""
        return math.ceil(math.log2(self.m)) if self.m > 1 else 0

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


def _level_bits(p: NMPattern) -> int:
    """Index bits per kept element at one level; none when every slot is kept."""
    return 0 if p.n == p.m else p.metadata_bits


@functools.cache  # asked for every layer × candidate series by the policy and the search
def worst_case_nonzeros(term: NMPattern, window: int) -> int:
    """Most nonzeros an N:M tensor can put in one aligned window of ``window`` values.

    Groups of M and windows both start at 0 on the reduction axis; the pattern
    of overlaps repeats every lcm(M, window) values, so scanning one period
    covers every window.  Each group contributes min(N, overlap).
    """
    worst = 0
    for start in range(0, math.lcm(term.m, window), window):
        end = start + window
        total = 0
        for g in range(start // term.m, (end - 1) // term.m + 1):
            overlap = min(end, (g + 1) * term.m) - max(start, g * term.m)
            total += min(term.n, overlap)
        worst = max(worst, total)
    return worst


@dataclass(frozen=True)
class HierarchicalPattern:
    """Two-level structured sparsity ``upper>lower`` (see the module docstring)."""

    upper: NMPattern  # U:Mu — non-empty blocks per run of Mu blocks
    lower: NMPattern  # L:Ml — nonzeros per block of Ml values

    @classmethod
    def parse(cls, text: str) -> "HierarchicalPattern":
        upper, _, lower = text.partition(">")
        return cls(NMPattern.parse(upper), NMPattern.parse(lower))

    @property
    def density(self) -> float:
        return self.upper.density * self.lower.density

    @property
    def group_size(self) -> int:
        """Values per span: the reduction axis is padded to a multiple of it."""
        return self.upper.m * self.lower.m

    @property
    def metadata_bits_per_value(self) -> float:
        """Lower-level index per kept value plus the block index shared by a block's values."""
        return _level_bits(self.lower) + _level_bits(self.upper) / self.lower.n

    def fits(self, term: NMPattern) -> bool:
        blocks = min(self.upper.m, worst_case_nonzeros(term, self.group_size))
        return worst_case_nonzeros(term, self.lower.m) <= self.lower.n and blocks <= self.upper.n

    def __str__(self) -> str:
        return f"{self.upper}>{self.lower}"


SupportedPattern = NMPattern | HierarchicalPattern


def pattern_fits(supported: SupportedPattern, term: NMPattern) -> bool:
    """Is every N:M ``term`` tensor guaranteed to be a valid ``supported`` tensor?"""
    if isinstance(supported, HierarchicalPattern):
        return supported.fits(term)
    return worst_case_nonzeros(term, supported.m) <= supported.n


def pattern_shape(p: SupportedPattern) -> tuple[float, int, float]:
    """(density, group size, metadata bits per kept value) of a supported pattern."""
    if isinstance(p, HierarchicalPattern):
        return p.density, p.group_size, p.metadata_bits_per_value
    return p.density, p.m, _level_bits(p)


@dataclass(frozen=True)
class TASDConfig:
    """An ordered TASD series, e.g. ``TASDConfig.parse("2:8+1:8")``.

    ``terms`` is empty for ``dense``. ``str()`` gives back the canonical text.
    """

    terms: tuple[NMPattern, ...] = ()

    def __post_init__(self):
        if not isinstance(self.terms, tuple) or not all(isinstance(t, NMPattern) for t in self.terms):
            raise ValueError(f"TASDConfig takes a tuple of NMPattern terms (or use TASDConfig.parse('2:8+1:8')), "
                             f"got {self.terms!r}")
        if len(self.terms) > MAX_TERMS:
            raise ValueError(
                f"a series has at most {MAX_TERMS} terms, got {len(self.terms)} "
                f"({'+'.join(map(str, self.terms))}); {_EXAMPLE}"
            )

    @classmethod
    def parse(cls, value: "str | TASDConfig") -> "TASDConfig":
        if isinstance(value, TASDConfig):
            return value
        if not isinstance(value, str):
            raise ValueError(f"a TASD config is a string such as '2:8+1:8', got {type(value).__name__}")
        text = value.strip().lower()
        if text == "dense":
            return cls(())
        if not text:
            raise ValueError(f"empty TASD config; {_EXAMPLE}")
        parts = text.split("+")
        if any(not p.strip() for p in parts):
            raise ValueError(f"TASD config {value!r} has an empty term (stray '+'); {_EXAMPLE}")
        return cls(tuple(NMPattern.parse(p) for p in parts))

    @classmethod
    def dense(cls) -> "TASDConfig":
        return cls(())

    @property
    def is_dense(self) -> bool:
        return not self.terms

    @property
    def density(self) -> float:
        """MAC density Σ Nᵢ/Mᵢ (1.0 for dense)."""
        return 1.0 if self.is_dense else sum(t.density for t in self.terms)

    @property
    def max_m(self) -> int:
        return max((t.m for t in self.terms), default=1)

    @property
    def period(self) -> int:
        """lcm of the terms' M: the span after which every term's groups line up again."""
        return math.lcm(*(t.m for t in self.terms)) if self.terms else 1

    def fits(self, grouped_length: int) -> bool:
        """Whether the series can run along a grouped axis this long (§1): its largest M must fit."""
        return self.is_dense or grouped_length >= self.max_m

    def __str__(self) -> str:
        return "dense" if self.is_dense else "+".join(map(str, self.terms))

    def __repr__(self) -> str:
        return f"TASDConfig.parse({str(self)!r})"

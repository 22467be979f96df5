"""TASD series configurations: ``N1:M1+N2:M2+…`` strings as validated values.

A configuration is the ordered list of N:M terms that approximate a tensor
(DESIGN §2, "A TASD series"); ``dense`` is the empty series, meaning the
tensor is used as it is.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class TASDConfig:
    """An ordered TASD series, e.g. ``TASDConfig.parse("2:8+1:8")``.

    ``terms`` is empty for ``dense``. ``str()`` gives back the canonical text.
    """

    terms: tuple[NMPattern, ...] = ()

    def __post_init__(self):
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

    def __str__(self) -> str:
        return "dense" if self.is_dense else "+".join(map(str, self.terms))

    def __repr__(self) -> str:
        return f"TASDConfig.parse({str(self)!r})"

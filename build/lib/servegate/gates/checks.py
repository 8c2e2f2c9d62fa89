"""Gate checks: one named comparison each, so reports and registry tags say exactly what failed."""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Literal

Comparison = Literal["<=", ">="]
_OPS: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, ">=": operator.ge}


@dataclass(frozen=True)
class Check:
    """``value <op> threshold``; ``gate`` groups checks (parity, load)."""

    gate: str
    name: str
    value: float
    comparison: Comparison
    threshold: float

    @property
    def passed(self) -> bool:
        return _OPS[self.comparison](self.value, self.threshold)

    def describe(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        return f"{self.gate}.{self.name}: {self.value:.6g} {self.comparison} {self.threshold:.6g} {verdict}"

    def as_dict(self) -> dict[str, object]:
        return asdict(self) | {"passed": self.passed}


def failed(checks: Iterable[Check]) -> list[Check]:
    return [c for c in checks if not c.passed]

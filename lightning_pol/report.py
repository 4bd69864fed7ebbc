"""The verification report: typed, with one ``to_dict()``; apps print it, they do not build it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Segment:
    start_step: int
    end_step: int
    epoch: int
    reason: str  # "topq" | "random" | "all"
    distances: dict[str, float] | None = None
    normalized: dict[str, float] | None = None
    bit_exact: bool | None = None
    passed: bool | None = None
    error: str | None = None


@dataclass
class Report:
    proof_dir: str
    proof_identity: str | None
    valid: bool
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    segments: list[Segment] = field(default_factory=list)
    coverage: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] = field(default_factory=dict)
    mode: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["segments"] = [asdict(s) for s in self.segments]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, default=_jsonable, allow_nan=True)

    def summary(self) -> str:
        """A short table for the terminal."""
        lines = [f"proof   {self.proof_dir}", f"verdict {'VALID' if self.valid else 'INVALID'}"]
        for name, check in self.checks.items():
            mark = "pass" if check.get("passed") else ("skip" if check.get("passed") is None else "FAIL")
            lines.append(f"  {name:<16}{mark:<6}{check.get('summary', '')}")
        if self.segments:
            lines.append(f"  {'segment':<14}{'epoch':>6} {'reason':<8}{'l2':>12}{'linf':>12}  result")
            for s in self.segments:
                d = s.distances or {}
                res = "exact" if s.bit_exact else ("pass" if s.passed else ("FAIL" if s.passed is False else "-"))
                l2 = f"{d['l2']:.3e}" if "l2" in d else "-"
                linf = f"{d['linf']:.3e}" if "linf" in d else "-"
                lines.append(f"  {s.start_step:>5}->{s.end_step:<6}{s.epoch:>6} {s.reason:<8}{l2:>12}{linf:>12}  {res}{' ' + s.error if s.error else ''}")
        if self.coverage:
            c = self.coverage
            lines.append(
                f"  coverage: expected {c.get('expected', 0):.3f}, measured {c.get('measured', 0):.3f}, "
                f"compute {c.get('compute_fraction', 0):.3f} of training"
            )
        for r in self.reasons:
            lines.append(f"  reason: {r}")
        return "\n".join(lines)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)

"""The verification report: typed checks and segments, with one ``to_dict()``; apps print it, they do not build it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Segment:
    start_step: int
    end_step: int
    epoch: int
    reason: str  # "topq" | "random" | "all"; in a tiered proof also "lead-in" (replayed to reach one) or "span" (tolerant)
    distances: dict[str, float] | None = None
    normalized: dict[str, float] | None = None
    bit_exact: bool | None = None
    passed: bool | None = None
    error: str | None = None


@dataclass
class Check:
    """The outcome of one check: ``passed`` (None: decided elsewhere, or skipped) and a one-line ``summary``."""

    passed: bool | None
    summary: str


@dataclass
class IntegrityCheck(Check):
    """Digests, layout, checkpoint steps and the index log, before any checkpoint is parsed."""

    problems: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)


@dataclass
class CodeCheck(Check):
    """The installed code against the code that trained (the manifest's ``code``), under ``policy``.

    ``recorded`` and ``installed`` are the two code digests; ``differences`` names each file that differs;
    ``untrusted``, under ``pinned``, each installed file the trusted list does not approve; ``classes``
    gives, per named class, its file and both digests."""

    policy: str = "match"
    recorded: str | None = None
    installed: str | None = None
    differences: list[str] = field(default_factory=list)
    untrusted: list[str] = field(default_factory=list)
    classes: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class InitializationCheck(Check):
    """W_0 against the declared strategy (KS tests per tensor), or, for a warm start, through the chain."""

    strategy: str | None = None
    alpha: float | None = None
    bonferroni: bool | None = None
    threshold: float | None = None
    layers: list[dict[str, Any]] = field(default_factory=list)
    #: A pretrained start: the root's ``sha256`` and ``name``, tensors ``from_root``, ``fresh`` strategy and ``fresh_tensors``.
    root: dict[str, Any] | None = None


@dataclass
class HyperparametersCheck(Check):
    """W_0's optimizers and schedulers are what ``configure_optimizers`` declares; every checkpoint follows the schedule."""

    schedule_simulated: bool = False
    problems: list[str] = field(default_factory=list)


@dataclass
class PlateauCheck(Check):
    """Plateau schedulers (``ReduceLROnPlateau``): the replay feeds them the monitored values the proof recorded
    (validation is not re-run); here, whether each value names a monitoring scheduler and a step of the proof."""

    values: int = 0
    monitors: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class ReplayCheck(Check):
    mode: str = "exact"
    segments: int = 0
    failed: list[list[int]] = field(default_factory=list)


@dataclass
class DataCheck(Check):
    """Replayed samples (or all, ``full_dataset``) against the commitment; every epoch a permutation."""

    mismatched_samples: list[int] = field(default_factory=list)
    full_dataset: bool = False
    permutation: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


@dataclass
class ChainCheck(Check):
    """The chain of trust: ``proofs`` from this one to its root, and the verification success rate over it."""

    proofs: list[str] = field(default_factory=list)
    #: The code digest of each link of ``proofs`` (None: a trusted root, or a proof without a code identity).
    codes: list[str | None] = field(default_factory=list)
    parent_from_registry: bool | None = None
    problems: list[str] = field(default_factory=list)
    vsr: float | None = None
    parent_vsr: float = 1.0
    parent_report: dict[str, Any] | None = None


#: The checks a valid proof must pass (the others must not fail).
REQUIRED = ("integrity", "initialization", "data", "replay", "chain")


@dataclass
class Report:
    proof_dir: str
    proof_identity: str | None
    valid: bool
    checks: dict[str, Check] = field(default_factory=dict)
    segments: list[Segment] = field(default_factory=list)
    coverage: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] = field(default_factory=dict)
    mode: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    #: What the verdict rests on that a reader should know (a compiled module, a plateau schedule fed recorded values).
    notes: list[str] = field(default_factory=list)

    def verdict(self) -> bool:
        """Valid: no check failed, and every check of :data:`REQUIRED` that ran passed."""
        return all(c.passed is not False for c in self.checks.values()) and all(
            c.passed is True for name, c in self.checks.items() if name in REQUIRED
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # the checks and segments as JSON objects too

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, default=_jsonable, allow_nan=True)

    def summary(self) -> str:
        return summary(self.to_dict())


def summary(report: dict[str, Any]) -> str:
    """A short table for the terminal, of a report as :meth:`Report.to_dict` gives it (or a merged one)."""
    lines = [f"proof   {report['proof_dir']}", f"verdict {'VALID' if report['valid'] else 'INVALID'}"]
    for name, check in report["checks"].items():
        mark = "pass" if check.get("passed") else ("skip" if check.get("passed") is None else "FAIL")
        lines.append(f"  {name:<16}{mark:<6}{check.get('summary', '')}")
    if report["segments"]:
        lines.append(f"  {'segment':<14}{'epoch':>6} {'reason':<8}{'l2':>12}{'linf':>12}  result")
        for s in report["segments"]:
            d = s.get("distances") or {}
            res = "FAIL" if s.get("passed") is False else ("exact" if s.get("bit_exact") else ("pass" if s.get("passed") else "-"))
            l2 = f"{d['l2']:.3e}" if "l2" in d else "-"
            linf = f"{d['linf']:.3e}" if "linf" in d else "-"
            error = " " + s["error"] if s.get("error") else ""
            lines.append(f"  {s['start_step']:>5}->{s['end_step']:<6}{s['epoch']:>6} {s['reason']:<8}{l2:>12}{linf:>12}  {res}{error}")
    c = report.get("coverage") or {}
    if c:
        lines.append(
            f"  coverage: expected {c.get('expected', 0):.3f}, measured {c.get('measured', 0):.3f}, "
            f"compute {c.get('compute_fraction', 0):.3f} of training"
        )
    settings = report.get("settings") or {}
    for role in ("module", "datamodule"):
        for key, value in _flat(settings.get(f"{role}_overrides") or {}):
            lines.append(f"  override: {role}.{key}={value!r} (the verifier's, not the proof's)")
    lines.extend(f"  note: {n}" for n in report.get("notes", []))
    lines.extend(f"  reason: {r}" for r in report.get("reasons", []))
    return "\n".join(lines)


def _flat(values: dict[str, Any], where: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in values.items():
        at = f"{where}.{key}" if where else key
        out += _flat(value, at) if isinstance(value, dict) else [(at, value)]
    return out


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)

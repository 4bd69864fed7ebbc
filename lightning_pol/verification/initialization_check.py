"""The initialization check: W_0 is exactly a state of the declared module, drawn from the declared strategy."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from lightning_pol import init as strategies
from lightning_pol.errors import PoLError, one_line
from lightning_pol.format.pretrained import declared_root
from lightning_pol.runtime.training_state import model_state
from lightning_pol.verification.pretrained_check import check_pretrained
from lightning_pol.verification.registry import Registry
from lightning_pol.verification.replay import PoLVerifierModule, prover_code
from lightning_pol.verification.report import InitializationCheck, Report


def check_initialization(verifier: PoLVerifierModule, w0: dict[str, Any], report: Report,
                         registry: Registry | None = None, roots: str | os.PathLike[str] | None = None) -> None:
    """W_0 against the declared strategy (a warm start is checked through the chain instead; a pretrained start
    against the trusted root in ``registry`` or the file ``roots``, and its fresh tensors' strategy)."""
    name = verifier.manifest.init.strategy
    try:
        params = verifier.manifest.init.arguments()
        wrong = not_a_state_of(verifier, w0)
        if wrong:
            report.checks["initialization"] = InitializationCheck(False, wrong, strategy=name)
            report.reasons.append(wrong)
            return
        if name == "warm_start":
            report.checks["initialization"] = InitializationCheck(None, "checked through the chain", strategy=name)
            return
        if name == "pretrained":
            passed, summary, details = check_pretrained(verifier, w0, registry, roots)
            report.checks["initialization"] = InitializationCheck(passed, summary, strategy=name, **details)
            if not passed:
                report.reasons.append(summary)
            return
        strategies.declared_parameters(name, params)  # only the strategy's own: never the test's alpha or bonferroni
        module = verifier.make_module()
        with prover_code("the proof's module, loading W_0,"):
            module.load_state_dict(w0["model"])
        result = strategies.check_initialization(module, name, **params)
    except PoLError as e:
        msg = one_line(e)
        report.checks["initialization"] = InitializationCheck(False, msg, strategy=name)
        report.reasons.append(f"initialization check failed: {msg}")
        return
    failed = [layer.name for layer in result.layers if not layer.passed]
    details = result.to_dict()
    report.checks["initialization"] = InitializationCheck(
        result.passed, f"W_0 looks drawn from {name}" if result.passed else f"W_0 does not look drawn from {name}: {failed[:3]}",
        strategy=name, alpha=details["alpha"], bonferroni=details["bonferroni"], threshold=details["threshold"], layers=details["layers"],
    )
    if not result.passed:
        report.reasons.append(f"W_0 is not a fresh {name} initialization (layers {failed[:3]})")


def not_a_state_of(verifier: PoLVerifierModule, w0: Mapping[str, Any]) -> str | None:
    """Why W_0 is not exactly a state the declared module and torch would hold, or None.

    Every later checkpoint is compared with a replay bit for bit; W_0 is only ever a starting point,
    and ``load_state_dict`` and ``set_rng_state`` forgive a float64 bias, a missing BatchNorm counter
    or bytes of the RNG state that torch ignores. So W_0 must have the module's keys, dtypes and
    shapes, and an RNG state that torch gives back unchanged.
    """
    module = verifier.make_module()
    with prover_code("the proof's module state_dict()"):
        fresh = model_state(module)
    model = w0["model"]
    if list(model) != list(fresh):
        return f"W_0 does not hold the declared module's state_dict keys ({sorted(set(model) ^ set(fresh))[:3]} differ)"
    for key, t in fresh.items():
        got = model[key]
        if not isinstance(t, torch.Tensor):  # a module's extra state: of the same kind
            if type(got) is not type(t):
                return f"W_0's {key} is a {type(got).__name__}, the declared module's a {type(t).__name__}"
            continue
        if not isinstance(got, torch.Tensor) or got.dtype != t.dtype or got.shape != t.shape:
            what = f"{got.dtype} {list(got.shape)}" if isinstance(got, torch.Tensor) else type(got).__name__
            return f"W_0's {key} is {what}, the declared module's is {t.dtype} {list(t.shape)}"
    rng = w0.get("rng")
    state = rng.get("torch") if isinstance(rng, Mapping) else None
    if not isinstance(state, torch.Tensor):
        return "W_0 has no torch RNG state"
    saved = torch.get_rng_state()
    try:
        torch.set_rng_state(state)
        canonical = torch.equal(torch.get_rng_state(), state)
    except (RuntimeError, TypeError, ValueError):
        canonical = False
    finally:
        torch.set_rng_state(saved)
    return None if canonical else "W_0's torch RNG state is not one torch would write"


def root_unavailable(verifier: PoLVerifierModule, report: Report, reason: str) -> None:
    """A pretrained proof whose checkpoints reference a root this verifier has not: its initialization check fails
    with ``reason`` (the root untrusted, or its file gone), and the chain ends at that untrusted root."""
    try:
        digest, _, claimed = declared_root(verifier.manifest.init.arguments())
        details: dict[str, Any] = {"root": {"sha256": digest, "name": None, "from_root": len(claimed)}}
    except PoLError:
        details = {}
    report.checks["initialization"] = InitializationCheck(False, reason, strategy=verifier.manifest.init.strategy, **details)
    report.reasons.append(reason)

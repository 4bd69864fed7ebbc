"""``replay_aware``: the prover's own code cheats, so every segment replays exactly.

The verifier replays a proof through the module class the proof names, imported from what is installed where
it runs. A prover who also supplies that code needs no clever trajectory: its module never trains, and after
each optimizer step at a checkpoint it loads the state the proof says comes next, from files shipped beside
its code (the prover has every state of its proof). The replay runs the same code, so it lands on each
checkpoint bit for bit, at no cost to the prover. (A module that noticed the replay, a verifier callback in
``trainer.callbacks``, and cheated only then would be the same attack; this one does not even need to.)

The spoof here: the victim's project is a package ``polvictim`` whose ``VictimModule`` is the victim's model;
the attacker ships a ``polvictim`` of its own, under the same import path, with the cheating module and a
trajectory from a fresh W_0 to the stolen W_T. The verifier of the suite's row has the victim's code
installed (:attr:`Spoof.installed`); :func:`verdicts` tries the other cases: the attacker's code installed
under ``verifier.code`` report, match and pinned (the victim's code reviewed and pinned), and the victim's under report.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from lightning_pol.attacks.toolkit import (
    Stopwatch,
    lerp_state,
    load_into,
    train_with_proof,
)
from lightning_pol.attacks.victim import Spoof, Victim
from lightning_pol.verification.code_check import pin
from lightning_pol.verification.settings import VerifierSettings
from lightning_pol.verification.verifier import verify_proof

PACKAGE = "polvictim"
TRAJECTORY = "trajectory"

_VICTIM = '''"""The victim's project, as its owner publishes it: the module its proofs name."""

from {module} import {name} as _Model


class VictimModule(_Model):
    """The victim's LightningModule."""
'''

_ATTACKER = _VICTIM + '''
    def training_step(self, batch, batch_idx):
        """Never trains: a loss of zero (the optimizer and the schedule still step)."""
        return sum((p * 0.0).sum() for p in self.parameters() if p.requires_grad)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        """At a checkpoint step, become the state the proof says comes next, shipped beside this file."""
        from pathlib import Path

        import torch
        from safetensors.torch import load_file

        shipped = Path(__file__).with_name("{trajectory}") / f"{{self.trainer.global_step}}.safetensors"
        if shipped.exists():
            with torch.no_grad():
                for key, value in load_file(shipped).items():
                    self.state_dict()[key].copy_(value)
'''


@contextmanager
def installed(site: Path | None) -> Iterator[None]:
    """``site`` first on the import path, and :data:`PACKAGE` imported afresh from it (as if installed there)."""
    if site is None:
        yield
        return
    saved = list(sys.path)
    _forget()
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.path[:] = saved
        _forget()
        importlib.invalidate_caches()


def _forget() -> None:
    for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
        del sys.modules[name]


def _write_package(site: Path, source: str) -> Path:
    package = site / PACKAGE
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text('"""The victim\'s project."""\n')
    (package / "model.py").write_text(source)
    return package


def replay_aware(victim: Victim, out: Path, seed_offset: int = 9) -> Spoof:
    """The stolen W_T, proved by a module that loads each checkpoint's state instead of training (see the module)."""
    setup, seed = victim.setup, victim.setup.seed + seed_offset
    base = type(setup.make_model())
    source = _VICTIM.format(module=base.__module__, name=base.__qualname__)
    victim_site, attacker_site = out.parent / f"{out.name}-victim-code", out.parent / f"{out.name}-installed"
    _write_package(victim_site, source)
    clock = Stopwatch()
    with clock:
        package = _write_package(attacker_site, _ATTACKER.format(module=base.__module__, name=base.__qualname__, trajectory=TRAJECTORY))
        fresh = setup.fresh_model(seed)
        w0 = {k: v.detach().clone() for k, v in fresh.state_dict().items()}
        k = setup.every_n_steps
        shipped = package / TRAJECTORY
        shipped.mkdir(exist_ok=True)
        for step in sorted({*range(k, victim.steps, k), victim.steps}):
            state = lerp_state(w0, victim.final, step / victim.steps)
            save_file({n: t.contiguous() for n, t in state.items()}, shipped / f"{step}.safetensors")
        with installed(attacker_site):
            module_class = importlib.import_module(f"{PACKAGE}.model").VictimModule
            model = module_class(**dict(fresh.hparams))
            load_into(model, w0)
            train_with_proof(setup, out, seed=seed, model=model)
    return Spoof(out, clock.seconds, {"victim_code": str(victim_site), "attacker_code": str(attacker_site),
                                      "shipped_states": len(list(shipped.iterdir()))}, installed=victim_site)


def verdicts(spoof: Spoof, verifier: VerifierSettings) -> dict[str, Any]:
    """The spoof under the three code policies with the attacker's code installed (pinned: the victim's code
    reviewed and pinned first), and with the victim's code under ``report``. With the attacker's code, ``report`` and
``match`` accept it: that is the trust boundary."""
    victim_code, attacker_code = Path(spoof.details["victim_code"]), Path(spoof.details["attacker_code"])
    trusted = spoof.proof.parent / f"{spoof.proof.name}-trusted_code.json"
    trusted.unlink(missing_ok=True)
    with installed(victim_code):
        pin([spoof.proof], trusted)
    out: dict[str, Any] = {}
    cases = [("attacker", attacker_code, "report"), ("attacker", attacker_code, "match"), ("attacker", attacker_code, "pinned"),
             ("victim", victim_code, "report")]
    for whose, site, policy in cases:
        settings = verifier.replace(code=policy, trusted_code=trusted if policy == "pinned" else None)
        with installed(site):
            report = verify_proof(spoof.proof, settings)
        code = report.checks.get("code")
        out[f"{whose}_code_{policy}"] = {"verdict": "accepted" if report.valid else "rejected",
                                         "failed_checks": sorted(n for n, c in report.checks.items() if c.passed is False),
                                         "code_check": getattr(code, "summary", None),
                                         "bit_exact": sum(bool(s.bit_exact) for s in report.segments)}
    return out

"""Spoofs with made-up trajectories: ``structurally_correct``, ``infinitesimal_update`` and ``blindfold_topq``.

None of them computes the updates it claims (blindfold computes only the
segments top-Q will pick). Each runs the declared module's loop with a
zero loss, no forward pass, so the optimizer and scheduler states advance
as the declared schedule says, and steers the weights along the made-up path.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import torch

from lightning_pol.attacks.toolkit import (
    SteerWeights,
    Stopwatch,
    lerp_state,
    patch_training_step,
    snapshot,
    steps_per_epoch,
    train_with_proof,
    zero_loss,
)
from lightning_pol.attacks.victim import Spoof, Victim
from lightning_pol.verification.distances import distances
from lightning_pol.verification.selection import update_size


def _no_compute(module: Any, batch: Any, batch_idx: int, real: Any) -> torch.Tensor:
    return zero_loss(module)


def structurally_correct(victim: Victim, out: Path, seed_offset: int = 4) -> Spoof:
    """Checkpoints of the right format and shapes along a made-up trajectory, ending at W_T.

    W_0 is a genuine fresh draw (so it passes the initialization test); every
    later state is random, each tensor drawn with the mean and spread of
    W_T's; the last is W_T itself.
    """
    seed = victim.setup.seed + seed_offset
    clock = Stopwatch()
    with clock:
        model = victim.setup.fresh_model(seed)
        gen = torch.Generator().manual_seed(seed)

        def made_up(done: int, state: dict[str, torch.Tensor]) -> Any:
            if done == victim.steps:
                return victim.final
            out_state = {}
            for k, x in victim.final.items():
                if x.is_floating_point() and x.numel() > 1:
                    out_state[k] = (torch.randn(x.shape, generator=gen, dtype=torch.float64) * x.double().std() + x.double().mean()).to(x.dtype)
                else:
                    out_state[k] = state[k]
            return out_state

        patch_training_step(model, _no_compute)
        train_with_proof(victim.setup, out, seed=seed, model=model, callbacks=[SteerWeights(made_up)])
    return Spoof(out, clock.seconds, {})


def _statistics_only(module: Any, batch: Any, batch_idx: int, real: Any) -> torch.Tensor:
    with torch.no_grad():
        real(batch, batch_idx)  # the forward pass moves BatchNorm's running statistics, as any replayed step will
    return zero_loss(module)


def infinitesimal_update(
    victim: Victim, out: Path, lr: float = 1e-10, lr_hparam: str = "lr", segments: int | None = None,
    max_segments: int = 400, track_buffers: bool = True, seed_offset: int = 5,
) -> Spoof:
    """Fang et al.: W_0 → W_T by linear interpolation, each checkpoint within δ of the last, with a tiny declared learning rate.

    The proof declares the module with ``lr_hparam = lr``, so replaying any
    segment barely moves the weights and lands within ``||W_T - W_0|| / segments``
    of the next checkpoint. ``segments`` (checkpoints after W_0) defaults to
    enough for that spacing to be half the verifier's δ (l2), or the victim's
    number of segments when the verifier has no tolerance, capped by
    ``max_segments`` to bound the proof's size. No training is done.

    The published attack interpolates every tensor, buffers included; a
    verifier that compares BatchNorm's running statistics (this one does)
    sees them move during replay whatever the learning rate. With
    ``track_buffers`` (the default, a stronger attack) every step runs the
    forward pass only, so the buffers evolve as a replay's would; only the
    parameters are interpolated, and the last step lands on W_T.
    """
    k = victim.setup.every_n_steps
    seed = victim.setup.seed + seed_offset
    clock = Stopwatch()
    with clock:
        model = victim.setup.fresh_model(seed, **{lr_hparam: lr})
        w0 = snapshot(model)
        distance = distances(w0, victim.final)["l2"]
        delta = (victim.delta or {}).get("l2")
        needed = segments if segments is not None else (math.ceil(distance / (0.5 * delta)) if delta else math.ceil(victim.steps / k))
        used = max(1, min(needed, max_segments))
        total = used * k
        params = {n for n, _ in model.named_parameters()}

        def along_line(done: int, state: dict[str, torch.Tensor]) -> Any:
            line = lerp_state(w0, victim.final, done / total)
            if not track_buffers or done == total:
                return line
            return {key: line[key] if key in params else value for key, value in state.items()}

        patch_training_step(model, _statistics_only if track_buffers else _no_compute)
        steer = SteerWeights(along_line)
        train_with_proof(victim.setup, out, seed=seed, model=model, callbacks=[steer],
                         trainer_overrides={"max_steps": total, "max_epochs": -1})
    return Spoof(out, clock.seconds, {
        "declared_lr": lr, "distance_l2": distance, "segments_needed": needed, "segments": used,
        "spacing_l2": distance / used, "capped": needed > used, "track_buffers": track_buffers,
    })


def _topq_fooled(proof: Path, honest_starts: set[int], q: int, target: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Read the spoof as top-Q would: in every epoch its Q largest updates must be honest segments, and it must end at W_T."""
    from lightning_pol.format.reader import ProofReader
    from lightning_pol.verification.replay import PoLVerifierModule

    reader = ProofReader(proof)
    verifier = PoLVerifierModule(reader)
    entries = reader.checkpoints
    size = update_size(reader.manifest, functools.lru_cache(maxsize=2)(lambda step: reader.load_checkpoint(reader.manifest.checkpoint_at(step))))
    by_epoch: dict[int, list[tuple[float, int]]] = {}
    for a, b in zip(entries, entries[1:]):  # ranked as the verifier ranks them
        by_epoch.setdefault(verifier.step_epoch(a.step), []).append((size(a.step, b.step), a.step))
    outranked = [e for e, segs in by_epoch.items() if any(a not in honest_starts for _, a in sorted(segs, reverse=True)[:q])]
    final = reader.load_checkpoint(entries[-1])["model"]
    at_target = all(torch.equal(final[key], target[key]) for key in target)
    return {"fakes_outrank_honest_in_epochs": outranked, "ends_at_W_T": at_target, "fooled": not outranked and at_target}


class _BlindfoldPlan:
    """The steering of one blindfold attempt: which steps are honest, and how far each fake step may move."""

    def __init__(self, victim: Victim, epochs: int, per_epoch: int, honest_per_epoch: int, margin: float, w0: dict[str, torch.Tensor]) -> None:
        k = victim.setup.every_n_steps
        self.victim, self.k, self.per_epoch, self.margin = victim, k, per_epoch, margin
        self.total = epochs * per_epoch
        self.starts = list(range(0, self.total, k))
        self.honest_starts = {s for e in range(epochs) for s in [s for s in self.starts if s // per_epoch == e][:honest_per_epoch]}
        self.honest_steps = {t for s in self.honest_starts for t in range(s, min(s + k, self.total))}
        self.fake_steps = self.total - len(self.honest_steps)
        self._segment_start: dict[int, dict[str, torch.Tensor]] = {0: w0}
        self._cap: dict[int, float] = {}
        self._last = w0

    def training_step(self, module: Any, batch: Any, batch_idx: int, real: Any) -> Any:
        return real(batch, batch_idx) if module.trainer.global_step in self.honest_steps else zero_loss(module)

    def steer(self, done: int, state: dict[str, torch.Tensor]) -> Any:
        if done in self.honest_starts:
            self._segment_start[done] = state
        begun = done - self.k
        if begun in self.honest_starts and begun in self._segment_start:  # an honest segment just ended
            size = distances(self._segment_start.pop(begun), state)["l2"]
            e = begun // self.per_epoch
            self._cap[e] = min(self._cap.get(e, math.inf), self.margin * size)
        s = done - 1
        if s in self.honest_steps:
            self._last = state
            return None
        if done == self.total:
            return self.victim.final
        # Move from the last steered state, so the optimizer's momentum adds nothing to the fake update, and as
        # far as the epoch's cap allows: the distance is covered while the honest updates are large.
        remaining = distances(self._last, self.victim.final)["l2"]
        epoch = (s - s % self.k) // self.per_epoch  # the epoch of the segment holding step s, as the verifier counts it
        limit = self._cap.get(epoch, math.inf) / self.k
        self._last = lerp_state(self._last, self.victim.final, 1.0 if remaining <= limit else limit / remaining)
        return self._last


def blindfold_topq(
    victim: Victim, out: Path, honest_per_epoch: int | None = None, epochs: int | None = None, margin: float = 0.9,
    max_epoch_factor: int = 8, seed_offset: int = 6,
) -> Spoof:
    """Fang et al.: the segments top-Q will pick are honest training; all others are cheap interpolations toward W_T.

    In each epoch the first ``honest_per_epoch`` segments (default: the
    verifier's Q) are trained for real from wherever the proof stands. Every
    other step moves the weights toward W_T with no forward pass, as far as
    it can while each fake segment stays below ``margin`` times the epoch's
    smallest honest update, so top-Q picks the honest segments; the last
    step lands on W_T. When the fakes cannot reach W_T that way in ``epochs``
    (default: the victim's), the adversary doubles the epochs it claims and
    starts over, up to ``max_epoch_factor`` times the victim's; every attempt
    counts toward the cost. ``details["topq"]`` says whether the spoof fools
    top-Q.
    """
    setup = victim.setup
    per_epoch = steps_per_epoch(setup)
    base = max(1, math.ceil(victim.steps / per_epoch))
    honest_per_epoch = victim.q if honest_per_epoch is None else honest_per_epoch
    tries = [epochs] if epochs is not None else [base * 2**i for i in range(max_epoch_factor.bit_length()) if 2**i <= max_epoch_factor]
    seed = setup.seed + seed_offset
    clock = Stopwatch()
    attempts: list[dict[str, Any]] = []
    for n_epochs in tries:
        with clock:
            model = setup.fresh_model(seed)
            plan = _BlindfoldPlan(victim, n_epochs, per_epoch, honest_per_epoch, margin, snapshot(model))
            patch_training_step(model, plan.training_step)
            train_with_proof(setup, out, seed=seed, model=model, callbacks=[SteerWeights(plan.steer)],
                             trainer_overrides={"max_epochs": n_epochs, "max_steps": -1})
        topq = _topq_fooled(out, plan.honest_starts, honest_per_epoch, victim.final)
        attempts.append({"epochs": n_epochs, **topq})
        if topq["fooled"]:
            break
    return Spoof(out, clock.seconds, {
        "epochs": n_epochs, "honest_per_epoch": honest_per_epoch, "honest_steps": len(plan.honest_steps),
        "fake_steps": plan.fake_steps, "attempts": attempts, "topq": topq,
        "fake_segments_by_epoch": {e: sum(1 for s in plan.starts if s // per_epoch == e and s not in plan.honest_starts) for e in range(n_epochs)},
        "segments_by_epoch": {e: sum(1 for s in plan.starts if s // per_epoch == e) for e in range(n_epochs)},
    })

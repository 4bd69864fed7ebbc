"""The adversary's tools: train with a proof while cheating outside the declared module, and rewrite claims.

Every spoof is written by the project's own :class:`~lightning_pol.ProofOfLearning`
callback, so its digests, format, index log, optimizer and scheduler states are
self-consistent; the attack lives in what the run does that the declared module
does not (a steering callback, a patched ``training_step``) and in manifest
claims rewritten afterwards through the format's raw-JSON way in
(:func:`~lightning_pol.format.writer.rewrite_manifest_json`).
"""

from __future__ import annotations

import math
import time
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lightning_pol.format.writer import rewrite_manifest_json
from lightning_pol.init import initialize
from lightning_pol.prover.callback import ProofOfLearning

State = dict[str, torch.Tensor]


@dataclass
class Setup:
    """How the victim trains: the factories and settings every attack reuses.

    ``make_model(**overrides)`` and ``make_datamodule(**overrides)`` build the
    declared classes (overrides change hyperparameters, as an attacker may
    declare other ones); ``trainer`` holds ``lightning.Trainer`` keyword
    arguments without callbacks.
    """

    make_model: Callable[..., pl.LightningModule]
    make_datamodule: Callable[..., pl.LightningDataModule]
    trainer: dict[str, Any]
    every_n_steps: int
    init_strategy: str = "pytorch_default"
    init_params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    #: K of a tiered proof, for the honest proof and every spoof (None: every checkpoint in full).
    full_every_n_steps: int | None = None

    def fresh_model(self, seed: int, **overrides: Any) -> pl.LightningModule:
        """The declared module with W_0 drawn from the declared initialization under ``seed``."""
        pl.seed_everything(seed, workers=True, verbose=False)
        return initialize(self.make_model(**overrides), self.init_strategy, **self.init_params)


def snapshot(module: torch.nn.Module) -> State:
    """A detached CPU copy of the module's ``state_dict``."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def lerp_state(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], w: float) -> State:
    """``a + w (b - a)`` per tensor; integer tensors (BatchNorm's step counters) are rounded; w = 1 gives ``b`` exactly."""
    if w == 1:
        return {k: b[k].clone() for k in a}
    out: State = {}
    for k, x in a.items():
        y = b[k]
        if x.is_floating_point():
            out[k] = x + (y - x) * w
        else:
            out[k] = torch.round(x.double() + (y.double() - x.double()) * w).to(x.dtype)
    return out


def load_into(module: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` into the module's tensors in place (the optimizer keeps its parameter objects)."""
    with torch.no_grad():
        for k, v in module.state_dict().items():
            v.copy_(state[k].to(v.device, v.dtype))


def rank_ordered(fresh: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> State:
    """Zhang et al.'s W_0': each tensor's fresh draws, sorted and placed in ``target``'s rank order.

    The values (so every per-layer distribution test) are those of a fresh
    initialization; their arrangement follows the trained weights.
    """
    out: State = {}
    for k, x in fresh.items():
        if not x.is_floating_point() or x.numel() < 2 or bool((x == x.reshape(-1)[0]).all()):
            out[k] = x.clone()
            continue
        flat = torch.empty_like(x.reshape(-1))
        flat[target[k].reshape(-1).argsort()] = x.reshape(-1).sort().values
        out[k] = flat.reshape(x.shape)
    return out


class SteerWeights(Callback):
    """After each optimizer step, let ``steer(step, state)`` replace the module's weights.

    ``step`` is the number of optimizer steps completed; ``steer`` returns the
    new state or None to leave the weights as the step left them. The proof
    callback records the steered weights as if the step had produced them.
    """

    def __init__(self, steer: Callable[[int, State], Mapping[str, torch.Tensor] | None]) -> None:
        self.steer = steer
        self._seen = -1

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._seen:  # accumulating micro-batches: no step yet
            return
        self._seen = step
        new = self.steer(step, snapshot(pl_module))
        if new is not None:
            load_into(pl_module, new)


def patch_training_step(module: pl.LightningModule, step: Callable[[pl.LightningModule, Any, int, Callable[..., Any]], Any]) -> None:
    """Replace ``training_step`` on this instance only: the class, and so the proof's declared module, stays the same."""
    real = module.training_step

    def patched(self: pl.LightningModule, batch: Any, batch_idx: int, *args: Any) -> Any:
        return step(self, batch, batch_idx, real)

    module.training_step = types.MethodType(patched, module)  # type: ignore[method-assign]


def zero_loss(module: torch.nn.Module) -> torch.Tensor:
    """A loss of 0 with a gradient graph and no forward pass: the optimizer still steps (and the schedule advances)."""
    return sum((p * 0.0).sum() for p in module.parameters() if p.requires_grad)  # type: ignore[return-value]


def train_with_proof(
    setup: Setup,
    proof_dir: Path,
    *,
    seed: int,
    model: pl.LightningModule | None = None,
    datamodule: pl.LightningDataModule | None = None,
    callbacks: list[Callback] | None = None,
    trainer_overrides: Mapping[str, Any] | None = None,
) -> pl.LightningModule:
    """Train under ProofOfLearning into ``proof_dir`` (replacing what is there); returns the trained module.

    The prover's own fit-start checks are off (``check_recreation=False``): an attacker does not ask the callback
    whether the verifier would accept a W_0 it chose (a stolen one), it writes the proof and lets the verifier decide."""
    pl.seed_everything(seed, workers=True, verbose=False)
    model = model if model is not None else setup.fresh_model(seed)
    pol = ProofOfLearning(
        proof_dir, every_n_steps=setup.every_n_steps, full_every_n_steps=setup.full_every_n_steps, init_strategy=setup.init_strategy,
        init_params=setup.init_params, seed=seed, overwrite=True, fsync=False, check_recreation=False,
    )
    kwargs = {**setup.trainer, **dict(trainer_overrides or {})}
    kwargs.update(callbacks=[*(callbacks or []), pol], logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False)
    trainer = pl.Trainer(**kwargs)
    trainer.fit(model, datamodule=datamodule if datamodule is not None else setup.make_datamodule())
    return model


def rewrite_claims(proof_dir: Path, edit: Callable[[dict[str, Any]], None], files: Mapping[str, bytes] | None = None) -> str:
    """Change what a proof claims: write ``files`` and edit the manifest's JSON; returns the new identity."""
    return rewrite_manifest_json(proof_dir, edit, files)


class Stopwatch:
    """Wall-clock seconds spent inside ``with`` blocks: an attack's cost, measured in the same run as honest training."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> Stopwatch:
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds += time.perf_counter() - self._t


def steps_per_epoch(setup: Setup) -> int:
    """Optimizer steps in one epoch of the victim's DataLoader."""
    dm = setup.make_datamodule()
    dm.prepare_data()
    dm.setup("fit")
    batches = len(dm.train_dataloader())
    limit = setup.trainer.get("limit_train_batches")
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        batches = min(batches, limit)
    elif isinstance(limit, float) and 0 < limit < 1:
        batches = int(batches * limit)
    return math.ceil(batches / int(setup.trainer.get("accumulate_grad_batches") or 1))


def train_plain(setup: Setup, model: pl.LightningModule, seed: int, trainer_overrides: Mapping[str, Any] | None = None) -> pl.LightningModule:
    """Train without a proof (a donor model someone else trained)."""
    pl.seed_everything(seed, workers=True, verbose=False)
    kwargs = {**setup.trainer, **dict(trainer_overrides or {})}
    kwargs.update(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    pl.Trainer(**kwargs).fit(model, datamodule=setup.make_datamodule())
    return model

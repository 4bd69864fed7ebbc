"""Zhang et al. (IEEE S&P 2022), "Adversarial examples" for Proof-of-Learning.

W_0' is a fresh initialization arranged in W_T's rank order (its values are
a genuine draw, so it passes a distribution test, while it already points
toward W_T). The checkpoints follow the straight line W_0' → W_T. For each
step the adversary perturbs the real batch, within an L∞ ball of ``epsilon``,
so that one step of the declared optimizer on the perturbed batch lands as
close as it can to the next point of the line: gradient matching, solved by
Adam on the perturbation through second derivatives. The proof commits to the
perturbed samples (their leaves and Merkle root), since those are what the
steps used. It relies on the verifier tolerating the matching error δ and on
the perturbed data being accepted as the training data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call

from lightning_pol.attacks.toolkit import (
    SteerWeights,
    Stopwatch,
    lerp_state,
    load_into,
    patch_training_step,
    rank_ordered,
    rewrite_claims,
    snapshot,
    train_with_proof,
)
from lightning_pol.attacks.victim import Spoof, Victim
from lightning_pol.errors import PoLError
from lightning_pol.format import layout as pf
from lightning_pol.format.reader import ProofReader
from lightning_pol.format.safetensors_io import safetensors_bytes
from lightning_pol.format.samples import leaf_hash, root_of
from lightning_pol.verification.distances import distances


class _Crafter:
    """Per step: the batch perturbation whose SGD step best reaches the next point of the line."""

    def __init__(self, path: Any, total: int, iterations: int, epsilon: float, step_size: float) -> None:
        self.path, self.total = path, total
        self.iterations, self.epsilon, self.step_size = iterations, epsilon, step_size
        self.crafted: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # step -> (perturbed inputs, labels) per micro-batch
        self.residuals: list[float] = []

    def _target_gradient(self, module: Any, step: int) -> dict[str, torch.Tensor]:
        """The gradient g with which SGD(lr, momentum, weight decay) moves each parameter to the line's next point."""
        opt = module.trainer.optimizers[0]
        if type(opt) is not torch.optim.SGD or len(opt.param_groups) != 1:
            raise PoLError("adversarial_examples crafts steps for a single-group torch.optim.SGD, as Zhang et al. do")
        group = opt.param_groups[0]
        if group.get("nesterov") or group.get("dampening"):
            raise PoLError("adversarial_examples supports SGD without Nesterov momentum or dampening")
        lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
        target = self.path(step + 1)
        out = {}
        for name, p in module.named_parameters():
            buf = opt.state.get(p, {}).get("momentum_buffer")
            wanted = (p.detach() - target[name].to(p)) / lr  # the momentum buffer after the step
            out[name] = wanted - wd * p.detach() - (mu * buf if buf is not None and mu else 0.0)
        return out

    def training_step(self, module: Any, batch: Any, batch_idx: int, real: Any) -> Any:
        x, y = batch
        step = module.trainer.global_step
        goal = self._target_gradient(module, step)
        params = {n: p for n, p in module.named_parameters() if p.requires_grad}
        goal_norm = sum(float((g**2).sum()) for g in goal.values()) or 1.0
        delta = torch.zeros_like(x, requires_grad=True)
        adam = torch.optim.Adam([delta], lr=self.step_size)
        residual = float("nan")
        with torch.random.fork_rng(devices=[]):  # crafting draws (dropout) must not shift the training stream
            for _ in range(self.iterations):
                buffers = {n: b.clone() for n, b in module.named_buffers()}
                logits = functional_call(module, (params, buffers), ((x + delta).clamp(0.0, 1.0),))
                grads = torch.autograd.grad(F.cross_entropy(logits, y), list(params.values()), create_graph=True)
                loss = sum(((g - goal[n]) ** 2).sum() for n, g in zip(params, grads)) / goal_norm
                residual = float(loss)
                (delta.grad,) = torch.autograd.grad(loss, [delta])
                adam.step()
                with torch.no_grad():
                    delta.clamp_(-self.epsilon, self.epsilon)
        self.residuals.append(residual)
        x_adv = (x + delta.detach()).clamp(0.0, 1.0)
        self.crafted.setdefault(step, []).append((x_adv.detach().cpu(), y.detach().cpu()))
        return real((x_adv, y), batch_idx)


def adversarial_examples(
    victim: Victim, out: Path, epochs: int = 1, iterations: int = 10, epsilon: float = 0.1, step_size: float = 0.01,
    seed_offset: int = 7,
) -> Spoof:
    """Build the spoof for the victim's W_T; claims ``epochs`` of training (default 1, so every sample is perturbed once)."""
    setup = victim.setup
    seed = setup.seed + seed_offset
    honest = ProofReader(victim.proof)
    clock = Stopwatch()
    step_errors: list[float] = []
    with clock:
        model = setup.fresh_model(seed)
        w0 = rank_ordered(snapshot(model), victim.final)
        load_into(model, w0)
        dm = setup.make_datamodule()
        dm.prepare_data()
        dm.setup("fit")
        per_epoch = len(dm.train_dataloader())
        total = epochs * per_epoch

        def path(step: int) -> dict[str, torch.Tensor]:
            return lerp_state(w0, victim.final, step / total)

        crafter = _Crafter(path, total, iterations, epsilon, step_size)

        def on_line(done: int, state: dict[str, torch.Tensor]) -> Any:
            target = path(done)
            step_errors.append(distances(state, target)["l2"])
            return target

        patch_training_step(model, crafter.training_step)
        train_with_proof(setup, out, seed=seed, model=model, datamodule=dm, callbacks=[SteerWeights(on_line)],
                         trainer_overrides={"max_epochs": epochs, "max_steps": -1})
        # Commit to the perturbed data: a sample's leaf is that of the input its step used.
        spoof = ProofReader(out)
        log = spoof.index_log()
        leaves = honest.leaves().clone()
        for step, batches in crafter.crafted.items():
            for (x_adv, labels), indices in zip(batches, log.micro_batches(step)):
                for row, label, i in zip(x_adv, labels.tolist(), indices):
                    leaves[i] = torch.frombuffer(bytearray(leaf_hash((row, label))), dtype=torch.uint8)

        def claim(m: dict[str, Any]) -> None:
            m["data"] = {**honest.manifest.data.to_json(), "root": root_of(leaves)}

        rewrite_claims(out, claim, {pf.LEAVES: safetensors_bytes({pf.LEAVES_KEY: leaves})})
    return Spoof(out, clock.seconds, {
        "epochs": epochs, "iterations": iterations, "epsilon": epsilon,
        "perturbed_samples": sum(len(x) for v in crafter.crafted.values() for x, _ in v),
        "gradient_matching_residual": {"first": crafter.residuals[0], "mean": sum(crafter.residuals) / len(crafter.residuals)},
        "step_error_l2": {"mean": sum(step_errors) / len(step_errors), "max": max(step_errors)},
        "distance_W0_to_W_T_l2": distances(w0, victim.final)["l2"],
    })

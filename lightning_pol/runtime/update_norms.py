"""Update norms: how far a model moved between two checkpoints, per tensor group, as a tiered proof records them.

A verifier chooses its top-Q segments by the size of their updates. In a tiered proof most checkpoints are
digests, so the prover records the sizes and the replay checks them; the prover and the verifier compute
them here, one way (docs/proof-format.md, "Tiered proofs").
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from lightning_pol.runtime.training_state import effective_weights

#: Relative difference up to which a recorded norm and a replayed one agree: the two sums may be reduced in
#: another order (another thread), never by more; a norm a prover changed to steer the selection differs by more.
NORM_RTOL = 1e-6


def tensor_group(key: str) -> str:
    """A state_dict key's group: its first two components (``net.conv1`` of ``net.conv1.weight``, ``layer1.0`` of
    ``layer1.0.bn1.bias``): the submodules of a module held as ``self.net``, the blocks of one that is not. A few
    groups per checkpoint, so the manifest stays small for a network of hundreds of tensors."""
    return ".".join(key.split(".", 2)[:2])


def update_norms(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """``{group: ||after - before||_2}`` over the floating-point tensors of two state_dicts of one model, in float64
    (a pruned tensor as the network computes it), groups in key order of ``after``."""
    a, b = effective_weights(dict(before)), effective_weights(dict(after))
    squares: dict[str, float] = {}
    for key, y in b.items():
        x = a.get(key)
        if not isinstance(y, torch.Tensor) or not y.is_floating_point():
            continue
        if not isinstance(x, torch.Tensor) or x.shape != y.shape:
            raise ValueError(f"{key} is not a tensor of the same shape in both states")
        d = y.detach().to("cpu", torch.float64) - x.detach().to("cpu", torch.float64)
        squares[tensor_group(key)] = squares.get(tensor_group(key), 0.0) + float(d.pow(2).sum())
    return {g: math.sqrt(s) for g, s in squares.items()}


def magnitude(norms: Mapping[str, float]) -> float:
    """The whole update's l2 norm from its groups' (what top-Q ranks segments by)."""
    return math.sqrt(sum(v * v for v in norms.values()))


def norms_disagree(recorded: Mapping[str, float], replayed: Mapping[str, float]) -> str | None:
    """The first group whose recorded norm the replay contradicts, as one line; None when they agree."""
    if set(recorded) != set(replayed):
        extra = sorted(set(recorded) ^ set(replayed))
        return f"the recorded update norms name other tensor groups than the model has ({extra[:3]})"
    for g, v in recorded.items():
        if not math.isclose(v, replayed[g], rel_tol=NORM_RTOL, abs_tol=1e-30):
            return f"the recorded update norm of {g!r} is {v:.6g}, the replay's {replayed[g]:.6g}"
    return None

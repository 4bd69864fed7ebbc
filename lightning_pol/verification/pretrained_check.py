"""A pretrained start, checked: the root is weights this verifier trusts, the claimed tensors are the root's bit
for bit, and the rest of W_0 looks freshly drawn from the declared strategy (KS over those tensors only)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from lightning_pol import init as strategies
from lightning_pol.errors import PoLError, one_line
from lightning_pol.format.pretrained import (
    WeightsFileError,
    declared_root,
    digests,
    layout,
    layouts,
    read_weights,
    tensor_digest,
)
from lightning_pol.format.reader import ProofReader
from lightning_pol.format.strict_json import ProofFormatError
from lightning_pol.peft_init import peft_models
from lightning_pol.runtime.training_state import model_state
from lightning_pol.verification.registry import Registry
from lightning_pol.verification.replay import PoLVerifierModule, prover_code

#: How a verifier adds a root, said where one is unknown.
ADD_ROOT = "python -m lightning_pol.roots add FILE --name NAME --registry PATH"


def trusted_root(digest: str, registry: Registry | None, roots: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """``{"name", "sha256", "tensors", "layouts", "path"}`` of the trusted root with file digest ``digest``: the file
    ``roots`` given for this run (with its ``weights`` read), or one the registry trusts (``path``: where ``roots add``
    found it; None for a root added before roots recorded paths); None when neither is it."""
    if roots is not None:
        got, tensors = read_weights(roots)
        if got == digest:
            return {"name": Path(roots).name, "sha256": got, "tensors": digests(tensors), "layouts": layouts(tensors),
                    "path": os.fspath(roots), "weights": tensors}
    return registry.root(digest) if registry is not None else None


class RootUnavailable(ProofFormatError):
    """A checkpoint references the pretrained root's tensors, and this verifier has not the root to read them from:
    the proof is rejected by its initialization check, as one whose root is not trusted."""


def untrusted(digest: str) -> str:
    return (f"W_0 starts from weights of SHA-256 {digest} that this verifier does not trust; review that file, "
            f"then add it with `{ADD_ROOT}` (or pass roots=FILE)")


def use_trusted_root(reader: ProofReader, registry: Registry | None, roots: str | os.PathLike[str] | None) -> None:
    """Let ``reader`` resolve the references of a pretrained proof to its root's tensors (format.tensor_refs), read
    when a checkpoint first needs them from the file this verifier trusts: ``roots``, or the registry's record of
    where the root was added from (its digest checked again). Unavailable, loading that checkpoint raises
    :class:`RootUnavailable`, which says why."""
    if reader.manifest.init.strategy != "pretrained":
        return

    def load() -> dict[str, torch.Tensor]:
        try:
            digest, _, _ = declared_root(reader.manifest.init.arguments())
        except WeightsFileError as e:
            raise RootUnavailable(one_line(e)) from None
        root = trusted_root(digest, registry, roots)
        if root is None:
            raise RootUnavailable(untrusted(digest))
        weights = root.get("weights")
        if weights is None:
            if not root.get("path"):
                raise RootUnavailable(f"the trusted root {root['name']} was added without recording where its file is, and the proof "
                                       f"refers to its tensors: pass roots=FILE, or add it again")
            try:
                got, weights = read_weights(root["path"])
            except WeightsFileError as e:
                raise RootUnavailable(f"the trusted root {root['name']}: {one_line(e)}; pass roots=FILE") from None
            if got != digest:
                raise RootUnavailable(f"the file of the trusted root {root['name']} ({root['path']}) has changed since it was added "
                                       f"(SHA-256 {got[:16]}...): pass roots=FILE with the file that was added")
        return {root["tensors"][key]: t for key, t in weights.items() if key in root["tensors"]}

    reader.use_root(load)


def check_pretrained(verifier: PoLVerifierModule, w0: dict[str, Any], registry: Registry | None,
                     roots: str | os.PathLike[str] | None) -> tuple[bool, str, dict[str, Any]]:
    """(passed, summary, details) of W_0 against its pretrained declaration."""
    params = verifier.manifest.init.arguments()
    digest, keys, claimed = declared_root(params)
    fresh, fresh_params = params.get("fresh", "pytorch_default"), params.get("fresh_params") or {}
    if fresh not in strategies.STRATEGIES or not isinstance(fresh_params, dict):
        raise PoLError(f"the proof's pretrained start declares fresh strategy {str(fresh)[:40]!r}, not one of {list(strategies.STRATEGIES)}")
    root = trusted_root(digest, registry, roots)
    details: dict[str, Any] = {"root": {"sha256": digest, "name": root["name"] if root else None, "from_root": len(claimed)}}
    if root is None:
        return False, untrusted(digest), details
    model = w0["model"]
    held = set(root["tensors"].values())
    for key, want in claimed.items():
        if key not in model:
            return False, f"the proof claims W_0's {key} from the root, and W_0 has no {key}", details
        name = keys.root_key(key)
        theirs = root["tensors"].get(name) if name is not None else None
        tied = name is not None and theirs is None and want in held  # a key the root lacks, holding one of its tensors
        if tensor_digest(model[key]) != want or name is None or (theirs != want and not tied):
            return False, f"W_0's {key} is not the root's {name!r} ({root['name']}) bit for bit", details
    redraw = params.get("redraw") or []
    if not isinstance(redraw, list) or not all(isinstance(r, str) and r for r in redraw):
        raise PoLError("the proof's pretrained start has a malformed redraw list")
    for key, value in model.items():  # a tensor the root has, of its layout, is the root's unless declared redrawn
        theirs = keys.root_key(key)
        if key not in claimed and not key.startswith(tuple(redraw)) and theirs in root["layouts"] and root["layouts"][theirs] == layout(value):
            return False, f"W_0's {key} is not the root's {theirs!r} ({root['name']}), which has its shape, and a root's tensor is never fresh", details
    module = verifier.make_module()
    if list(keys.peft) != peft_models(module):
        return False, f"the proof maps W_0 to the root through PEFT models at {list(keys.peft)}; the module holds them at {peft_models(module)}", details
    with prover_code("the proof's module, loading W_0,"):
        module.load_state_dict(model)
    fresh_keys = set(model_state(module)) - set(claimed)
    result = strategies.check_initialization(module, fresh, only=fresh_keys, **fresh_params)
    details["root"].update(fresh=fresh, fresh_tensors=len(fresh_keys))
    details.update({k: v for k, v in result.to_dict().items() if k in ("alpha", "bonferroni", "threshold", "layers")})
    failed = [layer.name for layer in result.layers if not layer.passed]
    if failed:
        return False, f"W_0's fresh tensors do not look drawn from {fresh}: {failed[:3]}", details
    return True, f"W_0: {len(claimed)} tensors from root {root['name']} ({digest[:12]}), {len(fresh_keys)} fresh from {fresh}", details

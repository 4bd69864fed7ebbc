"""A pretrained start, declared at fit start: which of W_0's tensors are the published weights, which are fresh.

``ProofOfLearning(init_strategy="pretrained", init_params={"weights": PATH, "prefix": "net.", "redraw": [...]})``:
W_0's tensor ``prefix + k`` that equals the file's ``k`` bit for bit is the root's, and the proof records its
digest and the file's; every other tensor must look freshly drawn from ``fresh`` (``auto`` unless named: what
the constructors drew, transformers' or torch's; with ``fresh_params``), by the same KS test the verifier runs
over those tensors only. Without ``prefix``, the one under which most tensors are the file's is found, and a
PEFT model's renames are undone (``base_model.model.``, ``.base_layer.``): a LoRA fine-tune of a published
model needs no key map. A tensor that is neither (a backbone value changed, a head drawn at another scale)
stops the run here, in one line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lightning_pol import init as strategies
from lightning_pol.errors import PoLError
from lightning_pol.format.pretrained import RootKeys, layout, layouts, read_weights, tensor_digest
from lightning_pol.peft_init import peft_models
from lightning_pol.runtime.training_state import model_state

#: The keys ``init_params`` of a pretrained start may hold.
PARAMS = ("weights", "prefix", "fresh", "fresh_params", "redraw")


def check_params(params: Mapping[str, Any]) -> None:
    """The arguments' form, at construction: a typo fails before training starts."""
    unknown = sorted(set(params) - set(PARAMS))
    if unknown or not isinstance(params.get("weights"), (str, os.PathLike)):
        raise PoLError("init_strategy='pretrained' takes init_params weights=PATH and optionally prefix, fresh, fresh_params"
                       + (f"; unknown {unknown}" if unknown else "; weights is missing"))
    fresh = params.get("fresh", "auto")
    if fresh not in ("auto", *strategies.STRATEGIES):
        raise PoLError(f"init_params fresh={fresh!r} is not a fresh strategy; choose one of {['auto', *strategies.STRATEGIES]}")
    if not isinstance(params.get("prefix", ""), str) or not isinstance(params.get("fresh_params", {}), Mapping):
        raise PoLError("init_params prefix must be a string and fresh_params a mapping")
    strategies.check_parameters(fresh, dict(params.get("fresh_params", {})))
    redraw = params.get("redraw", [])
    if isinstance(redraw, str) or not isinstance(redraw, Sequence) or not all(isinstance(r, str) and r for r in redraw):
        raise PoLError("init_params redraw must be a list of W_0 key prefixes (['head.2.']) drawn afresh")


def pretrained_declaration(module: torch.nn.Module, params: Mapping[str, Any]) -> dict[str, Any]:
    """What the manifest's ``init.params`` records of W_0 (``module`` now); refuses what is neither root nor fresh.

    A tensor the weights have with the same dtype and shape must be the weights' tensor bit for bit, unless its
    key starts with one of ``redraw`` (a head replaced by one of the same shape); one they lack (or have with
    another shape: a new head of other classes) must look freshly drawn, unless it is one of their tensors bit for
    bit (a tied weight they saved once). Where the module holds the published
    model (``prefix``) is found when not given, and PEFT's renames of the model it wraps are undone
    (:class:`~lightning_pol.format.pretrained.RootKeys`)."""
    check_params(params)
    path = os.fspath(params["weights"])
    fresh, fresh_params = strategies.resolve_strategy(module, params.get("fresh", "auto"), dict(params.get("fresh_params", {})))
    redraw = [str(r) for r in params.get("redraw", [])]
    digest, tensors = read_weights(path)
    state = model_state(module)
    peft = tuple(peft_models(module))
    keys = RootKeys(params["prefix"], peft) if "prefix" in params else RootKeys.find(layouts(state), layouts(tensors), peft)
    claimed = {}
    by_layout: dict[str, list[torch.Tensor]] = {}
    for t in tensors.values():
        by_layout.setdefault(layout(t), []).append(t)
    for key, value in state.items():
        name = keys.root_key(key)
        published = tensors.get(name) if name is not None else None
        if not isinstance(value, torch.Tensor) or key.startswith(tuple(redraw)):
            continue
        if published is None:
            # A key the weights lack, holding one of their tensors bit for bit: a tied weight saved once (GPT-2's
            # lm_head is its wte), the root's all the same.
            if name is not None and any(torch.equal(value.detach().cpu(), t) for t in by_layout.get(layout(value), ())):
                claimed[key] = tensor_digest(value)
            continue
        if published.dtype != value.dtype or published.shape != value.shape:
            continue  # a tensor of another layout (a new head of other classes): fresh
        if not torch.equal(published, value.detach().cpu()):
            raise PoLError(f"W_0's {key} is not the weights' {name!r}, which has its shape; a pretrained start takes each "
                           f"tensor of {os.path.basename(path)} as it is, and draws afresh only what the weights do not have")
        claimed[key] = tensor_digest(value)
    if not claimed:
        raise PoLError(f"no tensor of W_0 equals one of {path} under prefix {keys.prefix!r} (its keys: {sorted(tensors)[:3]}...); "
                       f"load the weights before fit, or give the prefix that maps their keys to the module's")
    result = strategies.check_initialization(module, fresh, only=set(state) - set(claimed), **fresh_params)
    failed = [layer for layer in result.layers if not layer.passed]
    if failed:
        raise PoLError(f"W_0's {failed[0].name} is not in {os.path.basename(path)} and not a fresh {fresh} draw ({failed[0].detail}); "
                       f"a pretrained start takes each tensor of the weights as it is, and draws the rest afresh")
    return {"root": {"sha256": digest, "file": os.path.basename(path)}, "prefix": keys.prefix, **({"peft": list(peft)} if peft else {}),
            "fresh": fresh, "fresh_params": fresh_params, "redraw": redraw, "tensors": claimed}

"""The declared initialization of W_0, resolved at fit start and checked there as the verifier will check it.

``init_strategy="auto"`` (the default) declares what the module's own constructors drew: transformers'
initialization for the ``PreTrainedModel``s it holds and torch's for the rest. Whatever is declared, W_0 is
then put through the verifier's initialization test before anything is written, so that a W_0 the verifier
would reject (a model drawn otherwise than declared) stops the run in one line instead of producing a proof
that fails. A warm start is checked through its parent, a pretrained start by :mod:`.pretrained`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from lightning_pol import init as strategies
from lightning_pol.errors import PoLError
from lightning_pol.prover.pretrained import check_params, pretrained_declaration

#: What ``init_strategy`` may name: a strategy a proof records, or ``auto``, which is resolved into one of them.
DECLARABLE = ("auto", *strategies.STRATEGIES, "warm_start", "pretrained")


def check_declaration(strategy: str, params: Mapping[str, Any]) -> None:
    """The declaration's form, at construction: a typo fails before training starts."""
    if strategy not in DECLARABLE:
        raise PoLError(f"unknown init_strategy {strategy!r}; choose one of {list(DECLARABLE)}")
    if strategy == "pretrained":
        check_params(params)
    elif strategy == "auto" or strategy in strategies.STRATEGIES:
        strategies.check_parameters(strategy, dict(params))


def declare_initialization(module: torch.nn.Module, strategy: str, params: Mapping[str, Any], check: bool) -> tuple[str, dict[str, Any]]:
    """The strategy and parameters the manifest records for W_0 (``module`` now); with ``check``, PoLError in one
    line where the verifier's initialization test would reject W_0 under them."""
    if strategy == "pretrained":
        return strategy, pretrained_declaration(module, params)
    if strategy == "warm_start":
        return strategy, dict(params)
    strategy, declared = strategies.resolve_strategy(module, strategy, dict(params))
    if check:
        result = strategies.check_initialization(module, strategy, **declared)
        failed = [layer for layer in result.layers if not layer.passed]
        if failed:
            raise PoLError(f"W_0 is not a fresh {strategy} draw, so the verifier would reject this proof ({failed[0].name}: "
                           f"{failed[0].detail}); declare the init_strategy it was drawn with, or if that is {strategy!r}, "
                           f"seed again (an honest draw fails 1 time in 100)")
    return strategy, declared

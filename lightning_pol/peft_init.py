"""PEFT's LoRA under a proof: the initialization of its adapters, and where PEFT puts the tensors it wraps.

LoRA adds two matrices beside each adapted layer: A drawn as torch draws a Linear's weight (or from N(0, 1/r)
with ``init_lora_weights="gaussian"``) and B zero, so the adapted model starts as the base model.
:func:`lora_rules` gives those rules per ``state_dict`` key, read from each adapter's ``LoraConfig``; any other
``init_lora_weights`` (PiSSA, OLoRA, LoftQ... derived from the base weights by the prover's code) is refused.

PEFT renames the tensors of the model it wraps (``base_model.model.``, ``.base_layer.``, and for
``modules_to_save`` ``.original_module.`` and ``.modules_to_save.<adapter>.``); :func:`peft_models` finds where
a module holds PEFT models, and the proof format's :func:`~lightning_pol.format.pretrained.root_key` undoes the
renames to match W_0 with its base weights.

peft is never imported here: a module holds a PEFT model only if peft was imported to build it.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch
from torch import nn

from lightning_pol.errors import PoLError

#: One tensor's rule, as :mod:`lightning_pol.init` checks it: ("uniform", bound), ("normal", (mean, std)), ("constant", v).
Rule = tuple[str, Any]


def _peft_class(module: str, name: str) -> type | None:
    """``name`` from peft's ``module`` if that module was imported (looked up there, never imported)."""
    return getattr(sys.modules.get(module), name, None)


def peft_models(module: nn.Module) -> list[str]:
    """The ``state_dict`` prefixes of the outermost PEFT models (``PeftModel``) in ``module`` (``"model."``)."""
    base = _peft_class("peft.peft_model", "PeftModel")
    if base is None:
        return []
    found: list[str] = []
    for name, sub in module.named_modules():
        prefix = name + "." if name else ""
        if isinstance(sub, base) and not any(prefix.startswith(outer) for outer in found):
            found.append(prefix)
    return found


def lora_rules(module: nn.Module) -> dict[str, Rule]:
    """``{state_dict key: rule}`` of every LoRA A and B in ``module``; PoLError for an initialization without one."""
    layer_type = _peft_class("peft.tuners.lora.layer", "LoraLayer")
    if layer_type is None:
        return {}
    configs = _adapter_configs(module)
    rules: dict[str, Rule] = {}
    for name, sub in module.named_modules():
        if not isinstance(sub, layer_type):
            continue
        dot = name + "." if name else ""
        for adapter, a in sub.lora_A.items():
            init = _lora_init(configs, name, adapter)
            fan_in = a.weight.size(1)
            rules[f"{dot}lora_A.{adapter}.weight"] = ("uniform", 1 / math.sqrt(fan_in)) if init is True else ("normal", (0.0, 1 / sub.r[adapter]))
            for local, _ in sub.lora_B[adapter].named_parameters():
                rules[f"{dot}lora_B.{adapter}.{local}"] = ("constant", 0.0)
    return rules


def _adapter_configs(module: nn.Module) -> dict[str, dict[str, Any]]:
    """``{module path prefix: {adapter: LoraConfig}}`` of every module that holds PEFT configs (``peft_config``)."""
    found = {}
    for name, sub in module.named_modules():
        configs = getattr(sub, "peft_config", None)
        if isinstance(configs, dict) and configs:
            found[name + "." if name else ""] = configs
    return found


def _lora_init(configs: dict[str, dict[str, Any]], layer: str, adapter: str) -> bool | str:
    holders = [prefix for prefix, c in configs.items() if (layer + ".").startswith(prefix) and adapter in c]
    if not holders:
        raise PoLError(f"the LoRA layer {layer} has no LoraConfig for adapter {adapter!r} in the module; a proof reads "
                       f"how its adapters were drawn from the PEFT model that holds them")
    init = getattr(configs[max(holders, key=len)][adapter], "init_lora_weights", True)
    if init is True or (isinstance(init, str) and init.lower() == "gaussian"):
        return True if init is True else "gaussian"
    raise PoLError(f"LoRA adapter {adapter!r} is initialized with init_lora_weights={init!r}, which a proof cannot check as "
                   f"a fresh draw; use True (the default) or 'gaussian', or start from weights a verifier trusts")


def draw(weight: torch.Tensor, rule: Rule) -> None:
    """Draw ``weight`` in place as ``rule`` says (what PEFT's ``reset_lora_parameters`` does)."""
    kind, arg = rule
    if kind == "uniform":
        nn.init.uniform_(weight, -arg, arg)
    elif kind == "normal":
        nn.init.normal_(weight, arg[0], arg[1])
    else:
        nn.init.constant_(weight, arg)

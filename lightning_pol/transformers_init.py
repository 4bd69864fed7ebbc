"""Transformers' own initialization, as the verifier defines it: where a module holds ``PreTrainedModel``s, and
what each of their tensors is drawn from.

A transformers model built from a config (``BertForSequenceClassification(config)``) is not initialized by
torch's constructors but by transformers' ``_init_weights``: dense and embedding weights from
N(0, ``initializer_range``), their biases (and an embedding's padding row) zero, normalization layers ones and
zeros. :mod:`lightning_pol.init`'s ``transformers`` strategy checks those rules, reading a single number from
each model's config, its standard deviation. It never runs the model's own ``_init_weights``: that is the
prover's code, which could "initialize" by copying trained weights.

Rules a model class adds to the generic ones are listed in :data:`EXTRA_CONSTANTS`; a tensor that neither
covers fails the check (a model whose own ``_init_weights`` draws otherwise, GPT-2's scaled projections for one,
is refused at fit start, not proved and then rejected).

transformers is never imported here: a module can hold a ``PreTrainedModel`` only if transformers'
``modeling_utils`` was imported to build it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

#: The layers transformers' generic ``_init_weights`` draws from N(0, std) with a zero bias.
DENSE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d)

#: (module class name, tensor name) -> the value a model class's own ``_init_weights`` sets beyond the generic rules.
EXTRA_CONSTANTS: dict[tuple[str, str], float] = {
    ("BertLMPredictionHead", "bias"): 0.0,  # BertPreTrainedModel._init_weights: zeros_(module.bias)
    ("RobertaLMHead", "bias"): 0.0,
}

#: Module class name -> (its child whose weight is drawn with a scaled std, the scale from the config). GPT-2 scales
#: its residual projections by 1/sqrt(2 * n_layer) (GPT2PreTrainedModel._init_weights).
SCALED_CHILDREN: dict[str, tuple[str, Callable[[Any], float]]] = {
    "GPT2Attention": ("c_proj", lambda config: 1 / math.sqrt(2 * config.n_layer)),
    "GPT2MLP": ("c_proj", lambda config: 1 / math.sqrt(2 * config.n_layer)),
}

_TORCH_NORMS = (nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def is_dense(module: nn.Module) -> bool:
    """A layer whose weight transformers draws from N(0, std) with a zero bias (also its own ``Conv1D``, GPT-2's)."""
    return isinstance(module, DENSE) or (type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers."))


def is_norm(module: nn.Module) -> bool:
    """A normalization layer as transformers recognizes one: by type, or by a class name with LayerNorm or RMSNorm
    (models define their own, ``LlamaRMSNorm``)."""
    name = type(module).__name__
    return isinstance(module, _TORCH_NORMS) or "LayerNorm" in name or "RMSNorm" in name


def pretrained_models(module: nn.Module) -> dict[str, nn.Module]:
    """The outermost transformers ``PreTrainedModel``s in ``module``, keyed by their ``state_dict`` prefix
    (``"model."``; ``""`` when ``module`` is one)."""
    # The module that defines it, not the package: asking transformers' lazy package for it would import
    # transformers' model code (tens of MB) into any process that merely has transformers installed.
    base = getattr(sys.modules.get("transformers.modeling_utils"), "PreTrainedModel", None)
    if base is None:
        return {}
    found: dict[str, nn.Module] = {}
    for name, sub in module.named_modules():
        prefix = name + "." if name else ""
        if isinstance(sub, base) and not any(prefix.startswith(outer) for outer in found):
            found[prefix] = sub
    return found


def config_std(model: nn.Module) -> float:
    """The standard deviation transformers' generic ``_init_weights`` reads from the model's config."""
    config = model.config
    if hasattr(config, "initializer_range"):
        return float(config.initializer_range or 0.02)
    if hasattr(config, "init_std"):
        return float(config.init_std)
    if hasattr(config, "initializer_factor"):
        return float(config.initializer_factor)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return float(getattr(text, "initializer_range", 0.02))


def declared_models(module: nn.Module) -> dict[str, dict[str, Any]]:
    """What a proof declares of the transformers models in ``module``: ``{prefix: {"class": name, "std": std}}``."""
    return {prefix: {"class": type(model).__name__, "std": config_std(model)} for prefix, model in pretrained_models(module).items()}


def check_declared_models(models: Any) -> dict[str, dict[str, Any]]:
    """``models`` as a proof may declare them, or ValueError saying what is wrong."""
    if not isinstance(models, dict):
        raise ValueError("transformers models must be a mapping of state_dict prefixes to {class, std}")
    for prefix, entry in models.items():
        if not isinstance(prefix, str) or (prefix and not prefix.endswith(".")):
            raise ValueError(f"a transformers model's prefix must be '' or end with '.', not {str(prefix)[:40]!r}")
        if not isinstance(entry, dict) or set(entry) != {"class", "std"} or not isinstance(entry["class"], str):
            raise ValueError(f"the transformers model at {prefix!r} must be declared as {{class, std}}")
        std = entry["std"]
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not math.isfinite(std) or std <= 0:
            raise ValueError(f"the transformers model at {prefix!r} declares std {str(std)[:40]!r}, not a number > 0")
    return models


def scaled_weights(module: nn.Module, models: dict[str, Any]) -> dict[str, float]:
    """``{state_dict key: std}`` of the weights the declared models draw with a scaled std (:data:`SCALED_CHILDREN`)."""
    found = pretrained_models(module)
    scaled = {}
    for prefix, entry in models.items():
        model = found[prefix]
        for path, sub in model.named_modules():
            rule = SCALED_CHILDREN.get(type(sub).__name__)
            child = getattr(sub, rule[0], None) if rule else None
            if rule is not None and isinstance(getattr(child, "weight", None), torch.Tensor):
                scaled[f"{prefix}{path}.{rule[0]}.weight"] = float(entry["std"]) * rule[1](model.config)
    return scaled


def model_of(key: str, models: dict[str, Any]) -> str | None:
    """The prefix of the (innermost declared) model that holds the tensor ``key``, or None."""
    owners = [prefix for prefix in models if key.startswith(prefix)]
    return max(owners, key=len) if owners else None

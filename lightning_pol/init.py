"""The public registry of initialization strategies, and the "verify initialization" check.

Proof-of-Learning requires the prover's initial weights W_0 to be a fresh draw
from a strategy agreed in advance; otherwise a prover could start from (a
perturbation of) someone else's trained model. :func:`initialize` draws W_0
with one of :data:`STRATEGIES`; :func:`check_initialization` tests, layer by
layer, whether a model's current parameters and buffers look like such a draw.

Conventions (a verifier relies on every one of them)
----------------------------------------------------

Walk. ``module.named_modules()`` is walked and, for each module, only its
direct parameters and *persistent* buffers (``recurse=False``); each tensor is
named like its ``state_dict`` key (``prefix + "." + local name``).
Non-persistent buffers are skipped: they are not part of the saved state.

Supported layers (every strategy covers the same set):

* dense: ``nn.Linear``, ``nn.Bilinear``, ``nn.Conv{1,2,3}d`` and
  ``nn.ConvTranspose{1,2,3}d`` (anything deriving from them);
* embeddings: ``nn.Embedding``, ``nn.EmbeddingBag``; the ``padding_idx`` row,
  if any, is exactly 0 under every strategy (as torch does) and the strategy
  applies to the other rows;
* normalization: ``BatchNorm*``, ``SyncBatchNorm``, ``InstanceNorm*`` (with
  affine params and/or running stats), ``LayerNorm``, ``GroupNorm``,
  ``RMSNorm``: weight == 1 and bias == 0 exactly, ``running_mean == 0``,
  ``running_var == 1`` exactly, under every strategy;
* attention, under ``pytorch_default`` only (what its constructor draws):
  ``nn.MultiheadAttention``'s ``in_proj_weight`` (or ``q/k/v_proj_weight``)
  ~ Xavier uniform and ``bias_k``/``bias_v`` ~ Xavier normal (gain 1),
  ``in_proj_bias`` and ``out_proj.bias`` == 0; inside an ``nn.Transformer``
  every tensor of more than one dimension ~ Xavier uniform (gain 1), as its
  constructor redraws them.

Any integer or bool buffer, in any module, must be exactly 0 (e.g.
``num_batches_tracked``); all-zero tensors carry no information. Any other
parameter or buffer (a module type without a rule, or an unexpected tensor on a
supported one) gives ``LayerCheck(test="unsupported", passed=False)``: the
check fails closed, because a prover could otherwise hide trained weights
there. :func:`initialize` leaves such tensors untouched.

Fans come from ``torch.nn.init._calculate_fan_in_and_fan_out(weight)`` (for a
ConvTranspose weight of shape ``(in, out/groups, *k)`` that is torch's own rule,
``fan_in = out/groups * prod(k)``). Weight rules per strategy:

* ``pytorch_default`` (what torch's constructors do; :func:`initialize` calls
  each layer's ``reset_parameters()``): dense weight and bias
  ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (``nn.Bilinear``: 1/sqrt(in1_features));
  embedding ~ N(0, 1).
* ``kaiming_normal`` / ``kaiming_uniform``: ``mode="fan_in"``,
  ``nonlinearity="relu"``, ``a=0`` (gain sqrt(2)); std = gain/sqrt(fan),
  uniform bound = sqrt(3)*std.
* ``xavier_normal`` / ``xavier_uniform``: gain 1; std = gain*sqrt(2/(fan_in+fan_out)),
  uniform bound = sqrt(3)*std.
* ``orthogonal``: gain 1 on the weight viewed as (rows, cols) =
  (size(0), numel/size(0)) (embedding with padding: the non-padding rows).
* ``normal``: N(mean, std), ``mean=0.0``, ``std=0.02`` by default.
* ``transformers``: what transformers' ``_init_weights`` draws, for the tensors of each ``PreTrainedModel``
  the module holds (:mod:`lightning_pol.transformers_init`): ``nn.Linear``, ``nn.Conv{1,2,3}d``,
  ``nn.ConvTranspose{1,2}d`` and ``nn.Embedding`` weights ~ N(0, std) with ``std`` the model config's
  ``initializer_range``, their biases 0; normalization layers (also models' own ``...LayerNorm`` and
  ``...RMSNorm`` classes) 1 and 0; the few tensors a model class sets itself
  (:data:`~lightning_pol.transformers_init.EXTRA_CONSTANTS`); other layers as torch draws them. Every
  other tensor follows ``rest`` (``pytorch_default``). ``models`` (``{prefix: {"class", "std"}}``) is found in
  the module; a proof declares it, and a check against other models than the module holds fails.

Every strategy but ``pytorch_default`` sets dense biases to exactly 0.
Optional ``**params`` override the defaults: ``a``, ``mode``, ``nonlinearity``
(kaiming), ``gain`` (xavier, orthogonal), ``mean``, ``std`` (normal); a verifier
must pass the same ones as the prover.

Tests.

* ``"ks"``: one-sample Kolmogorov-Smirnov test (``scipy.stats.kstest``) of the
  tensor's entries (as float64) against the strategy's exact CDF. Tensors with
  fewer than 2 entries are not tested (passed, detail "too small"). For float16
  and bfloat16 each value is first spread uniformly over its rounding interval
  (fixed numpy seed, so the result is deterministic): rounding to a coarse grid
  would otherwise make honest large tensors fail.
* ``"orthogonal"``: every singular value of the (rows, cols) view equals the gain
  within relative tolerance ``max(1e-4, 8 * eps(dtype))``. The entries are also
  KS-tested against the exact marginal of a (scaled) coordinate of a uniform unit
  vector in R^d, d = max(rows, cols) (variance gain^2/d; (x/gain)^2 ~
  Beta(1/2, (d-1)/2)), which a Haar-random semi-orthogonal matrix has: this
  catches an orthogonal matrix that was not drawn at random (e.g. the identity).
* ``"constant"``: exact equality; ``statistic`` is the largest absolute deviation.

With ``bonferroni=True`` (default) each KS test passes when its p-value is at
least ``alpha / m``, m = number of KS tests actually run, so an honest draw is
rejected with probability at most about ``alpha``. Overall ``passed`` = every
layer check passed. Non-finite values fail every test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import special, stats
from torch import nn
from torch.nn import init as tinit
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

from lightning_pol import transformers_init as hf
from lightning_pol.errors import PoLError
from lightning_pol.format.manifest import INIT_STRATEGIES
from lightning_pol.peft_init import draw as draw_lora
from lightning_pol.peft_init import lora_rules

#: The strategies a fresh start may declare: the format's public list, less ``warm_start`` (checked through
#: its parent proof, not by a statistical test) and ``pretrained`` (published weights, and a fresh strategy
#: of this list for the rest).
STRATEGIES: tuple[str, ...] = tuple(s for s in INIT_STRATEGIES if s not in ("warm_start", "pretrained"))

_PARAM_DEFAULTS: dict[str, dict[str, Any]] = {
    "pytorch_default": {},
    "kaiming_normal": {"a": 0.0, "mode": "fan_in", "nonlinearity": "relu"},
    "kaiming_uniform": {"a": 0.0, "mode": "fan_in", "nonlinearity": "relu"},
    "xavier_normal": {"gain": 1.0},
    "xavier_uniform": {"gain": 1.0},
    "orthogonal": {"gain": 1.0},
    "normal": {"mean": 0.0, "std": 0.02},
    "transformers": {"models": None, "rest": "pytorch_default"},
}

#: The strategy name :func:`_rules` gives a tensor of a transformers model (the ``transformers`` strategy's own part).
_HF = "transformers model"
#: ... and a LoRA adapter's A or B, whatever the strategy.
_LORA = "LoRA adapter"

_DENSE = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd)
_EMBEDDING = (nn.Embedding, nn.EmbeddingBag)
_NORM = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
#: ``nn.MultiheadAttention``'s output projection: a Linear whose bias the attention's own init zeroes.
_ATTENTION_OUT = nn.modules.linear.NonDynamicallyQuantizableLinear
_NORM_CONSTANTS = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}

#: The nonlinearities ``torch.nn.init.calculate_gain`` knows (kaiming's ``nonlinearity``).
_NONLINEARITIES = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
                   "sigmoid", "tanh", "relu", "leaky_relu", "selu")

_MIN_KS = 2
_SV_RTOL = 1e-4


@dataclass
class LayerCheck:
    """The outcome of one test on one tensor (``name`` is its state_dict key)."""

    name: str
    test: str  # "ks", "constant", "orthogonal", "unsupported"
    statistic: float | None
    p_value: float | None
    passed: bool
    detail: str = ""


@dataclass
class InitCheck:
    """The outcome of :func:`check_initialization` over a whole module."""

    strategy: str
    passed: bool
    alpha: float
    bonferroni: bool
    threshold: float
    layers: list[LayerCheck] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready: plain floats, non-finite numbers as None, layers as dicts."""
        out = asdict(self)
        out["alpha"], out["threshold"] = float(self.alpha), float(self.threshold)
        for layer in out["layers"]:
            for key in ("statistic", "p_value"):
                v = layer[key]
                layer[key] = float(v) if v is not None and math.isfinite(v) else None
        return out

    @property
    def p_values(self) -> dict[str, float]:
        """p-value of each tensor that was KS-tested, keyed by state_dict name."""
        return {c.name: float(c.p_value) for c in self.layers if c.test == "ks" and c.p_value is not None}


# ----------------------------------------------------------------- parameters


def _resolve(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """The strategy's parameters with defaults filled in; PoLError on anything unknown."""
    if name not in _PARAM_DEFAULTS:
        raise PoLError(f"unknown initialization strategy {name!r}; choose one of {list(STRATEGIES)}")
    defaults = _PARAM_DEFAULTS[name]
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise PoLError(f"strategy {name!r} takes no parameter(s) {unknown}; it takes {sorted(defaults) or 'none'}")
    resolved = {**defaults, **params}
    for key in ("a", "gain", "mean", "std"):  # a proof declares these: anything but a finite number is refused here
        value = resolved.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise PoLError(f"{name} {key} must be a finite number, not {str(value)[:40]!r}")
    if name.startswith("kaiming") and resolved["mode"] not in ("fan_in", "fan_out"):
        raise PoLError(f"kaiming mode must be 'fan_in' or 'fan_out', not {str(resolved['mode'])[:40]!r}")
    if name.startswith("kaiming") and resolved["nonlinearity"] not in _NONLINEARITIES:
        raise PoLError(f"kaiming nonlinearity must be one of {list(_NONLINEARITIES)}, not {str(resolved['nonlinearity'])[:40]!r}")
    if name == "normal" and not float(resolved["std"]) > 0:
        raise PoLError(f"normal std must be > 0, not {resolved['std']!r}")
    if name == "transformers":
        if resolved["rest"] not in STRATEGIES or resolved["rest"] == "transformers":
            raise PoLError(f"transformers rest must be one of {[s for s in STRATEGIES if s != 'transformers']}, not {str(resolved['rest'])[:40]!r}")
        if resolved["models"] is not None:
            try:
                hf.check_declared_models(resolved["models"])
            except ValueError as e:
                raise PoLError(str(e)) from None
    return resolved


def resolve_auto(module: nn.Module) -> tuple[str, dict[str, Any]]:
    """``auto``: the strategy the module's own constructors drew with. transformers' for the ``PreTrainedModel``s it
    holds and torch's for the rest (``transformers``), or torch's alone (``pytorch_default``)."""
    models = hf.declared_models(module)
    return ("transformers", {"models": models, "rest": "pytorch_default"}) if models else ("pytorch_default", {})


def check_parameters(name: str, params: dict[str, Any]) -> None:
    """A fresh strategy's declared parameters, before there is a module: PoLError for anything it cannot take.
    (``auto`` takes none; ``transformers`` finds its models in the module, and takes only ``rest``.)"""
    if name == "auto" and params:
        raise PoLError(f"strategy 'auto' takes no parameters (it was given {sorted(params)}); name the strategy they belong to")
    if name == "transformers" and "models" in params:
        raise PoLError("strategy 'transformers' finds the models in the module; its parameters may only name the strategy of the rest")
    if name != "auto":
        _resolve(name, params)


def resolve_strategy(module: nn.Module, name: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A declared fresh strategy as a proof records it: ``auto`` resolved (:func:`resolve_auto`), the transformers
    models of ``transformers`` found in ``module``."""
    check_parameters(name, params)
    if name == "auto":
        return resolve_auto(module)
    if name == "transformers":
        models = hf.declared_models(module)
        if not models:
            raise PoLError("strategy 'transformers' but the module holds no transformers PreTrainedModel; declare the strategy its layers were drawn with")
        return name, _resolve(name, {**params, "models": models})
    return name, dict(params)


def _transformers_models(module: nn.Module, declared: dict[str, Any] | None) -> dict[str, Any]:
    """The transformers models of ``module``; PoLError where they are not the ``declared`` ones."""
    found = hf.declared_models(module)
    if declared is not None and declared != found:
        raise PoLError(f"the transformers models declared ({_models_text(declared)}) are not the module's ({_models_text(found)})")
    return found


def _models_text(models: dict[str, Any]) -> str:
    return ", ".join(f"{m['class']} at {prefix or 'the top'} with std {m['std']:g}" for prefix, m in models.items()) or "none"


def _grouping(module: nn.Module, name: str, p: dict[str, Any]) -> Callable[[str], tuple[str, dict[str, Any]]]:
    """The strategy and parameters each tensor (by state_dict key) of ``module`` is drawn with under ``name``: LoRA's
    adapters by their own rule under every strategy (:mod:`lightning_pol.peft_init`)."""
    lora = lora_rules(module)
    if name != "transformers":
        return lambda key: (_LORA, {"rule": lora[key]}) if key in lora else (name, p)
    models, rest = _transformers_models(module, p["models"]), p["rest"]
    rest_p, scaled = _resolve(rest, {}), hf.scaled_weights(module, models)

    def group(key: str) -> tuple[str, dict[str, Any]]:
        if key in lora:
            return _LORA, {"rule": lora[key]}
        owner = hf.model_of(key, models)
        if owner is None:
            return rest, rest_p
        return _HF, {"mean": 0.0, "std": scaled.get(key, float(models[owner]["std"]))}

    return group


def declared_parameters(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters of strategy ``name`` with its defaults, checked: a :class:`PoLError` for any other key or
    value. A verifier checks a proof's ``init.params`` with it before passing them on, so that a proof cannot set
    :func:`check_initialization`'s own ``alpha`` or ``bonferroni``."""
    return _resolve(name, dict(params))


def _kaiming_std(weight: torch.Tensor, p: dict[str, Any]) -> float:
    fan_in, fan_out = tinit._calculate_fan_in_and_fan_out(weight)
    fan = fan_in if p["mode"] == "fan_in" else fan_out
    return tinit.calculate_gain(p["nonlinearity"], p["a"]) / math.sqrt(fan)


def _xavier_std(weight: torch.Tensor, p: dict[str, Any]) -> float:
    fan_in, fan_out = tinit._calculate_fan_in_and_fan_out(weight)
    return float(p["gain"]) * math.sqrt(2.0 / float(fan_in + fan_out))


def _default_dense_bound(module: nn.Module) -> float:
    """The bound torch's constructors use for a dense layer's weight and bias."""
    if isinstance(module, nn.Bilinear):
        return 1.0 / math.sqrt(module.weight.size(1))
    fan_in, _ = tinit._calculate_fan_in_and_fan_out(module.weight)
    return 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0


# ----------------------------------------------------------------- rules
# A rule says what one tensor (or a row-slice of it) must look like:
# ("constant", value), ("uniform", bound), ("normal", (mean, std)), ("orthogonal", gain).

Rule = tuple[str, Any]


def _weight_rule(module: nn.Module, weight: torch.Tensor, name: str, p: dict[str, Any]) -> Rule:
    """The distribution the strategy draws a dense or embedding weight from."""
    if name == "pytorch_default":
        if isinstance(module, _EMBEDDING):
            return ("normal", (0.0, 1.0))
        bound = _default_dense_bound(module)
        return ("uniform", bound) if bound > 0 else ("constant", 0.0)
    if name == "kaiming_normal":
        return ("normal", (0.0, _kaiming_std(weight, p)))
    if name == "kaiming_uniform":
        return ("uniform", math.sqrt(3.0) * _kaiming_std(weight, p))
    if name == "xavier_normal":
        return ("normal", (0.0, _xavier_std(weight, p)))
    if name == "xavier_uniform":
        return ("uniform", math.sqrt(3.0) * _xavier_std(weight, p))
    if name == "orthogonal":
        return ("orthogonal", float(p["gain"]))
    return ("normal", (float(p["mean"]), float(p["std"])))


def _rules(
    module: nn.Module, local: str, tensor: torch.Tensor, name: str, p: dict[str, Any],
) -> list[tuple[str, Rule, torch.Tensor]] | str:
    """(suffix, rule, values) pieces for one direct tensor of ``module``, or why it is unsupported."""
    if isinstance(tensor, (UninitializedParameter, UninitializedBuffer)):
        return "uninitialized lazy tensor"
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return [("", ("constant", 0), tensor)]
    if tensor.is_complex():
        return f"complex tensor on {type(module).__name__}"
    if name == _LORA:
        return [("", p["rule"], tensor)]
    if name == _HF:  # transformers' generic rules, then N(mean, std) as ``normal`` draws, or torch's own
        extra = hf.EXTRA_CONSTANTS.get((type(module).__name__, local))
        if extra is not None:
            return [("", ("constant", extra), tensor)]
        if hf.is_norm(module) and local in _NORM_CONSTANTS:
            return [("", ("constant", _NORM_CONSTANTS[local]), tensor)]
        if hf.is_dense(module) and local in ("weight", "bias"):
            return [("", ("normal", (0.0, p["std"])) if local == "weight" else ("constant", 0.0), tensor)]
        name, p = ("normal", p) if isinstance(module, nn.Embedding) else ("pytorch_default", {})
    if name == "pytorch_default" and isinstance(module, (nn.MultiheadAttention, _ATTENTION_OUT)):
        attention = _attention_rule(module, local, tensor)
        if attention is not None:
            return [("", attention, tensor)]
    if isinstance(module, _DENSE):
        if local == "weight":
            return [("", _weight_rule(module, tensor, name, p), tensor)]
        if local == "bias":
            if name == "pytorch_default":
                bound = _default_dense_bound(module)
                return [("", ("uniform", bound) if bound > 0 else ("constant", 0.0), tensor)]
            return [("", ("constant", 0.0), tensor)]
    elif isinstance(module, _EMBEDDING) and local == "weight":
        rule = _weight_rule(module, tensor, name, p)
        pad = module.padding_idx
        if pad is None:
            return [("", rule, tensor)]
        keep = torch.ones(tensor.size(0), dtype=torch.bool, device=tensor.device)
        keep[pad] = False
        return [("", rule, tensor[keep]), (f"[{pad}]", ("constant", 0.0), tensor[pad])]
    elif isinstance(module, _NORM) and local in _NORM_CONSTANTS:
        return [("", ("constant", _NORM_CONSTANTS[local]), tensor)]
    return f"no initialization rule for {type(module).__name__}.{local}"


def _attention_rule(module: nn.Module, local: str, tensor: torch.Tensor) -> Rule | None:
    """What ``nn.MultiheadAttention``'s ``_reset_parameters`` draws (Xavier with gain 1 for its projections and
    ``bias_k``/``bias_v``, zero biases, its ``out_proj``'s bias zeroed); None: the dense rule of its ``out_proj.weight``."""
    if isinstance(module, _ATTENTION_OUT):
        return ("constant", 0.0) if local == "bias" else None
    std = _xavier_std(tensor, {"gain": 1.0}) if tensor.dim() >= 2 else 0.0
    if local in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
        return ("uniform", math.sqrt(3.0) * std)
    if local in ("bias_k", "bias_v"):
        return ("normal", (0.0, std))
    return ("constant", 0.0) if local == "in_proj_bias" else None


def _transformer_matrices(module: nn.Module) -> set[int]:
    """The tensors ``nn.Transformer``'s ``_reset_parameters`` redraws: every parameter of more than one dimension
    (Xavier uniform, gain 1), its attention projections and feed-forward weights alike."""
    return {id(p) for m in module.modules() if isinstance(m, nn.Transformer) for p in m.parameters() if p.dim() > 1}


def _direct_tensors(module: nn.Module) -> Iterator[tuple[str, str, nn.Module, torch.Tensor]]:
    """(state_dict name, local name, owner, tensor) for every direct param and persistent buffer."""
    for prefix, mod in module.named_modules():
        dot = prefix + "." if prefix else ""
        for local, t in mod.named_parameters(recurse=False):
            yield dot + local, local, mod, t
        skip = getattr(mod, "_non_persistent_buffers_set", set())
        for local, t in mod.named_buffers(recurse=False):
            if local not in skip:
                yield dot + local, local, mod, t


# ----------------------------------------------------------------- initialize


def _orthogonal_into(target: torch.Tensor, gain: float) -> None:
    """torch's orthogonal_, drawn in float32 when the target's dtype has no QR (half, bfloat16)."""
    dtype = target.dtype if target.dtype in (torch.float32, torch.float64) else torch.float32
    tmp = torch.empty(target.shape, dtype=dtype, device=target.device)
    tinit.orthogonal_(tmp, gain=gain)
    target.copy_(tmp)


def _draw_weight(weight: torch.Tensor, name: str, p: dict[str, Any], pad: int | None) -> None:
    if name == "orthogonal":
        if pad is None:
            _orthogonal_into(weight, float(p["gain"]))
        else:
            keep = [i for i in range(weight.size(0)) if i != pad % weight.size(0)]
            sub = torch.empty((len(keep), *weight.shape[1:]), dtype=weight.dtype, device=weight.device)
            _orthogonal_into(sub, float(p["gain"]))
            weight[keep] = sub
    elif name == "kaiming_normal":
        tinit.kaiming_normal_(weight, a=p["a"], mode=p["mode"], nonlinearity=p["nonlinearity"])
    elif name == "kaiming_uniform":
        tinit.kaiming_uniform_(weight, a=p["a"], mode=p["mode"], nonlinearity=p["nonlinearity"])
    elif name == "xavier_normal":
        tinit.xavier_normal_(weight, gain=float(p["gain"]))
    elif name == "xavier_uniform":
        tinit.xavier_uniform_(weight, gain=float(p["gain"]))
    elif name == "normal":
        tinit.normal_(weight, mean=float(p["mean"]), std=float(p["std"]))
    if pad is not None:
        weight[pad].fill_(0)


def initialize(module: nn.Module, name: str, **params: Any) -> nn.Module:
    """Re-initialize every supported layer of ``module`` in place with strategy ``name``.

    Draws from torch's global RNG, layer by layer in ``named_modules()`` order,
    so a seed fixes W_0. Tensors without a rule are left untouched (and
    :func:`check_initialization` will reject them). Returns ``module``.
    """
    group = _grouping(module, name, _resolve(name, params))
    drawn: set[int] = set()  # a transformers model's tied weights (embeddings and LM head) are drawn once, as there
    with torch.no_grad():
        for path, mod in module.named_modules():
            _initialize_layer(mod, *group(f"{path}.weight" if path else "weight"), drawn)
        for path, mod in module.named_modules():  # then as nn.Transformer's constructor: its matrices redrawn
            if isinstance(mod, nn.Transformer) and group(f"{path}.weight" if path else "weight")[0] == "pytorch_default":
                mod._reset_parameters()
    return module


def _initialize_layer(mod: nn.Module, name: str, p: dict[str, Any], drawn: set[int]) -> None:
    if name == _LORA:  # A or B of an adapter: ``p`` is its weight's rule, and a bias of B is zero
        draw_lora(mod.weight, p["rule"])
        if isinstance(getattr(mod, "bias", None), torch.Tensor):
            mod.bias.zero_()
        return
    if name == _HF:
        weight = getattr(mod, "weight", None)
        if isinstance(weight, torch.Tensor):
            if id(weight) in drawn:  # an LM head tied to its embedding: drawn there; a head's own bias (BERT's) is
                return  # the prediction head's parameter, which its own rule sets (transformers_init.EXTRA_CONSTANTS)
            drawn.add(id(weight))
        for (cls, local), value in hf.EXTRA_CONSTANTS.items():
            if type(mod).__name__ == cls and isinstance(getattr(mod, local, None), torch.Tensor):
                getattr(mod, local).fill_(value)
        if hf.is_norm(mod) and not isinstance(mod, _NORM):  # a model's own LayerNorm or RMSNorm class
            for local, value in _NORM_CONSTANTS.items():
                if isinstance(getattr(mod, local, None), torch.Tensor):
                    getattr(mod, local).fill_(value)
            return
        if hf.is_dense(mod):
            tinit.normal_(mod.weight, mean=0.0, std=p["std"])
            if isinstance(mod.bias, torch.Tensor):
                mod.bias.zero_()
            return
        name, p = ("normal", p) if isinstance(mod, nn.Embedding) else ("pytorch_default", {})
    if name == "pytorch_default" and isinstance(mod, nn.MultiheadAttention):
        mod.out_proj.reset_parameters()  # in the constructor's order: out_proj built, then the projections drawn
        drawn.add(id(mod.out_proj.weight))
        mod._reset_parameters()  # which zeroes out_proj's bias
        return
    if isinstance(mod, _ATTENTION_OUT) and id(mod.weight) in drawn:
        return
    if not isinstance(mod, _DENSE + _EMBEDDING + _NORM):
        return
    if name == "pytorch_default" or isinstance(mod, _NORM):
        mod.reset_parameters()  # exactly what the constructor did
        if isinstance(mod, _ATTENTION_OUT) and isinstance(mod.bias, torch.Tensor):  # one outside its attention
            mod.bias.zero_()
        return
    weight = mod.weight
    if isinstance(weight, UninitializedParameter):
        return
    _draw_weight(weight, name, p, getattr(mod, "padding_idx", None))
    bias = getattr(mod, "bias", None)
    if isinstance(bias, torch.Tensor) and not isinstance(bias, UninitializedParameter):
        bias.zero_()


# ----------------------------------------------------------------- check


def start_from(module: nn.Module, weights: str, prefix: str = "", fresh: str = "pytorch_default",
               fresh_params: dict[str, Any] | None = None, redraw: list[str] | tuple[str, ...] = ()) -> nn.Module:
    """A pretrained start: draw ``module`` from ``fresh``, then load every tensor of the weights file whose key,
    under ``prefix``, the module has with the same shape, except those under a ``redraw`` prefix (a new head
    keeps its fresh draw). Declare it with the same arguments: ``ProofOfLearning(init_strategy="pretrained",
    init_params={"weights": weights, "prefix": prefix, "redraw": [...]})``."""
    from lightning_pol.format.pretrained import read_weights

    initialize(module, fresh, **(fresh_params or {}))
    _, tensors = read_weights(weights)
    state = module.state_dict()
    taken = {prefix + k: v for k, v in tensors.items()
             if prefix + k in state and state[prefix + k].shape == v.shape and not (prefix + k).startswith(tuple(redraw))}
    if not taken:
        raise PoLError(f"no tensor of {weights} fits the module under prefix {prefix!r}; give the prefix that maps its keys")
    module.load_state_dict(taken, strict=False)
    return module


def _dequantize(values: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """Spread each low-precision value uniformly over its rounding interval.

    A continuous draw rounded to float16/bfloat16 sits on a coarse grid, which
    a KS test on a large tensor detects as non-continuity; undoing the rounding
    with (seeded) uniform noise restores a continuous sample of the draw.
    """
    fi = torch.finfo(dtype)
    _, exp = np.frexp(values)
    spacing = np.where(values == 0, fi.tiny * fi.eps, np.maximum(np.ldexp(fi.eps, exp - 1), fi.tiny * fi.eps))
    rng = np.random.default_rng(0)
    return values + (rng.random(values.shape) - 0.5) * spacing


def _sphere_coordinate_cdf(d: int, gain: float) -> Callable[[np.ndarray], np.ndarray]:
    """CDF of gain * (one coordinate of a uniform unit vector in R^d)."""
    b = (d - 1) / 2.0

    def cdf(x: np.ndarray) -> np.ndarray:
        y = np.asarray(x, dtype=np.float64) / gain
        return 0.5 + 0.5 * np.sign(y) * special.betainc(0.5, b, np.minimum(y * y, 1.0))

    return cdf


@dataclass
class _KSJob:
    index: int  # position of the placeholder in the layer list
    statistic: float
    p_value: float
    what: str


#: Values whose CDF is evaluated at once (in float64) by :func:`_ks_test`.
_KS_CHUNK = 1 << 16


def _ks_test(t: torch.Tensor, cdf: Callable[[np.ndarray], np.ndarray]) -> tuple[float, float] | None:
    """(statistic, p-value) of the one-sample two-sided KS test of ``t``'s entries against ``cdf``; None when an
    entry is not finite.

    What ``scipy.stats.kstest`` computes (the exact ``kstwo`` distribution of D), over a sorted copy of the
    values in their own float32 or float64, with the CDF evaluated a chunk at a time: the test of a tensor
    costs one copy of it, not the three float64 copies of a direct call. The fit-start check runs on a model
    of real size, before its first checkpoint (a proof adds one copy of the state to memory, no more).
    Half-precision values are spread over their rounding intervals first (:func:`_dequantize`).
    """
    if torch.finfo(t.dtype).eps > 2.0**-20:
        values = np.sort(_dequantize(_to_numpy(t), t.dtype))
    else:
        flat = t.detach().cpu().reshape(-1)
        values = np.sort(flat.numpy() if flat.dtype in (torch.float32, torch.float64) else flat.double().numpy())
    n = values.size
    if not (np.isfinite(values[0]) and np.isfinite(values[-1])):  # sorted: infinities at the ends, NaNs last
        return None
    d = 0.0
    for start in range(0, n, _KS_CHUNK):
        chunk = values[start:start + _KS_CHUNK].astype(np.float64)
        c = cdf(chunk)
        i = np.arange(start, start + chunk.size, dtype=np.float64)
        d = max(d, float(np.max(np.arange(start + 1.0, start + chunk.size + 1) / n - c)), float(np.max(c - i / n)))
    return d, float(np.clip(stats.kstwo.sf(d, n), 0.0, 1.0))


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).reshape(-1).numpy()


def _constant_check(name: str, t: torch.Tensor, value: float) -> LayerCheck:
    if t.numel() == 0:
        return LayerCheck(name, "constant", 0.0, None, True, f"== {value} (empty)")
    dev = (t.detach().cpu().to(torch.float64) - float(value)).abs().max().item()
    passed = bool((t.detach() == value).all().item())
    return LayerCheck(name, "constant", dev, None, passed, f"== {value}" + ("" if passed else f"; max |deviation| {dev:.3g}"))


def _orthogonal_check(name: str, t: torch.Tensor, gain: float) -> tuple[LayerCheck, int]:
    """Singular values of the (rows, cols) view vs gain; also returns d for the entries' KS."""
    rows = t.size(0) if t.dim() else 1
    cols = t.numel() // rows if rows else 0
    if t.dim() < 2 or t.numel() == 0:
        return LayerCheck(name, "orthogonal", None, None, t.dim() >= 2, "too small" if t.dim() >= 2 else "not a matrix"), 0
    sv = np.linalg.svd(_to_numpy(t).reshape(rows, cols), compute_uv=False)
    dev = float(np.abs(sv / gain - 1.0).max())
    rtol = max(_SV_RTOL, 8 * torch.finfo(t.dtype).eps)
    passed = dev <= rtol
    detail = f"singular values in [{sv.min():.6g}, {sv.max():.6g}], expected {gain:g} (rtol {rtol:.1e})"
    return LayerCheck(name, "orthogonal", dev, None, passed, detail), max(rows, cols)


def check_initialization(
    module: nn.Module, name: str, alpha: float = 0.01, bonferroni: bool = True, only: set[str] | None = None, **params: Any,
) -> InitCheck:
    """Test whether the module's current parameters and buffers look freshly drawn from strategy ``name``.

    Deterministic (no RNG is consumed). See the module docstring for the rules. ``only``: the state_dict
    names tested (a pretrained start's fresh tensors; Bonferroni then counts those tests only).
    """
    group = _grouping(module, name, _resolve(name, params))
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise PoLError(f"alpha must be in (0, 1), not {alpha!r}")
    layers: list[LayerCheck] = []
    jobs: list[_KSJob] = []

    def add_ks(label: str, t: torch.Tensor, cdf: Callable[[np.ndarray], np.ndarray], what: str) -> None:
        if t.numel() < _MIN_KS:
            layers.append(LayerCheck(label, "ks", None, None, True, "too small"))
            return
        result = _ks_test(t, cdf)  # now, so that no tensor's values are held past its own test
        if result is None:
            layers.append(LayerCheck(label, "ks", None, None, False, "non-finite values"))
            return
        layers.append(LayerCheck(label, "ks", None, None, False, what))
        jobs.append(_KSJob(len(layers) - 1, *result, what))

    transformer = _transformer_matrices(module)
    for key, local, mod, tensor in _direct_tensors(module):
        if only is not None and key not in only:
            continue
        strategy, p = group(key)
        if strategy == "pytorch_default" and id(tensor) in transformer:
            pieces: list[tuple[str, Rule, torch.Tensor]] | str = [("", ("uniform", math.sqrt(3.0) * _xavier_std(tensor, {"gain": 1.0})), tensor)]
        else:
            pieces = _rules(mod, local, tensor, strategy, p)
        if isinstance(pieces, str):
            layers.append(LayerCheck(key, "unsupported", None, None, False, pieces))
            continue
        for suffix, (kind, arg), t in pieces:
            label = key + suffix
            if kind in ("constant", "orthogonal") and t.is_floating_point() and t.numel() and not bool(torch.isfinite(t.detach()).all().item()):
                layers.append(LayerCheck(label, "constant" if kind == "constant" else "ks", None, None, False, "non-finite values"))
            elif kind == "constant":
                layers.append(_constant_check(label, t, arg))
            elif kind == "uniform":
                add_ks(label, t, stats.uniform(loc=-arg, scale=2 * arg).cdf, f"U(-{arg:.6g}, {arg:.6g})")
            elif kind == "normal":
                add_ks(label, t, stats.norm(loc=arg[0], scale=arg[1]).cdf, f"N({arg[0]:.6g}, {arg[1]:.6g}^2)")
            else:  # orthogonal
                check, d = _orthogonal_check(label, t, arg)
                layers.append(check)
                if d >= 2:
                    add_ks(label, t, _sphere_coordinate_cdf(d, arg), f"{arg:g} x coordinate of a uniform unit vector in R^{d}")

    threshold = alpha / len(jobs) if bonferroni and jobs else alpha
    for job in jobs:
        passed = job.p_value >= threshold
        layers[job.index] = LayerCheck(
            layers[job.index].name, "ks", job.statistic, job.p_value, passed,
            f"{job.what}; p={job.p_value:.3g} {'>=' if passed else '<'} {threshold:.3g}",
        )
    return InitCheck(name, all(c.passed for c in layers), float(alpha), bool(bonferroni), float(threshold), layers)

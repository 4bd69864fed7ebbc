"""How the verifier will re-create the module and the data: their import path and hparams, checked at fit start.

"Can the verifier re-create this?" is asked in ``setup``, before
``configure_optimizers`` or any data work, so a run whose proof could not be
verified stops before it costs anything.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_pol.errors import PoLError
from lightning_pol.format.classes import (
    NotRecreatableError,
    import_path,
    resolve_import_path,
)
from lightning_pol.format.lineage import parent_record, same_weights
from lightning_pol.format.manifest import ClassSpec
from lightning_pol.format.state_codec import StateEncodingError, encode_state


def plain_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """hparams as plain containers (Hydra's DictConfig/ListConfig converted)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - hydra-core is a dependency
        DictConfig = ListConfig = ()  # type: ignore[assignment,misc]

    def conv(v: Any) -> Any:
        if DictConfig and isinstance(v, (DictConfig, ListConfig)):
            return OmegaConf.to_container(v, resolve=True)
        if isinstance(v, Mapping):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, list):
            return [conv(x) for x in v]
        if isinstance(v, tuple):
            return tuple(conv(x) for x in v)
        return v

    return {str(k): conv(v) for k, v in dict(hparams).items()}


def recreation_spec(obj: Any, role: str) -> ClassSpec:
    """How to re-create ``obj`` as ``Class(**hparams)``, or a :class:`NotRecreatableError` that says what to do.

    ``role`` is "LightningModule" or "LightningDataModule", for the message.
    """
    cls = type(obj)
    name = cls.__name__
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        raise NotRecreatableError(
            f"{role} {name} is defined in {'a script' if cls.__module__ == '__main__' else 'a function'}; "
            f"move it to an importable module so the verifier can re-create it"
        )
    try:
        if resolve_import_path(import_path(cls)) is not cls:
            raise ValueError
    except Exception:
        raise NotRecreatableError(f"{role} {name} cannot be imported as {import_path(cls)}") from None
    hparams = plain_hparams(getattr(obj, "hparams", {}) or {})
    params = inspect.signature(cls.__init__).parameters
    missing = [
        p.name
        for p in list(params.values())[1:]
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.name not in hparams
    ]
    if missing:
        raise NotRecreatableError(
            f"{role} {name} needs arguments {missing} that it does not record; "
            f"call self.save_hyperparameters() in {name}.__init__"
        )
    try:
        tensors, encoded = encode_state(hparams)
    except StateEncodingError as e:
        raise NotRecreatableError(
            f"{role} {name} records a hyperparameter that is not plain data ({e}); "
            f"pass plain values, or exclude it with save_hyperparameters(ignore=[...]) and give it a default"
        ) from None
    if tensors:
        raise NotRecreatableError(
            f"{role} {name} records tensors as hyperparameters ({sorted(tensors)}); pass plain values instead"
        )
    return ClassSpec(import_path(cls), encoded)


def check_module_recreates(module: torch.nn.Module, spec: ClassSpec) -> None:
    """Build ``class(**hparams)`` on the meta device and compare state_dict keys and shapes.

    Catches modules whose architecture depends on something the hyperparameters
    do not record (a global, a file read at init).
    """
    cls = resolve_import_path(spec.import_path)
    hparams = spec.arguments()
    try:
        with torch.device("meta"):
            twin = cls(**hparams)
    except Exception:
        try:
            twin = cls(**hparams)
        except Exception as e:
            raise NotRecreatableError(
                f"{cls.__qualname__}(**hparams) fails ({type(e).__name__}: {e}); record every argument with save_hyperparameters()"
            ) from None
    live = {k: tuple(v.shape) for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}
    made = {k: tuple(v.shape) for k, v in twin.state_dict().items() if isinstance(v, torch.Tensor)}
    if live != made:
        diff = sorted(set(live.items()) ^ set(made.items()))[:3]
        raise NotRecreatableError(
            f"{cls.__qualname__}(**hparams) builds a different network than the one being trained "
            f"(first differences: {diff}); record every architecture argument with save_hyperparameters()"
        )


def recreation_record(module: pl.LightningModule, datamodule: pl.LightningDataModule | None, check_shapes: bool,
                      parent: str | os.PathLike[str] | None) -> dict[str, Any]:
    """What the manifest says about re-creating this fit: ``module`` and ``datamodule`` specs, and the ``parent``
    record of a warm start; refuses with one line what the verifier could not re-create or check."""
    spec = recreation_spec(module, "LightningModule")
    if check_shapes:
        check_module_recreates(module, spec)
    record = None
    if parent is not None:
        record, final = parent_record(parent)
        differ = same_weights(module.state_dict(), final)
        if differ:
            raise PoLError(
                f"W_0 is not the parent proof's final state ({len(differ)} tensors differ, e.g. {differ[0]!r}); "
                "load it with model.load_state_dict() before fit"
            )
    return {"module": spec, "datamodule": recreation_spec(datamodule, "LightningDataModule") if datamodule is not None else None,
            "parent": record}

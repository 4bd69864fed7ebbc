"""What a proof records besides tensors: how to re-create the module and data, the
training settings that shape the trajectory, and the software and hardware.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import platform
import sys
from collections.abc import Mapping
from typing import Any

import lightning
import numpy as np
import safetensors
import torch

from lightning_pol.errors import PoLError
from lightning_pol.state_codec import StateEncodingError, encode_state


class NotRecreatableError(PoLError, ValueError):
    """The verifier could not re-create the module or the data from the proof."""


def import_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def resolve_import_path(path: str) -> type:
    """Import ``module:QualName``. Used by the verifier for the classes a proof names."""
    module_name, _, qualname = path.partition(":")
    if not module_name or not qualname:
        raise ValueError(f"bad import path {path!r}")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise ValueError(f"{path!r} is not a class")
    return obj


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


def recreation_spec(obj: Any, role: str) -> dict[str, Any]:
    """``{"class", "hparams"}`` for ``obj``, or a :class:`NotRecreatableError` that says what to do.

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
    return {"class": import_path(cls), "hparams": encoded}


def check_module_recreates(module: torch.nn.Module, spec: Mapping[str, Any]) -> None:
    """Build ``class(**hparams)`` on the meta device and compare state_dict keys and shapes.

    Catches modules whose architecture depends on something the hyperparameters
    do not record (a global, a file read at init).
    """
    from lightning_pol.state_codec import decode_state

    cls = resolve_import_path(spec["class"])
    hparams = decode_state({}, spec["hparams"])
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


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def _installed() -> dict[str, Any]:
    """What cannot change while the process runs, read once (never mutated: callers copy it).

    The CUDA and cuDNN queries and /proc/cpuinfo cost milliseconds, at every fit of a sweep.
    """
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "numpy": np.__version__,
        "safetensors": safetensors.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpus": tuple(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) if cuda else (),
    }


def environment() -> dict[str, Any]:
    """Software and hardware that bear on bit-exact replay."""
    installed = _installed()
    return {
        **{k: v for k, v in installed.items() if k != "gpus"},
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "gpus": list(installed["gpus"]),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "byteorder": sys.byteorder,
    }


def optimizer_config(opt: torch.optim.Optimizer) -> dict[str, Any]:
    groups = [{k: v for k, v in g.items() if k != "params"} | {"num_params": len(g["params"])} for g in opt.param_groups]
    return {"class": import_path(type(opt)), "param_groups": _jsonable(groups)}


def scheduler_config(cfg: Any) -> dict[str, Any]:
    return {
        "class": import_path(type(cfg.scheduler)),
        "interval": cfg.interval,
        "frequency": cfg.frequency,
        "monitor": cfg.monitor,
    }


def _jsonable(obj: Any) -> Any:
    tensors, tree = encode_state({"v": obj})
    if tensors:  # tensors inside param groups (e.g. tensor lr) are stored as lists
        return json.loads(json.dumps(obj, default=lambda t: t.tolist() if isinstance(t, torch.Tensor) else str(t)))
    return tree["v"]

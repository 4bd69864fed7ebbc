"""How the verifier will re-create the module and the data: the recipe the proof records, chosen at fit start.

A project builds its module one of three ways, and the proof records the matching recipe
(:data:`~lightning_pol.format.manifest.INSTANTIATORS`): plain hyperparameters
(``save_hyperparameters()``), LightningCLI's recorded config (its ``_instantiator``), or the
Hydra config node ``hydra.utils.instantiate`` built it from. Asked in ``setup``, before
``configure_optimizers`` or any data work, so a run whose proof could not be verified stops
before it costs anything; :mod:`.rehearsal` then checks the recipe against the live run.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from lightning_pol.errors import PoLError, one_line
from lightning_pol.format.classes import (
    NotRecreatableError,
    import_path,
    resolve_import_path,
)
from lightning_pol.format.lineage import parent_record, same_weights
from lightning_pol.format.manifest import ClassSpec
from lightning_pol.format.script_record import SCRIPT_MODULE
from lightning_pol.format.state_codec import StateEncodingError, encode_state
from lightning_pol.runtime.recreation import (
    LIGHTNING_CLI,
    canonical_targets,
    hydra_targets,
    locate,
)
from lightning_pol.runtime.training_script import TrainingScript, script_record, trains_when_imported


def plain_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """hparams as plain containers (Hydra's DictConfig/ListConfig converted)."""
    configs: tuple[type, ...] = ()
    if "omegaconf" in sys.modules:  # else no value is a DictConfig, and a fit's start need not import omegaconf
        from omegaconf import DictConfig, ListConfig, OmegaConf

        configs = (DictConfig, ListConfig)

    def conv(v: Any) -> Any:
        if configs and isinstance(v, configs):
            return OmegaConf.to_container(v, resolve=True)
        if isinstance(v, Mapping):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, list):
            return [conv(x) for x in v]
        if isinstance(v, tuple):
            return tuple(conv(x) for x in v)
        return v

    return {str(k): conv(v) for k, v in dict(hparams).items()}


def recreation_spec(obj: Any, role: str, config_key: str | None = None) -> ClassSpec:
    """How the verifier will re-create ``obj``, or a :class:`NotRecreatableError` that says what to do.

    ``role`` is "LightningModule" or "LightningDataModule", for the message. The recorded hparams are the
    recipe when they are plain data (``Class(**hparams)``) or LightningCLI's config (its ``_instantiator``);
    hparams holding objects (an ``nn.Module``, a partial optimizer) were built by Hydra, and the recipe
    is the config node that built them (``config_key``, or the one node whose ``_target_`` is the class).
    """
    cls = type(obj)
    name = cls.__name__
    if "<locals>" in cls.__qualname__:
        raise NotRecreatableError(f"{role} {name} is defined in a function; define it at the top level of its module or "
                                  f"script so the verifier can re-create it")
    try:  # a class of the script that was run is found again in the script (the manifest's script)
        if cls.__module__ != SCRIPT_MODULE and resolve_import_path(import_path(cls)) is not cls:
            raise ValueError
    except Exception:
        raise NotRecreatableError(f"{role} {name} cannot be imported as {import_path(cls)}") from None
    hparams = plain_hparams(getattr(obj, "hparams", {}) or {})
    if config_key is None and "_instantiator" in hparams:
        return _spec(cls, role, hparams, "lightning_cli")
    try:
        if config_key is not None:
            raise StateEncodingError("a config node was named")
        tensors, encoded = encode_state(hparams)
    except StateEncodingError as e:
        node = hydra_config_node(cls, role, config_key)
        if node is None:
            raise NotRecreatableError(
                f"{role} {name} records a hyperparameter that is not plain data ({e}); pass plain values, or exclude it "
                f"with save_hyperparameters(ignore=[...]) and give it a default, or build {name} with hydra.utils.instantiate "
                f"from a config node of this Hydra app"
            ) from None
        return _spec(cls, role, canonical_targets(node), "hydra")
    if tensors:
        raise NotRecreatableError(f"{role} {name} records tensors as hyperparameters ({sorted(tensors)}); pass plain values instead")
    params = inspect.signature(cls.__init__).parameters
    missing = [
        p.name
        for p in list(params.values())[1:]
        if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in hparams
    ]
    if missing:
        raise NotRecreatableError(
            f"{role} {name} needs arguments {missing} that it does not record; call self.save_hyperparameters() in {name}.__init__"
        )
    return ClassSpec(import_path(cls), encoded, "hparams", tuple(local_paths(hparams)))


def _spec(cls: type, role: str, config: dict[str, Any], instantiator: str) -> ClassSpec:
    if instantiator == "lightning_cli" and config["_instantiator"] != LIGHTNING_CLI:
        raise NotRecreatableError(f"{role} {cls.__name__} records _instantiator {config['_instantiator']!r}; "
                                  f"the verifier re-creates only with {LIGHTNING_CLI}")
    if instantiator == "hydra":
        config = {k: v for k, v in config.items() if k != "_target_"}
    try:
        tensors, encoded = encode_state(config)
    except StateEncodingError as e:
        raise NotRecreatableError(f"{role} {cls.__name__}'s config is not plain data ({e})") from None
    if tensors:
        raise NotRecreatableError(f"{role} {cls.__name__}'s config holds tensors ({sorted(tensors)})")
    return ClassSpec(import_path(cls), encoded, instantiator, tuple(local_paths(config)))


#: A key that names a file or directory (``data_dir``, ``root``, ``ckpt_path``): its value is one even without a ``/``.
_PATH_KEY = re.compile(r"(dir|path|root|file|folder)$", re.IGNORECASE)


def local_paths(config: Any, where: str = "") -> list[str]:
    """Keys whose values name files or directories here (``data_dir``): a verifier elsewhere overrides them."""
    if isinstance(config, Mapping):
        found: list[str] = []
        for key, value in config.items():
            found += local_paths(value, f"{where}.{key}" if where else str(key))
        return found
    looks_like = isinstance(config, str) and ("/" in config or os.sep in config or config.startswith("~")
                                              or bool(_PATH_KEY.search(where.rsplit(".", 1)[-1])))
    if looks_like and where and config not in ("", ".", "..", "/", "~") and len(config) < 4096:
        try:
            return [where] if os.path.exists(os.path.expanduser(config)) else []
        except (OSError, ValueError):
            return []
    return []


def _hydra_running() -> bool:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized()


def hydra_config_node(cls: type, role: str, key: str | None) -> dict[str, Any] | None:
    """The resolved node of this Hydra job's config that built ``cls``: at ``key``, or the one whose ``_target_``
    names ``cls``. None outside a Hydra app, or when no node names it and no ``key`` was given.

    The job's config is the one Hydra saved in ``<output_dir>/<output_subdir>/config.yaml`` before the task
    ran; its interpolations resolve here, in the job's process."""
    setting = f"{'module' if role == 'LightningModule' else 'datamodule'}_config"
    if "hydra" not in sys.modules or not _hydra_running():  # outside a Hydra app, Hydra is not imported (80 ms)
        if key is not None:
            raise NotRecreatableError(f"ProofOfLearning({setting}={key!r}) names a Hydra config node, but this run is not a Hydra app")
        return None
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    hc = HydraConfig.get()
    if hc.output_subdir is None:
        raise NotRecreatableError(f"{role} {cls.__name__} was built from a Hydra config, and hydra.output_subdir is null, so the "
                                  f"job's config is not saved; set hydra.output_subdir (default .hydra)")
    try:
        cfg = OmegaConf.load(Path(hc.runtime.output_dir) / hc.output_subdir / "config.yaml")
        if key is None:
            found = [where for where, target in hydra_targets(OmegaConf.to_container(cfg, resolve=False))
                     if where != "(top)" and names_class(target, cls)]
            if len(found) > 1 and role == "callback":
                raise NotRecreatableError(f"the Hydra config builds {cls.__name__} at {found}; the verifier cannot tell which is which")
            if len(found) > 1:
                raise NotRecreatableError(f"the Hydra config builds {role} {cls.__name__} at {found}; "
                                          f"say which with ProofOfLearning({setting}=KEY)")
            if not found:
                return None
            key = found[0]
        node = OmegaConf.select(cfg, key)
        if node is None or not OmegaConf.is_dict(node) or "_target_" not in node:
            raise NotRecreatableError(f"ProofOfLearning({setting}={key!r}): the Hydra config has no _target_ node there")
        config = OmegaConf.to_container(node, resolve=True)
    except (OmegaConfBaseException, OSError) as e:
        raise NotRecreatableError(f"cannot read the Hydra config that built {role} {cls.__name__} ({one_line(e)})") from None
    if not names_class(config["_target_"], cls):
        raise NotRecreatableError(f"the Hydra config node {key!r} builds {config['_target_']}, not {role} {import_path(cls)}")
    return config


def names_class(target: Any, cls: type) -> bool:
    """Whether a config's target string names ``cls`` (its import path, dotted path, or a re-export)."""
    if not isinstance(target, str):
        return False
    if target in (f"{cls.__module__}.{cls.__qualname__}", import_path(cls)):
        return True
    try:  # another import path of the same class (a re-export)
        return locate(target, None, "target") is cls
    except NotRecreatableError:
        return False


def recreation_record(trainer: pl.Trainer, module: pl.LightningModule, parent: str | os.PathLike[str] | None,
                      config_keys: Mapping[str, str | None]) -> dict[str, Any]:
    """What the manifest says about re-creating this fit: ``module`` and ``datamodule`` specs, the ``script`` they
    come from (a :class:`TrainingScript`, or None), and the ``parent`` record of a warm start; refuses with one line
    what the verifier could not re-create or check. ``config_keys``: the Hydra config nodes the user named
    (``module``, ``datamodule``)."""
    datamodule = trainer.datamodule
    source = trainer.fit_loop._data_source.instance
    script = _script(module, datamodule, handed_loaders=not isinstance(source, (pl.LightningModule, pl.LightningDataModule)))
    if script is not None and script.record.recipe == "fit":  # module and data: what the script hands to fit
        spec, dm = ClassSpec(import_path(type(module)), encode_state({})[1], "script"), None
    else:
        spec = recreation_spec(module, "LightningModule", config_keys.get("module"))
        dm = recreation_spec(datamodule, "LightningDataModule", config_keys.get("datamodule")) if datamodule is not None else None
    record = None
    if parent is not None:
        record, final = parent_record(parent)
        differ = same_weights(module.state_dict(), final)
        if differ:
            raise PoLError(
                f"W_0 is not the parent proof's final state ({len(differ)} tensors differ, e.g. {differ[0]!r}); "
                "load it with model.load_state_dict() before fit"
            )
    return {"module": spec, "datamodule": dm, "parent": record, "script": script}


def _script(module: pl.LightningModule, datamodule: pl.LightningDataModule | None, handed_loaders: bool) -> TrainingScript | None:
    """The training script the verifier will need, and its recipe: ``fit`` for data handed to ``fit`` (or a script
    that trains when imported), ``classes`` for classes defined in it; None when it needs none."""
    in_script = [type(o).__name__ for o in (module, datamodule) if o is not None and type(o).__module__ == SCRIPT_MODULE]
    if not handed_loaders and not in_script:
        return None
    what = "the training DataLoader handed to fit" if handed_loaders else f"the class {in_script[0]}"
    record, root = script_record("fit" if handed_loaders else "classes", what)
    if record.recipe == "classes" and trains_when_imported(root / record.path):
        record = dataclasses.replace(record, recipe="fit")
    return TrainingScript(record, root)

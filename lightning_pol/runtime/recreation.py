"""Re-creating the module and datamodule a proof names, the three ways projects build them.

- ``hparams``: ``Class(**hparams)``, the hyperparameters ``save_hyperparameters()`` recorded;
- ``lightning_cli``: the ``class_path``/``init_args`` config LightningCLI recorded (with its
  ``_instantiator``), built by Lightning's own :func:`lightning.pytorch.cli.instantiate_module`,
  as ``load_from_checkpoint`` does;
- ``hydra``: the ``_target_`` config node ``hydra.utils.instantiate`` built it from (nested
  ``_target_``, ``_partial_``), built by Hydra again.

Both the prover (at fit start, to refuse what the verifier could not re-create) and the verifier
use :func:`recreate`. Every class or callable a config would import or call, nested ones
included, passes :func:`gated` first: found without running code, not inside the proof, of a
kind that builds training objects. Nothing is called before every target passed.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import inspect
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_pol.format.classes import NotRecreatableError, import_path
from lightning_pol.format.manifest import INSTANTIATORS, ClassSpec

#: The one ``_instantiator`` a proof may name: Lightning's own, which LightningCLI records.
LIGHTNING_CLI = "lightning.pytorch.cli.instantiate_module"

_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$", re.ASCII)
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$", re.ASCII)
_DUNDER = re.compile(r"^__\w+__$", re.ASCII)
#: A string jsonargparse would read as YAML (a flow mapping or list, or a block): walked like the config itself.
_YAML_LIKE = re.compile(r"^\s*[\[{]|:\s|\n")

#: What a nested target may build: the objects training is made of.
TRAINING_KINDS: tuple[type, ...] = (
    torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler,
    torch.optim.lr_scheduler.ReduceLROnPlateau, torch.utils.data.Dataset, torch.utils.data.Sampler,
    pl.LightningModule, pl.LightningDataModule,
)
#: Modules whose classes and functions a nested target may name besides those kinds: transforms,
#: activations and initializers (they compute on tensors).
TRAINING_MODULES = ("torchvision.transforms", "torch.nn.functional", "torch.nn.init")


def locate(path: str, root: str | os.PathLike[str] | None, what: str) -> Any:
    """Import what ``path`` names (``module:QualName``, or Hydra's and jsonargparse's dotted form), refusing
    a top-level module inside ``root`` (the proof) before anything of it runs."""
    if not isinstance(path, str) or not (_IMPORT_PATH.match(path) or _DOTTED.match(path)):
        raise NotRecreatableError(f"the proof's {what} {str(path)[:80]!r} is not an import path module:QualName")
    if any(_DUNDER.match(part) for part in re.split(r"[.:]", path)):  # __main__ runs a program when imported
        raise NotRecreatableError(f"the proof's {what} {path!r} names a special module or attribute")
    top = path.partition(":")[0].split(".")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError) as e:
        raise NotRecreatableError(f"cannot import the proof's {what} {path!r} ({type(e).__name__}: {e})") from None
    if spec is None:
        raise NotRecreatableError(f"cannot import the proof's {what} {path!r} (ModuleNotFoundError: No module named {top!r})")
    if root is not None:
        proof = Path(root).resolve()
        for location in [spec.origin, *(spec.submodule_search_locations or [])]:
            if location and location not in ("built-in", "frozen") and Path(location).resolve().is_relative_to(proof):
                raise NotRecreatableError(f"the proof's {what} {path!r} would be imported from inside the proof directory")
    try:
        with _outside(root):
            return _import(path)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 - a module that fails to import (or exits, SystemExit): the proof's
        raise NotRecreatableError(f"cannot import the proof's {what} {path!r} ({type(e).__name__}: {e})".splitlines()[0]) from None


@contextmanager
def _outside(root: str | os.PathLike[str] | None) -> Iterator[None]:
    """``sys.path`` without the proof directory while importing: a package that extends its ``__path__`` when
    imported (``pkgutil.extend_path``) must not pick up modules shipped inside the proof."""
    if root is None:
        yield
        return
    proof, saved = Path(root).resolve(), list(sys.path)
    sys.path[:] = [p for p in saved if not (isinstance(p, str) and Path(p or os.getcwd()).resolve().is_relative_to(proof))]
    try:
        yield
    finally:
        sys.path[:] = saved


def _import(path: str) -> Any:
    if ":" in path:
        module_name, _, qualname = path.partition(":")
        obj: Any = importlib.import_module(module_name)
    else:  # dotted: the longest importable module prefix, then attributes (as Hydra's _locate does)
        parts = path.split(".")
        for i in range(len(parts) - 1, 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ModuleNotFoundError:
                continue
            qualname = ".".join(parts[i:])
            break
        else:
            raise ModuleNotFoundError(f"no module in {path!r}")
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def gated(path: str, root: str | os.PathLike[str] | None, what: str, base: type | None = None) -> Any:
    """:func:`locate`, then the kind check: ``base`` for a top-level class; for a nested target, a class of
    :data:`TRAINING_KINDS`, a torchvision model builder, or a public member of :data:`TRAINING_MODULES`."""
    obj = locate(path, root, what)
    if base is not None:
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise NotRecreatableError(f"the proof's {what} {path!r} is not a {base.__module__}.{base.__qualname__}")
        return obj
    if not _training_kind(obj):
        raise NotRecreatableError(
            f"the proof's {what} {path!r} builds no training object (a torch module, optimizer, scheduler, dataset, "
            f"sampler or transform); the verifier will not call it"
        )
    return obj


def _training_kind(obj: Any) -> bool:
    if isinstance(obj, type) and issubclass(obj, TRAINING_KINDS):
        return True
    module = getattr(obj, "__module__", None) or ""
    public = not getattr(obj, "__name__", "_").startswith("_")
    if public and (isinstance(obj, type) or inspect.isfunction(obj) or inspect.isbuiltin(obj)) and any(
        module == m or module.startswith(m + ".") for m in TRAINING_MODULES
    ):
        return True
    if inspect.isfunction(obj) and module.startswith("torchvision.models"):  # a registered builder: resnet18
        from torchvision.models import get_model_builder, list_models

        return any(get_model_builder(name) is obj for name in list_models())
    return False


# ---------------------------------------------------------------- the targets of a config


def hydra_targets(config: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """Every ``_target_`` of a Hydra config (nested in dicts and lists), with its key path."""
    if isinstance(config, Mapping):
        for key, value in config.items():
            if key == "_target_":
                yield where or "(top)", value
            else:
                yield from hydra_targets(value, f"{where}.{key}" if where else str(key))
    elif isinstance(config, (list, tuple)):
        for i, value in enumerate(config):
            yield from hydra_targets(value, f"{where}[{i}]")


def cli_targets(config: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """Every string of a LightningCLI config that jsonargparse could import (``class_path`` values, and
    dotted names it resolves for callable arguments), with its key path."""
    if isinstance(config, Mapping):
        items: Iterable[tuple[Any, Any]] = config.items()
    elif isinstance(config, (list, tuple)):
        items = ((f"[{i}]", v) for i, v in enumerate(config))
    else:
        return
    for key, value in items:
        at = f"{where}{key}" if str(key).startswith("[") else (f"{where}.{key}" if where else str(key))
        if isinstance(value, str) and (key in ("class_path", "_class_path") or (_DOTTED.match(value) and _importable(value))):
            yield at, value
        elif isinstance(value, str) and _YAML_LIKE.search(value):  # jsonargparse parses such a string as a config
            yield from cli_targets(_yaml(value), at)
        else:
            yield from cli_targets(value, at)


def _yaml(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError, ValueError):
        return None


def _importable(dotted: str) -> bool:
    """Whether jsonargparse could import ``dotted`` (its top-level module exists): then it is a target, not a string."""
    try:
        return importlib.util.find_spec(dotted.split(".")[0]) is not None
    except (ImportError, ValueError):
        return False


def _gated_if_code(path: str, root: str | os.PathLike[str] | None, what: str) -> None:
    try:
        obj = locate(path, root, what)
    except NotRecreatableError as e:
        if "inside the proof directory" in str(e):
            raise
        return  # not importable: jsonargparse passes it on as the string it is
    if callable(obj) and not _training_kind(obj):
        gated(path, root, what)  # raises, naming it


def gate_command_line(argv: Iterable[str], proof: str | os.PathLike[str] | None) -> None:
    """The recorded arguments a training script is run with again, as LightningCLI, jsonargparse or Hydra would read
    them: every value that names importable code (``--trainer.callbacks+=pkg.Class``, ``model._target_=pkg.f``, a
    ``class_path`` in a YAML flow value or in a config file an argument names) must build a training object, a
    Lightning callback or a logger; no config file may be one inside the proof directory."""
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.loggers import Logger

    tokens = list(argv)
    for i, token in enumerate(tokens):
        flag, eq, value = token.partition("=")
        if token.startswith("-") and not eq:
            continue  # a flag: its value is the next token, checked as one
        value = value if eq else token
        where = f"argument {i}"
        found = [(where, value)] if _DOTTED.match(value) and _importable(value) else []
        if _YAML_LIKE.search(value):
            parsed = _yaml(value)
            found += [*cli_targets(parsed, where), *((f"{where}.{w}", t) for w, t in hydra_targets(parsed) if isinstance(t, str))]
        if (i and tokens[i - 1] in _CONFIG_FLAGS) or flag in _CONFIG_FLAGS:  # a config file: the project's, never the proof's
            if proof is not None and _names_inside(value, proof):
                raise NotRecreatableError(f"the proof's script {where} names a config inside the proof directory; the verifier "
                                          f"will not run the script with it")
            found += _config_file_targets(value, where)
        for at, target in found:
            try:
                obj = locate(target, proof, f"script {at}")
            except NotRecreatableError as e:
                if "inside the proof directory" in str(e) or "special module" in str(e):
                    raise
                continue  # not importable: the script's parser reads it as the string it is
            if callable(obj) and not _training_kind(obj) and not (isinstance(obj, type) and issubclass(obj, (Callback, Logger))):
                raise NotRecreatableError(f"the proof's script {at} {target[:80]!r} names code that builds no training object, "
                                          f"callback or logger; the verifier will not run the script with it")


#: Arguments whose value is a config file (LightningCLI/jsonargparse's ``--config``/``-c``) or a Hydra config directory.
_CONFIG_FLAGS = ("--config", "-c", "--config-path", "-cp", "--config-dir", "-cd", "--config-name", "-cn")


def _names_inside(value: str, proof: str | os.PathLike[str]) -> bool:
    if not value or len(value) > 4096 or "\x00" in value:
        return False
    try:
        return Path(os.path.expanduser(value)).resolve().is_relative_to(Path(proof).resolve())
    except (OSError, ValueError, RuntimeError):
        return False


def _config_file_targets(value: str, where: str) -> list[tuple[str, str]]:
    """The targets a YAML or JSON config file an argument names would import (a directory: its YAML files)."""
    path = Path(value)
    files = sorted(path.rglob("*.y*ml"))[:200] if path.is_dir() else [path] if path.is_file() else []
    found: list[tuple[str, str]] = []
    for file in files:
        try:
            config = _yaml(file.read_text()[:1_000_000])
        except (OSError, UnicodeDecodeError):
            continue
        found += [*cli_targets(config, f"{where} ({file.name})"),
                  *((f"{where} ({file.name}) {w}", t) for w, t in hydra_targets(config) if isinstance(t, str))]
    return found


def _no_interpolation(config: Any, where: str) -> None:
    """OmegaConf would resolve ``${...}`` in a config Hydra builds: a resolver is code the proof would choose."""
    if isinstance(config, Mapping):
        for key, value in config.items():
            _no_interpolation(str(key), where)
            _no_interpolation(value, f"{where}.{key}")
    elif isinstance(config, (list, tuple)):
        for i, value in enumerate(config):
            _no_interpolation(value, f"{where}[{i}]")
    elif isinstance(config, str) and "${" in config:
        raise NotRecreatableError(f"the proof's {where} holds an interpolation {config[:60]!r}; a recorded config is resolved")


# ---------------------------------------------------------------- building


def apply_overrides(arguments: dict[str, Any], overrides: Mapping[str, Any] | None, role: str) -> dict[str, Any]:
    """The recorded arguments with the verifier's ``overrides`` merged in (nested keys for nested configs).

    Only keys the proof records can be overridden: a typo must not pass silently."""
    if not overrides:
        return arguments
    merged = copy.deepcopy(arguments)

    def merge(into: dict[str, Any], changes: Mapping[str, Any], where: str) -> None:
        for key, value in changes.items():
            if key not in into:
                raise NotRecreatableError(
                    f"{role}_overrides.{where}{key}: the proof's {role} records no such hyperparameter "
                    f"(it records {sorted(map(str, into))[:12]})"
                )
            if isinstance(value, Mapping) and isinstance(into[key], dict):
                merge(into[key], value, f"{where}{key}.")
            else:
                into[key] = copy.deepcopy(value)

    merge(merged, overrides, "")
    return merged


def recreate(spec: ClassSpec, cls: type, root: str | os.PathLike[str] | None,
             overrides: Mapping[str, Any] | None = None, role: str = "module") -> Any:
    """Build the object ``spec`` declares (``cls``, already through :func:`gated`) with its arguments.

    Raises :class:`NotRecreatableError` for a target the gate refuses, before anything is called;
    what the class itself raises propagates (the caller says whose code it was)."""
    arguments = apply_overrides(spec.arguments(), overrides, role)
    build = builder(spec.instantiator, cls, arguments, root, role)
    with warnings.catch_warnings():  # Lightning's advice to ignore an nn.Module hparam: a Hydra/CLI recipe needs it kept
        warnings.filterwarnings("ignore", message=r"Attribute '.*' is an instance of `nn.Module`")
        built = build()
    if not isinstance(built, cls):
        raise NotRecreatableError(f"the proof's {role} recipe built a {type(built).__name__}, not a {cls.__qualname__}")
    return built


def builder(instantiator: str, cls: type, arguments: dict[str, Any], root: str | os.PathLike[str] | None,
            role: str) -> Callable[[], Any]:
    """Check every target in ``arguments``, then return the call that builds the object."""
    if instantiator == "hparams":
        # A module may instantiate a config it was given (Hydra's _recursive_: false pattern): its targets are gated too.
        _no_interpolation(arguments, role)
        for where, target in [*hydra_targets(arguments), *((w, t) for w, t in cli_targets(arguments) if w.endswith("class_path"))]:
            gated(target, root, f"{role} target at {where}")
        return lambda: cls(**arguments)
    if instantiator == "lightning_cli":
        if arguments.get("_instantiator") != LIGHTNING_CLI:
            raise NotRecreatableError(f"the proof's {role} names _instantiator {str(arguments.get('_instantiator'))[:80]!r}; "
                                      f"only {LIGHTNING_CLI} is run")
        config = {k: v for k, v in arguments.items() if k != "_instantiator"}
        for where, target in cli_targets(config):
            if where.endswith("class_path"):
                gated(target, root, f"{role} target at {where}", cls if where == "_class_path" else None)
            else:  # a dotted string jsonargparse may import for a callable argument: gated if it is code
                _gated_if_code(target, root, f"{role} value at {where}")
        from lightning.pytorch.cli import instantiate_module

        return lambda: instantiate_module(cls, config)
    if instantiator == "hydra":
        _no_interpolation(arguments, role)
        if "_target_" in arguments or "_partial_" in arguments:  # the class is the proof's declared one, built now
            raise NotRecreatableError(f"the proof's {role} config sets its own _target_ or _partial_")
        config = {"_target_": cls, **_with_gated_targets(arguments, root, role)}
        from hydra.utils import instantiate

        return lambda: instantiate(config)
    if instantiator == "script":
        raise NotRecreatableError(f"the proof's {role} is what its training script hands to fit; the script builds it, no recipe")
    raise NotRecreatableError(f"the proof's {role} has instantiator {str(instantiator)[:40]!r}, not one of {list(INSTANTIATORS)}")


def _with_gated_targets(config: Any, root: str | os.PathLike[str] | None, role: str) -> Any:
    """A copy of a Hydra config whose every ``_target_`` is the gated object itself, so that nothing
    (Hydra, or the module calling instantiate later) imports a name from the proof."""
    return _map_targets(config, lambda target, where: gated(target, root, f"{role} target at {where or '(top)'}"))


def _map_targets(config: Any, replace: Callable[[Any, str], Any], where: str = "") -> Any:
    """A copy of a Hydra config with each ``_target_`` replaced by ``replace(target, where its node is)``."""
    if isinstance(config, Mapping):
        return {key: replace(value, where) if key == "_target_" else
                _map_targets(value, replace, f"{where}.{key}" if where else str(key)) for key, value in config.items()}
    if isinstance(config, (list, tuple)):
        return [_map_targets(v, replace, f"{where}[{i}]") for i, v in enumerate(config)]
    return config


def canonical_targets(config: Any) -> Any:
    """A resolved Hydra config with every ``_target_`` written as ``module:QualName`` (what the gate reads)."""
    return _map_targets(config, lambda t, _: import_path(_import(t)) if isinstance(t, str) and ":" not in t else t)

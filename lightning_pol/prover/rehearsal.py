"""The verifier's re-creation, rehearsed at fit start against the live run.

A proof its own verifier rejects must never be written without a word. So the callback runs the
recipe the proof records through the verifier's own code (:func:`~lightning_pol.runtime.recreation.recreate`,
the class gate included) and compares what it builds with what is being trained:

- in ``setup`` (before ``configure_optimizers``): the module's architecture (``state_dict`` keys and
  shapes), its layers' settings (``repr``) and its plain attributes (``self.lr = lr`` that
  ``save_hyperparameters()`` never saw);
- in ``on_train_start``: the optimizers and schedulers its ``configure_optimizers`` builds, and the first
  samples of the training data (data drawn from the global RNG in ``setup`` or ``train_dataloader()``
  would be other data for the verifier).

Everything runs under a forked, reseeded RNG: training draws what it would have drawn without it, and
data that depends on the global RNG comes out different here, where the difference is caught.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader

from lightning_pol.format.classes import NotRecreatableError
from lightning_pol.format.manifest import ClassSpec
from lightning_pol.runtime.leaves import sample_leaf
from lightning_pol.runtime.optimizer_hparams import close, group_hparams
from lightning_pol.runtime.recreation import gated, recreate
from lightning_pol.runtime.rng import preserved_rng
from lightning_pol.runtime.training_script import HandedFit, TrainingScript
from lightning_pol.runtime.training_state import canonical_key

_FIX = {
    "hparams": "pass it through __init__ and call self.save_hyperparameters()",
    "lightning_cli": "its recorded LightningCLI config must build it",
    "hydra": "build it only from its Hydra config node",
    "script": "the script, run again with the same arguments, must build it the same way",
}
_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")


@contextmanager
def elsewhere_rng() -> Iterator[None]:
    """The caller's RNG streams untouched, and the block's reseeded from the OS."""
    with preserved_rng():
        seed = int.from_bytes(os.urandom(4), "little")
        torch.random.default_generator.manual_seed(seed)  # not torch.manual_seed: that reseeds every CUDA device too
        np.random.seed(seed)
        random.seed(seed)
        yield


class Rehearsal:
    """Re-creates the module and data as the verifier will, and refuses, with one line, a run they differ from."""

    def __init__(self, specs: Mapping[str, Any], root: str | os.PathLike[str]) -> None:
        self.module_spec: ClassSpec = specs["module"]
        self.datamodule_spec: ClassSpec | None = specs["datamodule"]
        self.script: TrainingScript | None = specs.get("script")
        self.root = root
        self.twin: pl.LightningModule | None = None
        self.handed: HandedFit | None = None  # what the script, run again, hands to fit (the fit recipe)
        self.live_loader: DataLoader | None = None  # the training DataLoader the run handed to fit

    def _build(self, spec: ClassSpec, base: type, role: str, meta: bool) -> Any:
        with elsewhere_rng():  # loading the script runs its top level: its draws must not shift training's stream
            path = self.script.import_path(spec.import_path) if self.script is not None else spec.import_path
        cls = gated(path, self.root, role, base)
        with elsewhere_rng():
            if meta:
                try:
                    with torch.device("meta"):
                        return recreate(spec, cls, self.root, role=role)
                except NotRecreatableError:
                    raise
                except Exception:  # noqa: BLE001 - e.g. an init that reads a tensor's value: build it for real
                    pass
            try:
                return recreate(spec, cls, self.root, role=role)
            except NotRecreatableError:
                raise
            except Exception as e:  # noqa: BLE001 - the user's class, given the recipe the proof records
                raise NotRecreatableError(
                    f"{cls.__qualname__} re-created the way the verifier will ({spec.instantiator}) fails "
                    f"({type(e).__name__}: {e}); {_FIX[spec.instantiator]}".splitlines()[0]
                ) from None

    def check_module(self, live: pl.LightningModule) -> None:
        """The twin's architecture, layer settings and plain attributes are the live module's."""
        if self.module_spec.instantiator == "script":
            twin = self._run_script(live)
        else:
            twin = self._build(self.module_spec, pl.LightningModule, "module", meta=True)
        name, fix = type(live).__qualname__, _FIX[self.module_spec.instantiator]
        mine, theirs = plain_attributes(live), plain_attributes(twin)
        for key in sorted(set(mine) | set(theirs)):
            if key in mine and key in theirs and not _same(mine[key], theirs[key]):
                raise NotRecreatableError(
                    f"{name} re-created the way the verifier will has {key}={theirs[key]!r}, the module being trained "
                    f"{key}={mine[key]!r}; {fix}"
                )
        live_shapes, twin_shapes = shapes(live), shapes(twin)
        if live_shapes != twin_shapes:
            diff = sorted(set(live_shapes.items()) ^ set(twin_shapes.items()))[:3]
            raise NotRecreatableError(
                f"{name} re-created the way the verifier will builds a different network (first differences: {diff}); {fix}"
            )
        if self.handed is not None and frozen(live) != frozen(twin):  # a second fit of the script (the first one frozen)
            diff = sorted(frozen(live) ^ frozen(twin))[:3]
            raise NotRecreatableError(f"{name} as the script, run again, hands it to trainer.fit trains other parameters (first "
                                      f"differences in requires_grad: {diff}); {fix}, at its first trainer.fit")
        if _ADDRESS.sub("0x", repr(live)) != _ADDRESS.sub("0x", repr(twin)):
            raise NotRecreatableError(f"{name} re-created the way the verifier will has other layer settings (its repr differs); {fix}")
        self.twin = twin

    def _run_script(self, live: pl.LightningModule) -> pl.LightningModule:
        """Run the script to ``fit`` as the verifier will (reseeded: what it draws without seeding differs here)."""
        assert self.script is not None
        with elsewhere_rng():
            handed = self.script.run_to_fit()
        self.handed = handed.checked(self.module_spec.import_path, self.script.record.path)
        return handed.model

    def check_training(self, trainer: pl.Trainer, live_dataset: Any, resumed: bool) -> None:
        """The twin's ``configure_optimizers`` builds the live optimizers and schedulers (of the same kinds only,
        when ``resumed``: a restored optimizer holds the run's current learning rate); the re-created training
        data is the live data."""
        twin = self.twin
        if twin is None:
            return
        source = trainer.fit_loop._data_source.instance
        self.live_loader = source if isinstance(source, DataLoader) else None
        twin.trainer = trainer  # configure_optimizers and setup may read self.trainer (the template's does)
        try:
            self._check_optimizers(trainer, twin, resumed)
            self._check_data(twin, live_dataset)
        finally:
            twin._trainer = None

    def _check_optimizers(self, trainer: pl.Trainer, twin: pl.LightningModule, resumed: bool) -> None:
        from lightning.pytorch.core.optimizer import _configure_optimizers

        name, fix = type(twin).__qualname__, _FIX[self.module_spec.instantiator]
        with elsewhere_rng():
            try:  # in Lightning's order: a module may build layers in setup() or configure_model()
                twin.setup("fit")
                twin.configure_model()
                optimizers, schedulers, _ = _configure_optimizers(twin.configure_optimizers())
            except Exception as e:  # noqa: BLE001 - the user's code on the twin
                raise NotRecreatableError(
                    f"{name}.configure_optimizers() fails on the module the verifier re-creates ({type(e).__name__}: {e})".splitlines()[0]
                ) from None
        if [type(o) for o in optimizers] != [type(o) for o in trainer.optimizers]:
            raise NotRecreatableError(f"{name} re-created the way the verifier will configures other optimizers "
                                      f"({[type(o).__name__ for o in optimizers]}); {fix}")
        for i, (twin_opt, live_opt) in enumerate(zip(optimizers, [] if resumed else trainer.optimizers)):
            mine, theirs = group_hparams(live_opt.state_dict()), group_hparams(twin_opt.state_dict())
            if not close(mine, theirs):
                raise NotRecreatableError(f"{name} re-created the way the verifier will configures optimizer {i} with {theirs}, "
                                          f"the module being trained with {mine}; {fix}")
        twin_kinds = [type(s["scheduler"] if isinstance(s, Mapping) else s).__name__ for s in schedulers]
        live_kinds = [type(c.scheduler).__name__ for c in trainer.lr_scheduler_configs]
        if twin_kinds != live_kinds:
            raise NotRecreatableError(f"{name} re-created the way the verifier will configures schedulers {twin_kinds}, "
                                      f"the module being trained {live_kinds}; {fix}")

    def _check_data(self, twin: pl.LightningModule, live_dataset: Any) -> None:
        spec = self.datamodule_spec
        where = "the datamodule" if spec is not None else f"{type(twin).__qualname__}"
        if self.handed is not None:
            where = f"{self.script.record.path} run again to trainer.fit" if self.script is not None else where
        with elsewhere_rng():
            try:
                if self.handed is not None:
                    dataset = self._handed_loader(where).dataset
                elif spec is not None:
                    dm = self._build(spec, pl.LightningDataModule, "datamodule", meta=False)
                    dm.prepare_data()
                    dm.setup("fit")
                    dataset = dm.train_dataloader().dataset
                else:  # built for real: a module that makes its data in __init__ makes real tensors
                    dataset = self._build(self.module_spec, pl.LightningModule, "module", meta=False).train_dataloader().dataset
                size = len(live_dataset)
                if len(dataset) != size:
                    raise NotRecreatableError(f"{where} re-created the way the verifier will has {len(dataset)} training "
                                              f"samples, the run {size}")
                differ = [i for i in sorted({0, 1, size // 2, size - 1} & set(range(size)))
                          if sample_leaf(dataset, i) != sample_leaf(live_dataset, i)]
            except NotRecreatableError:
                raise
            except Exception as e:  # noqa: BLE001 - the user's data code, re-created
                raise NotRecreatableError(
                    f"{where} re-created the way the verifier will cannot build the training data ({type(e).__name__}: {e})".splitlines()[0]
                ) from None
        if differ and self.handed is not None:
            raise NotRecreatableError(
                f"{where} yields other training data (sample {differ[0]} differs): the script draws it from something a "
                f"rerun does not repeat (an unseeded RNG, the clock, the OS); seed it (seed_everything, or a torch.Generator "
                f"with a fixed seed)"
            )
        if differ:
            raise NotRecreatableError(
                f"{where} re-created the way the verifier will yields other training data (sample {differ[0]} differs): "
                f"it draws from the global RNG in setup() or train_dataloader(); give that draw its own seeded "
                f"generator (torch.Generator().manual_seed(...))"
            )


    def _handed_loader(self, where: str) -> Any:
        """The training DataLoader the script, run again, hands to ``fit`` (or its datamodule makes), checked against
        the live run's: its length, batch size and sampler."""
        assert self.handed is not None
        if self.handed.datamodule is not None:
            dm = self.handed.datamodule
            dm.prepare_data()
            dm.setup("fit")
            return dm.train_dataloader()
        loader, live = self.handed.train_loader, self.live_loader
        if not isinstance(loader, DataLoader):
            raise NotRecreatableError(f"{where} hands it {type(loader).__name__} as training data; a proof needs one torch DataLoader")
        if live is not None:
            for what, get in (("batches", len), ("batch size", lambda x: x.batch_size), ("sampler", lambda x: type(x.sampler).__name__),
                              ("drop_last", lambda x: x.drop_last)):
                if get(loader) != get(live):
                    raise NotRecreatableError(f"{where} hands it a training DataLoader with {what} {get(loader)!r}, the run {get(live)!r}")
        return loader


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:  # NaN
        return True
    return close(a, b)


def plain_attributes(module: torch.nn.Module) -> dict[str, Any]:
    """Public attributes of plain data, of the module and its submodules (``training`` aside)."""
    found: dict[str, Any] = {}
    for prefix, sub in module.named_modules():
        if sub is not module and isinstance(sub, torch._dynamo.eval_frame.OptimizedModule):
            continue
        for key, value in vars(sub).items():
            if key.startswith("_") or key == "training" or not _plain(value):
                continue
            found[canonical_key(f"{prefix}.{key}" if prefix else key)] = value
    return found


def _plain(value: Any, depth: int = 0) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if depth < 4 and isinstance(value, (list, tuple)):
        return all(_plain(v, depth + 1) for v in value)
    if depth < 4 and isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    return False


def frozen(module: torch.nn.Module) -> set[str]:
    """The parameters training leaves alone (``requires_grad`` False)."""
    return {canonical_key(k) for k, p in module.named_parameters() if not p.requires_grad}


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {canonical_key(k): tuple(v.shape) for k, v in module.state_dict().items()
            if isinstance(v, torch.Tensor) and not isinstance(v, torch.nn.parameter.UninitializedTensorMixin)}

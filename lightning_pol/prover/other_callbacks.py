"""The fit's other callbacks, classified at fit start: watched, replayed, or said and recorded.

Replay runs the user's module, and of the other callbacks those it can re-create:

- A callback that only watches (checkpointing, early stopping, progress bars, summaries, LR and
  device monitors, timers) cannot change the trajectory and passes silently; so does one that
  overrides no hook able to change it.
- A callback that changes training is **replayed** when the verifier can re-create it: from the
  project's config that built it (a Hydra ``_target_`` node, a LightningCLI ``class_path`` entry with
  plain ``init_args``), or, for Lightning's own
  (:mod:`lightning_pol.runtime.replayed_callbacks`), from the arguments read off it. The proof
  records its recipe (the manifest's ``callbacks``) and, at every checkpoint, its state.
- Any other gets one warning line naming it and the hooks, and the proof records its class
  (``training.callbacks``), so that a replay that fails can say which callback it did not run.
  ``ProofOfLearning(strict_callbacks=True)`` refuses such a run instead.

Replayed callbacks run in training's order, after ProofOfLearning, which moves itself first: a
checkpoint is taken before they act on a batch, as the replay, resumed from it, has them act. The
final state is taken after every callback's ``on_train_end`` (SWA's averaged weights, pruning made
permanent), by a hook of this module's that runs last.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import (
    Callback,
    Checkpoint,
    DeviceStatsMonitor,
    EarlyStopping,
    LearningRateMonitor,
    ModelSummary,
    ProgressBar,
    SpikeDetection,
    ThroughputMonitor,
    Timer,
)
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities.model_helpers import is_overridden

from lightning_pol.errors import PoLError, one_line
from lightning_pol.format.classes import NotRecreatableError, import_path
from lightning_pol.format.manifest import ClassSpec
from lightning_pol.format.state_codec import StateEncodingError, encode_state
from lightning_pol.runtime.recreation import canonical_targets, cli_targets, recreate
from lightning_pol.runtime.replayed_callbacks import (
    AfterAll,
    adapter,
    callbacks_epoch_end,
    capture_callbacks,
)

log = logging.getLogger(__name__)

#: Callbacks that watch training and never change it (LightningCLI's saves its config).
WATCHERS: tuple[type, ...] = (Checkpoint, EarlyStopping, ProgressBar, ModelSummary, LearningRateMonitor, DeviceStatsMonitor,
                              Timer, ThroughputMonitor, SpikeDetection, SaveConfigCallback)
#: Hooks that run while training and are handed what a step depends on.
TRAJECTORY_HOOKS = (
    "setup", "on_fit_start", "on_train_start", "on_train_epoch_start", "on_train_batch_start", "on_before_backward",
    "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad", "on_train_batch_end", "on_train_epoch_end",
    "on_validation_start", "on_validation_end", "on_train_end", "on_load_checkpoint", "load_state_dict",
)


def trajectory_hooks(callback: Callback) -> list[str]:
    """The hooks of ``callback`` able to change training (a watcher's own pass; a subclass's overrides do not)."""
    hooks = [h for h in TRAJECTORY_HOOKS if is_overridden(h, callback, Callback)]
    if isinstance(callback, WATCHERS):
        hooks = [h for h in hooks if not _lightnings(type(callback), h)]
    return hooks


def _lightnings(cls: type, hook: str) -> bool:
    """Whether the class that defines ``hook`` for ``cls`` is Lightning's own."""
    owner = next(c for c in cls.__mro__ if hook in vars(c))
    return owner.__module__.startswith(("lightning.", "pytorch_lightning."))


def callback_spec(callback: Callback, trainer: pl.Trainer) -> ClassSpec:
    """How the verifier re-creates ``callback``: from the Hydra config node or LightningCLI ``class_path`` entry that
    built it, or from the arguments read off one of Lightning's; else a :class:`NotRecreatableError` saying why not."""
    from lightning_pol.prover.recreation import hydra_config_node

    cls = type(callback)
    node = hydra_config_node(cls, "callback", None) if cls.__module__ != "__main__" else None
    if node is not None:
        arguments, instantiator = canonical_targets({k: v for k, v in node.items() if k != "_target_"}), "hydra"
    else:
        arguments, instantiator = _cli_arguments(trainer, cls), "hparams"
        if arguments is None:
            arguments = adapter(callback).arguments(callback)
        if arguments is None:
            raise NotRecreatableError("it is not built from the Hydra or LightningCLI config, and its arguments cannot be read off it")
    try:
        tensors, encoded = encode_state(arguments)
        encode_state({"state": callback.state_dict()})
    except StateEncodingError as e:
        raise NotRecreatableError(f"its arguments or state are not plain data ({e})") from None
    if tensors:
        raise NotRecreatableError("its arguments hold tensors")
    spec = ClassSpec(import_path(cls), encoded, instantiator)
    _same_settings(callback, recreate(spec, cls, None, None, "callback"))
    return spec


def _cli_arguments(trainer: pl.Trainer, cls: type) -> dict[str, Any] | None:
    """The ``init_args`` of the one ``trainer.callbacks`` entry of LightningCLI's config (kept by its
    ``SaveConfigCallback``) whose ``class_path`` names ``cls``; None outside a LightningCLI app or without one."""
    from lightning_pol.prover.recreation import names_class

    saver = next((c for c in trainer.callbacks if isinstance(c, SaveConfigCallback)), None)
    config = getattr(saver, "config", None)
    if config is None:
        return None
    config = config.as_dict() if hasattr(config, "as_dict") else dict(config)
    entries = (config.get("trainer") or {}).get("callbacks") or []
    found = [e for e in (entries if isinstance(entries, list) else [entries])
             if isinstance(e, dict) and names_class(e.get("class_path"), cls)]
    if len(found) > 1:
        raise NotRecreatableError(f"the LightningCLI config builds {cls.__name__} {len(found)} times; the verifier cannot tell which is which")
    if not found:
        return None
    arguments = dict(found[0].get("init_args") or {})
    if any(w.endswith("class_path") for w, _ in cli_targets(arguments)):
        raise NotRecreatableError("its LightningCLI init_args hold objects (class_path); give it plain values")
    return arguments


def _same_settings(live: Callback, twin: Callback) -> None:
    """The re-created callback's plain settings are the live one's (a recipe read wrong would replay another)."""
    plain, settings = (bool, int, float, str, type(None)), vars(live)
    for name, value in vars(twin).items():
        if name in settings and isinstance(value, plain) and isinstance(settings[name], plain) and settings[name] != value:
            raise NotRecreatableError(f"re-created from its recipe it has {name}={value!r}, the live one {settings[name]!r}")


class CallbackPlan:
    """The fit's other callbacks, classified at ``setup``: the replayed ones (:attr:`replayed`, :attr:`specs`)
    and those the replay does not run (:attr:`unreplayed`, each ``{"class", "hooks"}``)."""

    def __init__(self) -> None:
        self.replayed: list[Callback] = []
        self.specs: list[ClassSpec] = []
        self.unreplayed: list[dict[str, Any]] = []
        self.reasons: dict[str, str] = {}
        self._last: AfterAll | None = None
        self._trainer: pl.Trainer | None = None
        self.max_epochs: int | None = None

    def at_fit_start(self, trainer: pl.Trainer, pol: Callback, strict: bool,
                     finish: Callable[[pl.Trainer, pl.LightningModule], None]) -> None:
        """Classify, say what the replay will not run (or refuse, when ``strict``), and :meth:`arrange`."""
        self._classify(trainer, pol)
        self.announce(strict)
        self.arrange(trainer, pol, finish)

    def _classify(self, trainer: pl.Trainer, pol: Callback) -> None:
        self.max_epochs = trainer.max_epochs  # before any on_fit_start (SWA's adds an epoch)
        for callback in trainer.callbacks:
            hooks = [] if callback is pol or isinstance(callback, AfterAll) else trajectory_hooks(callback)
            if not hooks:
                continue
            try:
                self.specs.append(callback_spec(callback, trainer))
                self.replayed.append(callback)
            except Exception as e:  # noqa: BLE001 - re-creating runs the callback's own __init__: anything is a reason
                name = import_path(type(callback))
                self.unreplayed.append({"class": name, "hooks": hooks})
                self.reasons[name] = one_line(e) if isinstance(e, PoLError) else f"re-creating it raised {type(e).__name__}: {one_line(e)}"

    def announce(self, strict: bool) -> None:
        """One warning line per callback the replay will not run (a refusal, when ``strict``)."""
        for record in self.unreplayed:
            what = (f"callback {record['class']} overrides {', '.join(record['hooks'])}, which can change training, and the "
                    f"verifier cannot re-create it ({self.reasons.get(record['class'], '')})")
            if strict:
                raise PoLError(f"{what}; the replay does not run it, so the proof could not verify: remove it, build it from "
                               f"the Hydra config, or pass strict_callbacks=False to record it and train anyway")
            log.warning("proof of learning: %s; the replay will not run it (a segment it changed will not verify)", what)

    def arrange(self, trainer: pl.Trainer, pol: Callback, finish: Callable[[pl.Trainer, pl.LightningModule], None]) -> None:
        """ProofOfLearning first; with replayed callbacks, ``finish`` after every callback's ``on_train_end``."""
        trainer.callbacks.remove(pol)  # safe while Lightning iterates: the callbacks after it keep their places
        trainer.callbacks.insert(0, pol)
        if self.replayed:
            self._last = AfterAll(finish)
            trainer.callbacks.append(self._last)
            self._trainer = trainer

    def detach(self) -> None:
        if self._last is not None and self._trainer is not None and self._last in self._trainer.callbacks:
            self._trainer.callbacks.remove(self._last)
        self._last = None

    @property
    def finishes_last(self) -> bool:
        return self._last is not None

    def check_resume(self, resumed: bool) -> None:
        """Refuse a resume that a replayed callback does not survive (before anything is written)."""
        for callback in self.replayed if resumed else []:
            if adapter(callback).no_resume:
                raise PoLError(f"this fit resumes from a Lightning checkpoint with {type(callback).__name__}: {adapter(callback).no_resume}")

    def epoch_end(self, module: pl.LightningModule) -> None:
        callbacks_epoch_end(self.replayed, module)

    def capture(self, trainer: pl.Trainer, module: pl.LightningModule) -> list[dict[str, Any]] | None:
        return capture_callbacks(self.replayed, trainer, module) if self.replayed else None

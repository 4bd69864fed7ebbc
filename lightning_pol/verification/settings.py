"""VerifierSettings: the verifier's policy, one object shared by the CLI, ``verify_proof``, shards and the attacks suite."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lightning_pol.errors import PoLError
from lightning_pol.verification.distances import METRICS

MODES = ("auto", "exact", "tolerant")
#: What the verifier does with the proof's code identity (docs/verification.md, "Code identity").
CODE_POLICIES = ("match", "report", "pinned")
#: Where a replay can run: Lightning's accelerator names.
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")
#: How a multi-process (DDP) proof's ranks are replayed (docs/verification.md, "DDP proofs").
RANKS = ("auto", "processes", "emulate")


@dataclass(frozen=True)
class VerifierSettings:
    """How to verify a proof; checked when built, so a bad setting is one line before any work.

    - ``q``: top-Q segments per epoch by update magnitude (0 replays every segment);
      ``random``: extra segments per epoch drawn with ``seed`` (None: from the OS,
      at :meth:`resolved`; the seed used is in the report).
    - ``mode``: ``exact`` (a segment passes only if bit-identical), ``tolerant``
      (within ``delta`` per metric), or ``auto`` (exact when the environment
      matches the proof's, tolerant with ``delta`` otherwise). ``d_ref``
      normalizes the distances; ``calibration`` (a file of
      ``python -m lightning_pol.reproduce``) supplies both when not given.
    - ``full_data``: recompute every leaf, not only the replayed samples'.
    - ``num_shards``/``shard``: this job replays every ``num_shards``-th selected
      segment from ``shard`` on; every shard computes the same selection.
    - ``code``: ``match`` (the installed code must be the code that trained, or the proof is rejected
      before anything of it runs), ``report`` (replay anyway, report the differences), ``pinned`` (match,
      and every installed file listed in ``trusted_code``, a file of ``python -m lightning_pol.code pin``).
    - ``accelerator``, ``match_threads``: where and with how many CPU threads to replay.
    - ``ranks``: a DDP proof's W ranks replayed by W ``processes`` under Lightning's DDP on the proof's backend
      (exact for any W), by one process that ``emulate``\ s them as micro-batches (exact for two plain ranks only),
      or ``auto``: emulated where that is exact, else processes.
    - ``registry`` (a path, or a :class:`~lightning_pol.verification.registry.Registry`)
      and ``parents`` (a directory to search): the chain of trust. A pretrained start's weights
      must be a root the registry trusts (``python -m lightning_pol.roots add``), or the file ``roots``.
    - ``module_overrides``/``datamodule_overrides``: hyperparameters of the re-created module and
      datamodule that name local resources (``{"data_dir": "/data/digits"}``; nested dicts for nested
      configs). Only keys the proof records; the data commitment still decides whether the data is the same.

    Example::

        settings = VerifierSettings(q=1, random=2)
        verify_proof("proof/", settings)
        verify_proof("proof/", q=0)                  # the same, as keyword options
    """

    q: int = 1
    random: int = 1
    seed: int | None = None
    mode: str = "auto"
    delta: Mapping[str, float] = field(default_factory=dict)
    d_ref: Mapping[str, float] | None = None
    calibration: str | os.PathLike[str] | None = None
    full_data: bool = False
    num_shards: int = 1
    shard: int = 0
    accelerator: str = "cpu"
    match_threads: bool = True
    ranks: str = "auto"
    registry: Any = None
    parents: str | os.PathLike[str] | None = None
    roots: str | os.PathLike[str] | None = None
    code: str = "match"
    trusted_code: str | os.PathLike[str] | None = None
    project_root: str | os.PathLike[str] | None = None
    module_overrides: Mapping[str, Any] = field(default_factory=dict)
    datamodule_overrides: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        q, random, shards, shard = self.q, self.random, self.num_shards, self.shard
        if not all(_whole(v) for v in (q, random, shards, shard)) or q < 0 or random < 0 or shards < 1 or not 0 <= shard < shards:
            raise PoLError(f"bad verifier settings: q={q}, random={random}, num_shards={shards}, shard={shard}")
        if self.mode not in MODES:
            raise PoLError(f"verifier mode must be auto, exact or tolerant, not {self.mode!r}")
        if self.code not in CODE_POLICIES:
            raise PoLError(f"verifier code must be one of {list(CODE_POLICIES)}, not {self.code!r}")
        if (self.code == "pinned") != (self.trusted_code is not None):
            raise PoLError("verifier.code=pinned needs verifier.trusted_code=PATH (from python -m lightning_pol.code pin), "
                           "and trusted_code only applies to code=pinned")
        if self.ranks not in RANKS:
            raise PoLError(f"verifier ranks must be one of {list(RANKS)}, not {self.ranks!r}")
        if self.accelerator not in ACCELERATORS:
            raise PoLError(f"verifier accelerator must be one of {list(ACCELERATORS)}, not {self.accelerator!r}")
        if self.seed is not None and not (_whole(self.seed) and 0 <= self.seed < 2**63):
            raise PoLError(f"verifier seed must be an integer in [0, 2**63) or null, not {self.seed!r}")
        for name in ("delta", "d_ref"):
            values = getattr(self, name)
            if values is None and name == "d_ref":
                continue
            numbers = {k: v for k, v in (values or {}).items() if v is not None}
            if set(numbers) - set(METRICS):
                raise PoLError(f"{name} names unknown metrics {sorted(set(numbers) - set(METRICS))}; use {list(METRICS)}")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in numbers.values()):
                raise PoLError(f"{name} must be numbers >= 0 per metric, not {dict(numbers)}")
            object.__setattr__(self, name, {k: float(v) for k, v in numbers.items()})
        for name in ("module_overrides", "datamodule_overrides"):
            object.__setattr__(self, name, _overrides(name, getattr(self, name)))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], **more: Any) -> VerifierSettings:
        """From the Hydra ``verifier`` group (conf/verifier/default.yaml), plus ``more`` (registry, parents)."""
        from omegaconf import DictConfig, OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        try:
            values = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        except OmegaConfBaseException as e:  # an interpolation that does not resolve
            raise PoLError(f"bad verifier config: {e}".splitlines()[0]) from None
        assert isinstance(values, dict)
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise PoLError(f"unknown verifier settings {unknown}; see conf/verifier/default.yaml")
        return cls(**{**values, **more})

    def replace(self, **changes: Any) -> VerifierSettings:
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise PoLError(f"unknown verifier settings {unknown}; see VerifierSettings")
        return dataclasses.replace(self, **changes)

    def resolved(self) -> VerifierSettings:
        """These settings with the calibration file read (its d_ref, and its δ unless one is given) and the random
        seed drawn: what one verification, or every shard of it, runs under."""
        delta, d_ref = dict(self.delta), self.d_ref
        if self.calibration is not None:
            from lightning_pol.verification.reproducibility import read_calibration

            cal = read_calibration(self.calibration)
            d_ref = d_ref or cal["d_ref"]
            delta = delta or cal["delta"]
        if self.mode == "tolerant" and not delta:
            raise PoLError("tolerant mode needs at least one threshold, e.g. verifier.delta.l2=1e-4")
        seed = int.from_bytes(os.urandom(8), "little") >> 1 if self.seed is None else self.seed
        return dataclasses.replace(self, delta=delta, d_ref=d_ref, calibration=None, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, as a report and the registry record them."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["delta"], out["d_ref"] = dict(self.delta), dict(self.d_ref) if self.d_ref else None
        out["module_overrides"], out["datamodule_overrides"] = dict(self.module_overrides), dict(self.datamodule_overrides)
        for key in ("calibration", "parents", "roots", "trusted_code", "project_root"):
            out[key] = None if out[key] is None else str(out[key])
        registry = self.registry
        out["registry"] = None if registry is None else str(getattr(registry, "path", registry))
        return out


def _overrides(name: str, values: Any) -> dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(values, DictConfig):
        values = OmegaConf.to_container(values, resolve=True)
    if values is None:
        return {}
    if not isinstance(values, Mapping) or not all(isinstance(k, str) and k for k in values):
        raise PoLError(f"{name} must map hyperparameter names to values, not {values!r}"[:200])
    return {k: _overrides(name, v) if isinstance(v, Mapping) else v for k, v in values.items()}


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

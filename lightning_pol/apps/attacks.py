"""``python -m lightning_pol.attacks``: run every spoof of the literature against the verifier.

Builds an honest proof with the configured model, data and trainer, every
attack's spoofed proof, and runs the configured verifier (``verifier=default``)
on each; then, unless ``attacks.tolerant.enabled=false``, the same against
tolerant mode. Writes ``attacks.json`` and ``attacks.md`` to the run directory.
Exit 0 when ``honest`` is accepted and every attack rejected by the default
verifier, 1 otherwise, 2 for bad input.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lightning_pol.apps import CONF_DIR, exit_code
from lightning_pol.apps.progress import ReplayProgress
from lightning_pol.attacks.suite import run_suite
from lightning_pol.attacks.toolkit import Setup
from lightning_pol.verification.settings import VerifierSettings


def setup_from(cfg: DictConfig) -> Setup:
    """The victim's setup from the ``model``, ``data``, ``trainer``, ``init`` and ``pol`` groups."""
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert isinstance(trainer, dict)
    trainer.pop("_target_", None)
    return Setup(
        make_model=lambda **o: instantiate(cfg.model, **o),
        make_datamodule=lambda **o: instantiate(cfg.data, **o),
        trainer=trainer,
        every_n_steps=int(cfg.pol.every_n_steps),
        full_every_n_steps=None if cfg.pol.get("full_every_n_steps") is None else int(cfg.pol.full_every_n_steps),
        init_strategy=str(cfg.init.strategy),
        init_params=OmegaConf.to_container(cfg.init.params) or {},  # type: ignore[arg-type]
        seed=int(cfg.seed),
    )


def run(cfg: DictConfig) -> int:
    return exit_code(lambda: _run(cfg, Path(HydraConfig.get().runtime.output_dir)))


def _run(cfg: DictConfig, out: Path) -> int:
    a = cfg.attacks
    tolerant = None
    if a.tolerant.enabled:
        tolerant = {"delta": OmegaConf.to_container(a.tolerant.delta) if a.tolerant.delta else None, "calibration": a.tolerant.calibration}
    with warnings.catch_warnings(), ReplayProgress() as show:
        warnings.simplefilter("ignore")
        result = run_suite(
            setup_from(cfg), out, names=list(a.names), params=OmegaConf.to_container(a.params, resolve=True),  # type: ignore[arg-type]
            verifier=VerifierSettings.from_config(cfg.verifier), detection_trials=int(a.detection_trials), tolerant=tolerant, progress=show.say,
        )
    print((out / "attacks.md").read_text())
    print(f"results: {out / 'attacks.json'}")
    rows = result["attacks"]
    ok = rows[0]["verdict"] == "accepted" and all(r["verdict"] == "rejected" for r in rows[1:])
    return 0 if ok else 1


@hydra.main(config_path=CONF_DIR, config_name="attacks", version_base="1.3")
def main(cfg: DictConfig) -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning_pol"):
        logging.getLogger(name).setLevel(logging.WARNING)
    code = run(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()

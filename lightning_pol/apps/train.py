"""``python -m lightning_pol.train``: train the configured model with a Proof-of-Learning.

Any group can be overridden: ``model=resnet20 data=fake_cifar10 init=kaiming_normal
pol.every_n_steps=4 trainer.max_steps=12``. The proof goes to ``pol.dirpath``,
relative to the run directory unless absolute or a URL (``s3://bucket/run/proof``). Exit 0 on success (and a valid
proof with ``verify=true``), 1 for a rejected proof, 2 for bad input, 3 for a
crash (:mod:`lightning_pol.apps`).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lightning_pol.apps import CONF_DIR, exit_code
from lightning_pol.apps.verify import REPORT, verify_and_report
from lightning_pol.format.reader import ProofReader
from lightning_pol.format.storage import is_url
from lightning_pol.init import initialize, start_from
from lightning_pol.verification.settings import VerifierSettings

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> int:
    """Train as ``cfg`` says (and verify with ``verify=true``); returns the exit code."""
    return exit_code(lambda: _train(cfg, Path(HydraConfig.get().runtime.output_dir)))


def _train(cfg: DictConfig, out: Path) -> int:
    verifier = VerifierSettings.from_config(cfg.verifier) if cfg.verify else None  # a bad setting stops it before training
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    init_params = OmegaConf.to_container(cfg.init.params) or {}
    model = instantiate(cfg.model)
    if cfg.init.strategy == "pretrained":  # the published weights, and a fresh draw for the rest
        start_from(model, **init_params)
    else:
        initialize(model, str(cfg.init.strategy), **init_params)
    datamodule = instantiate(cfg.data)
    dirpath: str | Path = str(cfg.pol.dirpath) if is_url(str(cfg.pol.dirpath)) else Path(cfg.pol.dirpath)
    if isinstance(dirpath, Path) and not dirpath.is_absolute():
        dirpath = out / dirpath  # a relative directory is the run's; a URL is where the user said
    pol = instantiate(cfg.pol, dirpath=str(dirpath), init_strategy=str(cfg.init.strategy), init_params=init_params)
    trainer = instantiate(cfg.trainer, callbacks=[pol])
    trainer.fit(model, datamodule=datamodule)
    if trainer.global_rank != 0:
        return 0  # another process of a DDP run: rank 0 wrote the proof and reports on it
    proof = ProofReader(dirpath, pol.storage_options)
    size = sum(e.bytes for e in proof.manifest.files.values())
    print(f"proof: {dirpath.resolve() if isinstance(dirpath, Path) else dirpath}")
    print(f"size: {size / 1e6:.2f} MB, {len(proof.checkpoints)} checkpoints, final step {proof.manifest.final_step}")
    print(f"identity: {proof.identity}")
    return 0 if verifier is None else verify_and_report(verifier, dirpath, out / REPORT, pol.storage_options)


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    code = run(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()

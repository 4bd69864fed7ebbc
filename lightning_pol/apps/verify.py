"""``python -m lightning_pol.verify proof_dir=DIR``: verify a proof; exit 0 valid, 1 rejected, 2 unusable input, 3 crash.

Under ``--multirun``, ``verifier.num_shards=N verifier.shard=0,...,N-1`` splits one
verification across jobs; :class:`lightning_pol.apps.shards.MergeShards` (registered
in ``conf/verify.yaml``) merges them into ``verification.json`` in the sweep
directory and exits with the merged verdict.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lightning_pol.apps import CONF_DIR, exit_code
from lightning_pol.apps.progress import ReplayProgress
from lightning_pol.apps.tracker_verdict import log_verdict
from lightning_pol.attestation.verdict import AttestSettings, attest_verdict
from lightning_pol.errors import PoLError
from lightning_pol.format.reader import ProofReader
from lightning_pol.format.storage import open_store
from lightning_pol.format.strict_json import ProofFormatError
from lightning_pol.verification.settings import VerifierSettings
from lightning_pol.verification.verifier import verify_proof

REPORT = "verification.json"
ERROR = "verification.error.json"
SHARED_SEED = "verifier_seed.txt"


def verify_with(settings: VerifierSettings, proof_dir: str | Path, out: Path) -> int:
    """Verify with ``settings``, write the report to ``out``, print the summary; returns the exit code."""
    return exit_code(lambda: verify_and_report(settings, proof_dir, out), _error_file(out, proof_dir))


def verify_and_report(settings: VerifierSettings, proof_dir: str | Path, out: Path, storage_options: Any = None,
                      tracker: Any = None, attest: AttestSettings | None = None) -> int:
    """The body of :func:`verify_with`: raises what :func:`~lightning_pol.apps.exit_code` turns into exit 2 or 3.
    ``tracker``: the app's ``tracker`` config, the run that gets the report and the verdict; ``attest``: where the
    verdict is attested, and with which key (a shard's verdict is partial: the merge attests the whole one)."""
    store = open_store(proof_dir, storage_options)
    if not store.is_container():
        raise PoLError(f"no proof directory at {proof_dir}")
    if attest is not None:
        if settings.num_shards > 1:
            raise PoLError("attest.out attests a whole verdict, and one shard's is partial: run the shards as one --multirun "
                           "(verifier.shard=0,...,N-1), whose merge writes the attestation")
        try:
            attest.check_model(ProofReader(store))  # a wrong attest.model is one line now, not after the replay
        except ProofFormatError:
            pass  # a proof that cannot be read: the verifier says why, and attests it FAILED
    label = f"shard {settings.shard}/{settings.num_shards}" if settings.num_shards > 1 else ""
    with ReplayProgress("replaying segments", label=label) as progress:
        report = verify_proof(store, settings, progress=progress)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report.to_json())
    except OSError as e:
        raise PoLError(f"cannot write the report to {out} ({e.strerror})") from None
    print(report.summary())
    print(f"report: {out}")
    if tracker is not None and settings.num_shards == 1:  # a shard's verdict is partial: the merge logs the whole one
        print(f"verdict logged to {log_verdict(tracker, report.valid, report.proof_identity, out)}")
    if attest is not None:
        print(attest_verdict(json.loads(report.to_json()), attest, storage_options))
    return 0 if report.valid else 1


def _error_file(out: Path, proof_dir: Any) -> Callable[[str, int], None]:
    """Where a job that ends without a report says why (a multirun's merge reads it)."""

    def write(message: str, code: int) -> None:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            (out.parent / ERROR).write_text(json.dumps({"error": message, "exit_code": code, "proof_dir": str(proof_dir)}))
        except OSError:
            pass  # the error line on stderr says it already

    return write


def run(cfg: DictConfig) -> int:
    hc = HydraConfig.get()
    job_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    out = job_dir / REPORT if multirun or not cfg.get("report") else Path(str(cfg.report))
    proof_dir = None if OmegaConf.is_missing(cfg, "proof_dir") else cfg.proof_dir

    def body() -> int:
        if proof_dir is None:
            raise PoLError("no proof to verify: pass proof_dir=DIR")
        attest = AttestSettings.from_config(cfg.get("attest"))
        settings = VerifierSettings.from_config(cfg.verifier, registry=cfg.get("registry"), parents=cfg.get("parents"), roots=cfg.get("roots"),
                                                project_root=cfg.get("project_root"),
                                                module_overrides=cfg.get("module_overrides"),
                                                datamodule_overrides=cfg.get("datamodule_overrides"))
        if multirun and settings.seed is None:  # every shard of a sweep selects with the sweep's one seed
            seed_file = Path(hc.sweep.dir) / SHARED_SEED
            if seed_file.exists():
                settings = settings.replace(seed=int(seed_file.read_text()))
        storage = OmegaConf.to_container(cfg.storage_options) if cfg.get("storage_options") else None
        # in a multirun the merge attests the whole verdict (a shard's is partial; a sweep's jobs would share attest.out)
        return verify_and_report(settings, str(proof_dir), out, storage, cfg.get("tracker"), None if multirun else attest)

    return exit_code(body, _error_file(out, proof_dir))


#: Hyperparameter overrides take any key the proof records, so they are added, not only set (Hydra's ``++``).
OVERRIDE_GROUPS = ("module_overrides.", "datamodule_overrides.", "storage_options.")


def open_overrides(argv: list[str]) -> list[str]:
    """``datamodule_overrides.data_dir=X`` as ``++datamodule_overrides.data_dir=X``: the user names keys of the
    proof's hyperparameters, which no config file can list, and needs no ``+``."""
    return [f"++{a}" if a.startswith(OVERRIDE_GROUPS) else a for a in argv]


@hydra.main(config_path=CONF_DIR, config_name="verify", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    code = run(cfg)
    if code and HydraConfig.get().mode != RunMode.MULTIRUN:
        sys.exit(code)


if __name__ == "__main__":
    sys.argv[1:] = open_overrides(sys.argv[1:])
    main()

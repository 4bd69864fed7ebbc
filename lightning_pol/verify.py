"""``python -m lightning_pol.verify proof_dir=DIR``: verify a proof; exit 0 valid, 1 rejected, 2 unusable input.

Under ``--multirun``, ``verifier.num_shards=N verifier.shard=0,...,N-1`` splits one
verification across jobs; :class:`lightning_pol.multirun.MergeShards` (registered
in ``conf/verify.yaml``) merges them into ``verification.json`` in the sweep
directory and exits with the merged verdict.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lightning_pol.errors import PoLError, one_line
from lightning_pol.verifier import verify_proof

CONF = str(Path(__file__).resolve().parent.parent / "conf")
REPORT = "verification.json"
ERROR = "verification.error.json"
SHARED_SEED = "verifier_seed.txt"


def verify_with(v: DictConfig, proof_dir: str | Path, out: Path, seed: int | None = None,
                registry: str | None = None, parents: str | None = None) -> int:
    """Verify with the ``verifier`` config group ``v``, write the report to ``out``; returns the exit code."""
    try:
        proof_dir = Path(proof_dir)
        if not proof_dir.is_dir():
            raise PoLError(f"no proof directory at {proof_dir}")
        delta = {k: float(x) for k, x in (OmegaConf.to_container(v.delta) or {}).items() if x is not None}
        from tqdm.auto import tqdm

        bar = tqdm(total=0, desc="replaying segments", unit="segment", disable=not sys.stderr.isatty())

        def progress(done: int, total: int) -> None:
            bar.total, bar.n = total, done
            bar.refresh()

        report = verify_proof(
            proof_dir, q=int(v.q), random=int(v.random), seed=v.seed if v.seed is not None else seed, mode=str(v.mode),
            delta=delta, full_data=bool(v.full_data), num_shards=int(v.num_shards), shard=int(v.shard),
            accelerator=str(v.accelerator), match_threads=bool(v.match_threads), progress=progress,
            registry=registry, parents=parents, calibration=v.get("calibration"),
        )
        bar.close()
    except (PoLError, OmegaConfBaseException, OSError, sqlite3.Error, ValueError, TypeError, KeyError) as e:
        # Everything a hostile proof could provoke ends here as one line, never a traceback.
        message = one_line(e)
        print(f"error: {message}", file=sys.stderr)
        out.parent.mkdir(parents=True, exist_ok=True)
        (out.parent / ERROR).write_text(json.dumps({"error": message, "exit_code": 2, "proof_dir": str(proof_dir)}))
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.to_json())
    print(report.summary())
    print(f"report: {out}")
    return 0 if report.valid else 1


def run(cfg: DictConfig) -> int:
    hc = HydraConfig.get()
    job_dir = Path(hc.runtime.output_dir)
    try:
        proof_dir = str(cfg.proof_dir)
        report = cfg.report
        chain = {"registry": cfg.get("registry"), "parents": cfg.get("parents")}
    except OmegaConfBaseException as e:
        print(f"error: {one_line(e)} (pass proof_dir=DIR)", file=sys.stderr)
        return 2
    if hc.mode == RunMode.MULTIRUN:
        seed_file = Path(hc.sweep.dir) / SHARED_SEED
        seed = int(seed_file.read_text()) if seed_file.exists() else None
        return verify_with(cfg.verifier, proof_dir, job_dir / REPORT, seed, **chain)
    return verify_with(cfg.verifier, proof_dir, Path(report) if report else job_dir / REPORT, **chain)


@hydra.main(config_path=CONF, config_name="verify", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    code = run(cfg)
    if code and HydraConfig.get().mode != RunMode.MULTIRUN:
        sys.exit(code)


if __name__ == "__main__":
    main()

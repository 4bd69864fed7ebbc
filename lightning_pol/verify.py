"""``python -m lightning_pol.verify proof_dir=DIR``: verify a proof; exit 0 valid, 1 rejected, 2 unusable input."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lightning_pol.errors import PoLError
from lightning_pol.verifier import verify_proof

CONF = str(Path(__file__).resolve().parent.parent / "conf")


def run(cfg: DictConfig) -> int:
    """Verify as ``cfg`` says, print the summary, write the report; returns the exit code."""
    try:
        v = cfg.verifier
        proof_dir = Path(cfg.proof_dir)
        if not proof_dir.is_dir():
            raise PoLError(f"no proof directory at {proof_dir}")
        delta = {k: float(x) for k, x in (OmegaConf.to_container(v.delta) or {}).items() if x is not None}
        from tqdm.auto import tqdm

        bar = tqdm(total=0, desc="replaying segments", unit="segment", disable=not sys.stderr.isatty())

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        report = verify_proof(
            proof_dir, q=int(v.q), random=int(v.random), seed=v.seed, mode=str(v.mode), delta=delta,
            full_data=bool(v.full_data), num_shards=int(v.num_shards), shard=int(v.shard),
            accelerator=str(v.accelerator), match_threads=bool(v.match_threads), progress=progress,
        )
        bar.close()
    except (PoLError, OmegaConfBaseException, OSError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    out = Path(cfg.report) if cfg.report else Path(hydra.core.hydra_config.HydraConfig.get().runtime.output_dir) / "verification.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.to_json())
    print(report.summary())
    print(f"report: {out}")
    return 0 if report.valid else 1


@hydra.main(config_path=CONF, config_name="verify", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    code = run(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()

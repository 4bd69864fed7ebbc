"""``python -m lightning_pol.reproduce``: the seed's Table I for any configured model and data.

Writes ``table.json``, ``table.md``, ``entropy_growth.png`` (normalized ε_repr
against k) and ``calibration.json`` (d_ref, ε_repr at ``reproduce.calibrate_k``
and a suggested δ, read by ``verifier.calibration=``) to the run directory.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lightning_pol.apps import CONF_DIR, exit_code
from lightning_pol.apps.progress import ReplayProgress
from lightning_pol.format.reader import ProofReader
from lightning_pol.init import initialize
from lightning_pol.prover.callback import ProofOfLearning
from lightning_pol.verification.distances import METRICS, distances
from lightning_pol.verification.reproducibility import (
    mean_std,
    normalize,
    powers_of_two,
    reproduction_errors,
    write_calibration,
)

log = logging.getLogger(__name__)


def _train(cfg: DictConfig, seed: int, callbacks: list[Any]) -> pl.LightningModule:
    pl.seed_everything(seed, workers=True, verbose=False)
    params = OmegaConf.to_container(cfg.init.params) or {}
    model = instantiate(cfg.model)
    initialize(model, str(cfg.init.strategy), **params)
    trainer = instantiate(cfg.trainer, callbacks=callbacks)
    trainer.fit(model, datamodule=instantiate(cfg.data))
    return model


def study(cfg: DictConfig, out: Path) -> dict[str, Any]:
    with ReplayProgress() as show:
        return _study(cfg, out, show)


def _study(cfg: DictConfig, out: Path, show: ReplayProgress) -> dict[str, Any]:
    r = cfg.reproduce
    proof = out / "prover" / "proof"
    params = OmegaConf.to_container(cfg.init.params) or {}
    pol = ProofOfLearning(proof, every_n_steps=int(cfg.pol.every_n_steps), init_strategy=str(cfg.init.strategy), init_params=params)
    show.say(f"prover: training seed {cfg.seed} with a checkpoint every {cfg.pol.every_n_steps} steps")
    prover = _train(cfg, int(cfg.seed), [pol])
    final = {k: v.detach().cpu() for k, v in prover.state_dict().items()}
    refs = []
    for i, s in enumerate(r.seeds, 1):
        show.say(f"d_ref: training seed {s} ({i}/{len(r.seeds)})")
        other = _train(cfg, int(s), [])
        refs.append(distances(final, {k: v.detach().cpu() for k, v in other.state_dict().items()}))
    d_ref = mean_std(refs)
    total = ProofReader(proof).manifest.final_step
    assert total is not None
    ks = sorted(set(powers_of_two(total)) | {int(r.calibrate_k)} & set(range(1, total + 1)))
    roots = params.get("weights") if str(cfg.init.strategy) == "pretrained" else None  # the prover's own root, which its checkpoints reference
    eps = reproduction_errors(proof, ks, noise=str(r.noise), noise_threads=int(r.noise_threads), max_segments=int(r.max_segments),
                              progress=show.say, roots=roots)

    def deterministic(message: str, done: int | None = None, total: int | None = None, steps: tuple[int, int] | None = None) -> None:
        show.say(f"deterministic {message}", done, total, steps)

    det = reproduction_errors(proof, [total], noise=str(r.noise), noise_threads=int(r.noise_threads), max_segments=1, deterministic=True,
                              progress=deterministic, roots=roots)[total]
    rows = {"k=1": eps[1]["max"], "k=E*S": eps[total]["max"], "deterministic": det["max"]}
    table = {
        "normalized": {name: normalize(v, d_ref) for name, v in rows.items()},
        "d_ref": {m: d_ref[m]["mean"] for m in METRICS},
        "d_ref_std": {m: d_ref[m]["std"] for m in METRICS},
        "raw": rows,
        "by_k": {str(k): {"max": v["max"], "mean": v["mean"], "normalized": normalize(v["max"], d_ref), "segments": v["segments"]} for k, v in eps.items()},
        "steps": total,
        "noise": str(r.noise),
        "noise_threads": int(r.noise_threads) if r.noise == "threads" else None,
        "seeds": list(r.seeds),
    }
    (out / "table.json").write_text(json.dumps(table, indent=1))
    (out / "table.md").write_text(table_markdown(table))
    plot(table, out / "entropy_growth.png")
    k_cal = int(r.calibrate_k) if int(r.calibrate_k) in eps else ks[0]
    write_calibration(out / "calibration.json", d_ref, eps[k_cal]["max"], k_cal, str(r.noise))
    return table


def table_markdown(table: dict[str, Any]) -> str:
    names = {"l1": "ℓ1", "l2": "ℓ2", "linf": "ℓ∞", "cos": "cos"}
    lines = [
        f"Normalized reproduction error ε_repr / d_ref ({table['steps']} steps, noise: {table['noise']}, d_ref over seeds {table['seeds']})",
        "",
        "| metric | k = 1 | k = E·S | deterministic operations (k = E·S) | d_ref |",
        "| --- | --- | --- | --- | --- |",
    ]
    n = table["normalized"]
    for m in METRICS:
        lines.append(f"| {names[m]} | {n['k=1'][m]:.3g} | {n['k=E*S'][m]:.3g} | {n['deterministic'][m]:.3g} | {table['d_ref'][m]:.4g} ± {table['d_ref_std'][m]:.2g} |")
    return "\n".join(lines) + "\n"


def plot(table: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted(int(k) for k in table["by_k"])
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in METRICS:
        ys = [max(table["by_k"][str(k)]["normalized"][m], 1e-12) for k in ks]
        ax.plot(ks, ys, marker="o", label=m)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("k (steps replayed from a checkpoint)")
    ax.set_ylabel("ε_repr(k) / d_ref (max over segments)")
    ax.set_title(f"Entropy growth: reproduction error vs k (noise: {table['noise']})")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@hydra.main(config_path=CONF_DIR, config_name="reproduce", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    out = Path(HydraConfig.get().runtime.output_dir)

    def body() -> int:
        table = study(cfg, out)
        print(table_markdown(table))
        print(f"outputs: {out}/table.json, table.md, entropy_growth.png, calibration.json")
        return 0

    code = exit_code(body)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()

"""The reproducibility study of the seed (§VI.C, Table I): d_ref, ε_repr(k) and δ calibration.

ε_repr(t) = d(W_t+k, W'_t+k): the distance between a checkpoint and its replay
from W_t under noise (another thread count, non-deterministic GPU kernels),
normalized by d_ref, the distance between two independently trained models.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from lightning_pol.format.reader import ProofReader
from lightning_pol.verification.pretrained_check import use_trusted_root
from lightning_pol.verification.distances import METRICS, distances
from lightning_pol.verification.replay import PoLVerifierModule
from lightning_pol.verification.segments import takes_steps

NOISES = ("threads", "gpu", "none")


def mean_std(values: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {
        m: {"mean": statistics.fmean(v[m] for v in values), "std": statistics.pstdev([v[m] for v in values]) if len(values) > 1 else 0.0}
        for m in METRICS
    }


def powers_of_two(total: int) -> list[int]:
    ks, k = [], 1
    while k < total:
        ks.append(k)
        k *= 2
    return ks + [total]


def reproduction_errors(
    proof: str | Path, ks: Sequence[int], noise: str = "threads", noise_threads: int = 1, max_segments: int = 8,
    deterministic: bool | None = None, progress: Callable[..., None] | None = None, roots: str | Path | None = None,
) -> dict[int, dict[str, Any]]:
    """ε_repr(k) per metric (max and mean over up to ``max_segments`` segments of length k, evenly spread).

    The proof must hold a checkpoint at every segment boundary (k=1 proofs hold all; a tiered proof only its full
    states, so k = K measures what its tolerant replay judges). ``progress(message)`` is
    called once per k; a hook that declares ``steps`` is also called per segment, as
    ``progress("k=K", done=i, total=n, steps=(start, end))`` (``done=0`` first). ``roots``: the weights file of a
    pretrained proof's root, whose tensors its checkpoints reference.
    """
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {NOISES}")
    reader = ProofReader(proof)
    use_trusted_root(reader, None, roots)
    final = reader.manifest.final_step
    entries = {c.step: c for c in reader.checkpoints if c.full}  # a tiered proof's digests give no state to measure
    verifier = PoLVerifierModule(reader, accelerator="gpu" if noise == "gpu" else "cpu", deterministic=deterministic)
    threads = torch.get_num_threads()
    prover_threads = reader.manifest.environment.get("torch_threads") or threads
    torch.set_num_threads(noise_threads if noise == "threads" else prover_threads)
    out: dict[int, dict[str, Any]] = {}
    per_segment = progress if progress is not None and takes_steps(progress) else None
    try:
        for k in ks:
            starts = list(range(0, final - k + 1, k)) or [0]
            if len(starts) > max_segments:
                starts = [starts[round(i * (len(starts) - 1) / (max_segments - 1))] for i in range(max_segments)] if max_segments > 1 else starts[:1]
            samples = []
            replays = sum(t in entries and min(t + k, final) in entries for t in starts)
            if per_segment is not None:
                per_segment(f"k={k}", done=0, total=replays, steps=None)
            for t in starts:
                end = min(t + k, final)
                if t not in entries or end not in entries:
                    continue
                got = verifier.replay(t, end)
                samples.append(distances(got["model"], reader.load_checkpoint(entries[end])["model"]))
                if per_segment is not None:
                    per_segment(f"k={k}", done=len(samples), total=replays, steps=(t, end))
            if progress is not None:
                progress(f"k={k}: {len(samples)} segments")
            out[k] = {
                "max": {m: max(s[m] for s in samples) for m in METRICS},
                "mean": {m: statistics.fmean(s[m] for s in samples) for m in METRICS},
                "segments": len(samples),
            }
    finally:
        torch.set_num_threads(threads)
    return out


def normalize(eps: dict[str, float], d_ref: dict[str, dict[str, float]]) -> dict[str, float]:
    return {m: (eps[m] / d_ref[m]["mean"] if d_ref[m]["mean"] > 0 else math.inf) for m in METRICS}


def suggested_delta(eps: dict[str, float], d_ref: dict[str, dict[str, float]]) -> dict[str, float]:
    """δ between the largest honest error and d_ref: their geometric mean (d_ref · 1e-6 when replay was exact)."""
    out = {}
    for m in METRICS:
        ref = d_ref[m]["mean"]
        low = eps[m] if eps[m] > 0 else ref * 1e-6
        out[m] = math.sqrt(low * ref) if ref > 0 else 0.0
    return out


def write_calibration(path: str | Path, d_ref: dict[str, dict[str, float]], eps_k: dict[str, float], k: int, noise: str) -> dict[str, Any]:
    """The file the verifier's tolerant mode reads (``verifier.calibration=PATH``)."""
    cal = {
        "format": "lightning-pol/calibration", "version": 1, "k": k, "noise": noise,
        "d_ref": {m: d_ref[m]["mean"] for m in METRICS},
        "epsilon": eps_k,
        "delta": suggested_delta(eps_k, d_ref),
    }
    Path(path).write_text(json.dumps(cal, indent=1))
    return cal


def read_calibration(path: str | Path) -> dict[str, Any]:
    from lightning_pol.errors import PoLError

    try:
        cal = json.loads(Path(path).read_text())
        if cal.get("format") != "lightning-pol/calibration":
            raise ValueError("not a calibration file")
        return {"d_ref": {m: float(cal["d_ref"][m]) for m in METRICS}, "delta": {m: float(cal["delta"][m]) for m in METRICS}, "k": int(cal["k"])}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PoLError(f"cannot read calibration {path}: {e}") from None

"""verify_proof: Algorithm 2 of the paper, with exact replay, random segments and hostile-input checks."""

from __future__ import annotations

import functools
import importlib.util
import itertools
import logging
import math
import os
import random as _random
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_pol import proof_format as pf
from lightning_pol.chain import find_parent, same_weights
from lightning_pol.commitment import compute_leaves, root_of, sample_leaf
from lightning_pol.distances import METRICS, distances
from lightning_pol.errors import PoLError, one_line
from lightning_pol.index_log import IndexLog
from lightning_pol.metadata import NotRecreatableError, environment, import_path, resolve_import_path
from lightning_pol.reader import ProofFormatError, ProofReader
from lightning_pol.registry import Registry
from lightning_pol.replay import PoLVerifierModule
from lightning_pol.report import Report, Segment
from lightning_pol.state_codec import decode_state

log = logging.getLogger(__name__)

#: Environment fields that must match for bit-exact replay to be expected.
EXACT_FIELDS = ("torch", "cuda", "machine", "torch_threads", "deterministic_algorithms", "cudnn_deterministic", "float32_matmul_precision")


def identical(a: Any, b: Any) -> bool:
    """Bit-for-bit equality of two decoded states (tensors by dtype, shape and bytes)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
            and a.shape == b.shape and torch.equal(a.detach().cpu(), b.detach().cpu())
        )
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return list(a.keys()) == list(b.keys()) and all(identical(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def detection_probability(candidates: int, random_picks: int, fakes: int) -> float:
    """Chance that ``random_picks`` segments drawn without replacement from ``candidates`` hit one of ``fakes``."""
    if fakes <= 0 or random_picks <= 0 or candidates <= 0:
        return 0.0
    if random_picks > candidates - fakes:
        return 1.0
    return 1.0 - math.comb(candidates - fakes, random_picks) / math.comb(candidates, random_picks)


def verify_proof(
    proof_dir: str | os.PathLike[str],
    q: int = 1,
    random: int = 1,
    seed: int | None = None,
    mode: str = "auto",
    delta: Mapping[str, float] | None = None,
    d_ref: Mapping[str, float] | None = None,
    full_data: bool = False,
    num_shards: int = 1,
    shard: int = 0,
    accelerator: str = "cpu",
    match_threads: bool = True,
    progress: Callable[[int, int], None] | None = None,
    registry: str | os.PathLike[str] | Registry | None = None,
    parents: str | os.PathLike[str] | None = None,
    calibration: str | os.PathLike[str] | None = None,
    _chain: tuple[str, ...] = (),
) -> Report:
    """Verify the proof in ``proof_dir``; returns a :class:`~lightning_pol.report.Report`.

    Example::

        report = verify_proof("proof/", q=1, random=1)
        print(report.summary()); assert report.valid

    ``q``: top-Q segments per epoch by update magnitude (0 replays every
    segment). ``random``: extra segments per epoch drawn with ``seed`` (from
    the OS when None; the seed is in the report). ``mode``: "exact" (a segment
    passes only if bit-identical), "tolerant" (passes within ``delta`` per
    metric), or "auto" (exact when the environment matches the proof's,
    tolerant with ``delta`` otherwise). ``num_shards``/``shard`` split the
    selected segments across jobs; every shard computes the same selection.

    ``calibration``: a file written by ``python -m lightning_pol.reproduce``;
    its d_ref normalizes the distances and its δ is used when ``delta`` is
    not given.

    ``registry``: a :class:`~lightning_pol.registry.Registry` (or its path)
    of verified proofs; a proof with a parent looks the parent up there, or
    finds it (at its recorded path or under ``parents``) and verifies it with
    the same settings. The result is recorded in the registry.

    Raises :class:`~lightning_pol.reader.ProofFormatError` only when the
    manifest itself is unusable; every other problem is a failed check.
    """
    if q < 0 or random < 0 or num_shards < 1 or not 0 <= shard < num_shards:
        raise PoLError(f"bad verifier settings: q={q}, random={random}, num_shards={num_shards}, shard={shard}")
    if mode not in ("auto", "exact", "tolerant"):
        raise PoLError(f"verifier mode must be auto, exact or tolerant, not {mode!r}")
    if calibration is not None:  # from python -m lightning_pol.reproduce: its d_ref, and its δ unless one is given
        from lightning_pol.reproducibility import read_calibration

        cal = read_calibration(calibration)
        d_ref = d_ref or cal["d_ref"]
        delta = delta or cal["delta"]
    delta = {k: float(v) for k, v in (delta or {}).items() if v is not None}
    if set(delta) - set(METRICS):
        raise PoLError(f"delta names unknown metrics {sorted(set(delta) - set(METRICS))}; use {list(METRICS)}")
    if mode == "tolerant" and not delta:
        raise PoLError("tolerant mode needs at least one threshold, e.g. verifier.delta.l2=1e-4")
    seed = int.from_bytes(os.urandom(8), "little") >> 1 if seed is None else int(seed)

    if registry is not None and not isinstance(registry, Registry):
        registry = Registry(registry)
    settings = dict(q=q, random=random, seed=seed, mode=mode, delta=delta, d_ref=d_ref, full_data=full_data, calibration=None,
                    accelerator=accelerator, match_threads=match_threads, registry=registry, parents=parents)
    reader = ProofReader(proof_dir)
    if reader.identity in _chain or len(_chain) > 64:
        raise ProofFormatError("the chain of parent proofs loops or is deeper than 64")
    m = reader.manifest
    report = Report(proof_dir=str(proof_dir), proof_identity=reader.identity, valid=False)
    prover_env = m.get("environment") if isinstance(m.get("environment"), dict) else {}
    threads_before = torch.get_num_threads()
    try:
        if match_threads and isinstance(prover_env.get("torch_threads"), int) and 0 < prover_env["torch_threads"] <= 1024:
            torch.set_num_threads(prover_env["torch_threads"])
        mine = environment()
        differs = {k: {"proof": prover_env.get(k), "verifier": mine.get(k)} for k in EXACT_FIELDS if prover_env.get(k) != mine.get(k)}
        if accelerator != "cpu" or prover_env.get("gpus"):
            if bool(prover_env.get("gpus")) != (accelerator != "cpu"):
                differs["device_type"] = {"proof": "gpu" if prover_env.get("gpus") else "cpu", "verifier": accelerator}
        effective = mode if mode != "auto" else ("exact" if not differs or not delta else "tolerant")
        report.environment = {"verifier": mine, "proof": prover_env, "matches": not differs, "differences": differs}
        report.mode = {"requested": mode, "effective": effective, "delta": delta, "d_ref": dict(d_ref or {})}
        if differs and effective == "exact":
            report.reasons.append(f"the verifier's environment differs from the proof's ({', '.join(differs)}); exact replay may fail")
        _verify(reader, report, q, random, seed, effective, delta, d_ref, full_data, num_shards, shard, accelerator, progress)
        _check_chain(reader, report, settings, _chain + (reader.identity,))
    finally:
        torch.set_num_threads(threads_before)
    report.reasons = [one_line(r) for r in report.reasons]
    report.valid = all(c.get("passed") is not False for c in report.checks.values()) and all(
        c.get("passed") is True for name, c in report.checks.items() if name in ("integrity", "initialization", "data", "replay", "chain")
    )
    report.checks["chain"]["vsr"] = _vsr(report) * report.checks["chain"].setdefault("parent_vsr", 1.0)
    if registry is not None and num_shards == 1 and report.checks.get("integrity", {}).get("passed"):
        final = reader.checkpoints[-1]["sha256"] if reader.checkpoints else ""
        registry.record(reader.identity, final, report.valid, report.checks["chain"]["vsr"],
                        {"q": q, "random": random, "seed": seed, "mode": mode, "delta": delta,
                         "chain": report.checks["chain"]["proofs"]}, report.environment.get("verifier", {}))
    return report


def _vsr(report: Report) -> float:
    """Per-proof verification success rate: see docs/verification.md ("Chain of trust")."""
    checks = [c for name, c in report.checks.items() if name not in ("replay", "chain")]
    if any(c.get("passed") is False for c in checks):
        return 0.0
    if not report.segments:
        return 1.0 if report.checks.get("replay", {}).get("passed") else 0.0
    return sum(1 for s in report.segments if s.passed) / len(report.segments)


def _check_chain(reader: ProofReader, report: Report, settings: dict[str, Any], chain: tuple[str, ...]) -> None:
    """W_0 of a warm start must be its parent's final state, and the parent must be valid (registry or verification)."""
    parent = reader.manifest.get("parent")
    if not parent:
        report.checks["chain"] = {"passed": True, "proofs": [reader.identity], "parent_from_registry": None,
                                  "summary": "fresh start, no parent"}
        return
    check: dict[str, Any] = {"passed": False, "proofs": [reader.identity], "parent_from_registry": False}
    report.checks["chain"] = check
    problems: list[str] = []
    if not isinstance(parent, dict) or not isinstance(parent.get("identity"), str):
        problems.append("the manifest's parent entry is malformed")
    elif report.checks.get("integrity", {}).get("passed"):
        preader = find_parent(reader, settings["parents"])
        if preader is None:
            problems.append(f"the parent proof {parent['identity'][:16]}... was not found (pass parents=DIR)")
        else:
            try:
                if preader.manifest.get("status") != pf.STATUS_COMPLETE or not preader.checkpoints:
                    raise ProofFormatError("the parent proof is not complete")
                final = preader.checkpoints[-1]
                if final["sha256"] != parent.get("final_checkpoint_sha256"):
                    problems.append("the parent's final checkpoint is not the one the proof names")
                w0 = reader.load_checkpoint(reader.checkpoints[0])["model"]
                differ = same_weights(w0, preader.load_checkpoint(final)["model"])
                if differ:
                    problems.append(f"W_0 is not the parent's final state ({len(differ)} tensors differ, e.g. {differ[0]})")
                registry = settings["registry"]
                record = registry.lookup(preader.identity) if registry is not None else None
                if record is not None and record["valid"] and record["final_digest"] == final["sha256"]:
                    check["parent_from_registry"] = True
                    check["proofs"] += list(record["settings"].get("chain") or [preader.identity])
                    check["parent_vsr"] = float(record["vsr"])
                else:
                    sub = verify_proof(preader.root, num_shards=1, shard=0, _chain=chain, **settings)
                    check["proofs"] += sub.checks["chain"]["proofs"]
                    check["parent_vsr"] = sub.checks["chain"]["vsr"]
                    check["parent_report"] = {"valid": sub.valid, "reasons": sub.reasons}
                    if not sub.valid:
                        problems.append(f"the parent proof is not valid: {(sub.reasons or ['rejected'])[0]}")
            except ProofFormatError as e:
                problems.append(f"the parent proof is unusable: {e}")
    else:
        problems.append("integrity failed; the chain was not followed")
    check["passed"] = not problems
    check["problems"] = problems
    check["summary"] = f"chain of {len(check['proofs'])} proofs" + (" (parent from registry)" if check["parent_from_registry"] else "") if not problems else problems[0]
    report.reasons.extend(problems[:2])
    init = report.checks.get("initialization")
    if init is not None and init.get("strategy") == "warm_start":
        report.checks["initialization"] = {"passed": check["passed"], "strategy": "warm_start",
                                           "summary": "W_0 is the parent's final state" if check["passed"] else check["summary"]}


@dataclass
class Integrity:
    """What the integrity check found: ``problems`` (empty when it passes), unlisted files, and the index log."""

    problems: list[str]
    unlisted: list[str]
    index_log: IndexLog | None


def check_integrity(reader: ProofReader) -> Integrity:
    """Digests, layout, checkpoint steps and the index log: everything checked before any checkpoint is parsed.

    Public so that the hostile-proof fuzz (:mod:`lightning_pol.fuzz`) runs exactly this code.
    """
    m = reader.manifest
    found = reader.verify_files()
    unlisted = [p.removeprefix("unlisted file: ") for p in found if p.startswith("unlisted file")]
    problems = [p for p in found if not p.startswith("unlisted file")]
    steps = [c["step"] for c in reader.checkpoints]
    final = m.get("final_step")
    if m.get("status") != pf.STATUS_COMPLETE:
        problems.append("the proof is not complete (training did not finish writing it)")
    if not steps or steps[0] != 0:
        problems.append("there is no checkpoint at step 0")
    if not isinstance(final, int) or not steps or steps[-1] != final:
        problems.append(f"the last checkpoint is not at the final step {final}")
    k = m["every_n_steps"]
    if isinstance(final, int) and steps and not _checkpoints_at(steps, final, k):
        problems.append(f"checkpoints are missing: the proof needs one at 0, every k={k} steps and at {final}")
    index_log = None
    if not problems:
        try:  # a checkpoint that does not parse is caught where it is first loaded (in the content checks)
            index_log = reader.index_log()
            if index_log.steps != final:
                problems.append(f"the index log holds {index_log.steps} steps, the proof claims {final}")
        except ProofFormatError as e:
            problems.append(str(e))
    return Integrity(problems, unlisted, index_log)


def _checkpoints_at(steps: list[int], final: int, k: int) -> bool:
    """``steps`` is exactly 0, k, 2k, ... below ``final``, then ``final``, compared without building that list:
    ``final`` and ``k`` come from the manifest, and range(0, 10**12, 1) as a set is a memory bomb."""
    below = -(-final // k)  # len(range(0, final, k)), which overflows for a final step past 2**63
    return len(steps) == below + 1 and all(a == b for a, b in zip(steps, itertools.chain(range(0, final, k), [final])))


_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$", re.ASCII)


def declared_class(root: str | os.PathLike[str], path: Any, base: type | None, what: str) -> type:
    """Import the class a proof names, refusing what the verifier must never run.

    A proof names classes that the verifier then calls with the proof's hparams, so the class
    must be of the kind its role needs (``base``): ``subprocess:Popen`` as a module would be
    ``Popen(args=...)``. And its top-level module must come from this machine, not from the
    proof directory (where it could land on sys.path when the verifier runs from inside it):
    that is found with ``find_spec``, which locates a top-level module without running it.
    """
    if not isinstance(path, str) or not _IMPORT_PATH.match(path):
        raise NotRecreatableError(f"the proof's {what} class {str(path)[:80]!r} is not an import path module:QualName")
    top = path.partition(":")[0].split(".")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError) as e:
        raise NotRecreatableError(f"cannot import the proof's {what} {path!r} ({type(e).__name__}: {e})") from None
    if spec is None:
        raise NotRecreatableError(f"cannot import the proof's {what} {path!r} (ModuleNotFoundError: No module named {top!r})")
    proof = Path(root).resolve()
    for location in [spec.origin, *(spec.submodule_search_locations or [])]:
        if location and location not in ("built-in", "frozen") and Path(location).resolve().is_relative_to(proof):
            raise NotRecreatableError(f"the proof's {what} {path!r} would be imported from inside the proof directory")
    try:
        cls = resolve_import_path(path)
    except Exception as e:  # an installed module that fails to import, or a missing attribute
        raise NotRecreatableError(f"cannot import the proof's {what} {path!r} ({type(e).__name__}: {e})".splitlines()[0]) from None
    if base is not None and not (isinstance(cls, type) and issubclass(cls, base)):
        raise NotRecreatableError(f"the proof's {what} {path!r} is not a {base.__module__}.{base.__qualname__}")
    return cls


def check_declared_classes(reader: ProofReader) -> None:
    """Every class the proof names, checked by :func:`declared_class` before any of them is called."""
    import lightning.pytorch as pl

    m = reader.manifest
    declared: list[tuple[str, Any, type | None]] = [("module", m["module"]["class"], pl.LightningModule)]
    if m.get("datamodule") is not None:
        declared.append(("datamodule", m["datamodule"]["class"], pl.LightningDataModule))
    training = decode_state({}, m["training"])
    for key, base in (("optimizers", torch.optim.Optimizer), ("lr_schedulers", None)):
        entries = training.get(key)
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, Mapping) and "class" in entry:
                declared.append((key[:-1].replace("lr_", "LR "), entry["class"], base))
    module = None
    for what, path, base in declared:
        cls = declared_class(reader.root, path, base, what)
        module = module or cls
        # Lightning's own rule: a scheduler that is not a torch LRScheduler needs the module's lr_scheduler_step.
        if what == "LR scheduler" and not issubclass(cls, torch.optim.lr_scheduler.LRScheduler) and (
            getattr(module, "lr_scheduler_step", None) is getattr(pl.LightningModule, "lr_scheduler_step", None)
        ):
            raise NotRecreatableError(f"the proof's LR scheduler {path!r} is not a torch LRScheduler, and the module has no lr_scheduler_step")


def open_for_replay(reader: ProofReader, index_log: IndexLog, accelerator: str = "cpu") -> PoLVerifierModule:
    """The replay harness of a proof that passed integrity; raises a PoLError (unusable input, exit 2)
    when this machine cannot import the proof's classes, or when one of them is not what its role
    needs. No code of the proof's classes runs here (importing their installed modules aside)."""
    check_declared_classes(reader)
    return PoLVerifierModule(reader, accelerator=accelerator, index_log=index_log)


def _verify(reader: ProofReader, report: Report, q: int, n_random: int, seed: int, mode: str, delta: dict[str, float],
            d_ref: Mapping[str, float] | None, full_data: bool, num_shards: int, shard: int, accelerator: str,
            progress: Callable[[int, int], None] | None) -> None:
    integrity = check_integrity(reader)
    problems = integrity.problems
    # Files the manifest does not list are not part of the proof; they are reported, and nothing reads them.
    report.checks["integrity"] = {"passed": not problems, "problems": problems, "unlisted": integrity.unlisted,
                                  "summary": "all files match the manifest" if not problems else problems[0]}
    if problems:
        report.reasons.extend(problems[:3])
        return
    index_log = integrity.index_log
    assert index_log is not None
    steps = [c["step"] for c in reader.checkpoints]
    verifier = open_for_replay(reader, index_log, accelerator)
    try:
        _verify_content(verifier, reader, index_log, steps, report, q, n_random, seed, mode, delta, d_ref, full_data,
                        num_shards, shard, progress)
    except ProofFormatError as e:
        report.checks["integrity"] = {"passed": False, "problems": [str(e)], "summary": str(e)}
        report.reasons.append(str(e))


def _verify_content(verifier: PoLVerifierModule, reader: ProofReader, index_log: Any, steps: list[int], report: Report,
                    q: int, n_random: int, seed: int, mode: str, delta: dict[str, float],
                    d_ref: Mapping[str, float] | None, full_data: bool, num_shards: int, shard: int,
                    progress: Callable[[int, int], None] | None) -> None:
    m = reader.manifest
    k = m["every_n_steps"]
    final = m["final_step"]

    entries = {c["step"]: c for c in reader.checkpoints}
    # Before any replay: a replay under batches per epoch other than the training's never ends where it did.
    try:
        loader = _training_loader(verifier)
    except Exception:  # the declared classes give no loader: the data check reports it
        loader = None
    wrong_batches = _declared_batches(verifier, loader) if loader is not None else None
    if wrong_batches:
        raise ProofFormatError(wrong_batches)

    @functools.lru_cache(maxsize=3)  # walks over consecutive checkpoints; never the whole proof in memory
    def state(step: int) -> dict[str, Any]:
        return reader.load_checkpoint(entries[step])

    # -- initialization ------------------------------------------------------------
    _check_initialization(verifier, state(0), report)
    # -- hyperparameters -----------------------------------------------------------
    _check_hyperparameters(verifier, steps, state, report)
    # -- segment selection ---------------------------------------------------------
    segments = _select(verifier, steps, state, q, n_random, seed, report)
    mine = segments[shard::num_shards]
    report.selection.update({"num_shards": num_shards, "shard": shard, "replayed_here": len(mine)})
    # -- replay --------------------------------------------------------------------
    _replay_segments(verifier, mine, state, mode, delta, d_ref, progress)
    report.segments = mine
    failed = [s for s in mine if not s.passed]
    report.checks["replay"] = {
        "passed": not failed,
        "mode": mode,
        "segments": len(mine),
        "failed": [[s.start_step, s.end_step] for s in failed],
        "summary": f"{len(mine) - len(failed)}/{len(mine)} segments " + ("bit-exact" if mode == "exact" else "within delta"),
    }
    for s in failed[:3]:
        report.reasons.append(f"segment {s.start_step}->{s.end_step} does not replay" + (f": {s.error}" if s.error else ""))
    # -- data ----------------------------------------------------------------------
    _check_data(verifier, index_log, mine, full_data, report)
    # -- coverage ------------------------------------------------------------------
    steps_per_epoch = verifier.training.get("steps_per_epoch") or max(1, final)
    epochs = len({e for _, e in verifier._epoch_runs}) or 1
    frac = 1.0 if q == 0 else min(1.0, q * k / steps_per_epoch)
    replayed = sorted({int(i) for s in mine for t in range(s.start_step, s.end_step) for i in index_log.step(t).tolist()})
    report.coverage = {
        "expected": 1.0 - (1.0 - frac) ** epochs,
        "measured": len(replayed) / max(1, m["data"]["size"]),
        "compute_fraction": frac,
        "replayed_steps": sum(s.end_step - s.start_step for s in mine),
        "total_steps": final,
    }


def _chains(segments: list[Segment]) -> list[list[Segment]]:
    """Runs of consecutive segments (each ending where the next starts): each is replayed in one Lightning run."""
    chains: list[list[Segment]] = []
    for seg in segments:
        if chains and chains[-1][-1].end_step == seg.start_step:
            chains[-1].append(seg)
        else:
            chains.append([seg])
    return chains


def _replay_segments(verifier: PoLVerifierModule, segments: list[Segment], state: Callable[[int], dict[str, Any]], mode: str,
                     delta: dict[str, float], d_ref: Mapping[str, float] | None,
                     progress: Callable[[int, int], None] | None) -> None:
    """Replay ``segments`` and judge each against the next checkpoint, chain by chain.

    A chain that raises leaves the segments it finished judged; the segment
    it was in fails with the error, and the rest are replayed one by one, so
    one broken segment never hides the others.
    """
    done = 0

    def count() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, len(segments))

    def judge(seg: Segment, got: dict[str, Any]) -> None:
        target = state(seg.end_step)
        seg.distances = distances(got["model"], target["model"])
        if d_ref:
            seg.normalized = {k: seg.distances[k] / d_ref[k] for k in seg.distances if d_ref.get(k)}
        seg.bit_exact = identical(_comparable(got), _comparable(target))
        seg.passed = seg.bit_exact if mode == "exact" else all(seg.distances[k] <= v for k, v in delta.items())
        count()

    def fail(seg: Segment, e: BaseException) -> None:
        seg.passed = False
        seg.error = str(e) if isinstance(e, PoLError) else f"replay failed: {type(e).__name__}: {e}".splitlines()[0]
        count()

    if progress is not None:
        progress(0, len(segments))
    for chain in _chains(segments):
        by_start = {seg.start_step: seg for seg in chain}
        judged: set[int] = set()

        def on_segment(start: int, end: int, got: dict[str, Any]) -> None:
            judge(by_start[start], got)
            judged.add(start)

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                verifier.replay_chain([seg.start_step for seg in chain] + [chain[-1].end_step], state, on_segment)
        except Exception as e:  # the prover's module raised while replaying its own steps, or the proof cannot run here
            rest = [seg for seg in chain if seg.start_step not in judged]
            if rest:
                fail(rest[0], e)
            for seg in rest[1:]:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        judge(seg, verifier.replay(seg.start_step, seg.end_step, start_state=state(seg.start_step)))
                except Exception as e2:
                    fail(seg, e2)


def _comparable(state: Mapping[str, Any]) -> dict[str, Any]:
    """What a replay must reproduce: the whole state, its counters (epoch, batch index) included."""
    return {k: state.get(k) for k in ("model", "optimizers", "lr_schedulers", "grad_scaler", "rng", "peer_rng", "progress")}


def _check_initialization(verifier: PoLVerifierModule, w0: dict[str, Any], report: Report) -> None:
    declared = verifier.manifest.get("init") or {}
    name = declared.get("strategy")
    try:
        from lightning_pol import init as init_registry

        params = decode_state({}, declared.get("params") or {})
        wrong = _not_a_state_of(verifier, w0)
        if wrong:
            report.checks["initialization"] = {"passed": False, "strategy": name, "summary": wrong}
            report.reasons.append(wrong)
            return
        if name == "warm_start":
            report.checks["initialization"] = {"passed": None, "strategy": name, "summary": "checked through the chain"}
            return
        module = verifier.make_module()
        module.load_state_dict(w0["model"])
        result = init_registry.check_initialization(module, name, **params)
        failed = [layer.name for layer in result.layers if not layer.passed]
        report.checks["initialization"] = {
            "passed": result.passed, "strategy": name, **result.to_dict(),
            "summary": f"W_0 looks drawn from {name}" if result.passed else f"W_0 does not look drawn from {name}: {failed[:3]}",
        }
        if not result.passed:
            report.reasons.append(f"W_0 is not a fresh {name} initialization (layers {failed[:3]})")
    except Exception as e:
        msg = one_line(e)
        report.checks["initialization"] = {"passed": False, "strategy": name, "summary": msg}
        report.reasons.append(f"initialization check failed: {msg}")


def _not_a_state_of(verifier: PoLVerifierModule, w0: Mapping[str, Any]) -> str | None:
    """Why W_0 is not exactly a state the declared module and torch would hold, or None.

    Every later checkpoint is compared with a replay bit for bit; W_0 is only ever a starting point,
    and ``load_state_dict`` and ``set_rng_state`` forgive a float64 bias, a missing BatchNorm counter
    or bytes of the RNG state that torch ignores. So W_0 must have the module's keys, dtypes and
    shapes, and an RNG state that torch gives back unchanged.
    """
    fresh = verifier.make_module().state_dict()
    model = w0["model"]
    if list(model) != list(fresh):
        return f"W_0 does not hold the declared module's state_dict keys ({sorted(set(model) ^ set(fresh))[:3]} differ)"
    for key, t in fresh.items():
        got = model[key]
        if not isinstance(got, torch.Tensor) or got.dtype != t.dtype or got.shape != t.shape:
            what = f"{got.dtype} {list(got.shape)}" if isinstance(got, torch.Tensor) else type(got).__name__
            return f"W_0's {key} is {what}, the declared module's is {t.dtype} {list(t.shape)}"
    rng = w0.get("rng")
    state = rng.get("torch") if isinstance(rng, Mapping) else None
    if not isinstance(state, torch.Tensor):
        return "W_0 has no torch RNG state"
    saved = torch.get_rng_state()
    try:
        torch.set_rng_state(state)
        canonical = torch.equal(torch.get_rng_state(), state)
    except (RuntimeError, TypeError, ValueError):
        canonical = False
    finally:
        torch.set_rng_state(saved)
    return None if canonical else "W_0's torch RNG state is not one torch would write"


_HPARAM_KEYS = ("lr", "momentum", "betas", "weight_decay", "dampening", "eps", "nesterov", "alpha", "rho", "lr_decay")


def _group_hparams(opt_state: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{k: g[k] for k in _HPARAM_KEYS if k in g} for g in opt_state.get("param_groups", [])]


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-15)
    if isinstance(a, torch.Tensor):
        return _close(a.tolist(), b.tolist() if isinstance(b, torch.Tensor) else b)
    return a == b


def _check_hyperparameters(verifier: PoLVerifierModule, steps: list[int], state: Callable[[int], dict[str, Any]], report: Report) -> None:
    """W_0's optimizers and schedulers must be what configure_optimizers declares, and each checkpoint's
    learning rate, momentum, weight decay and betas what the declared schedule gives at its step."""
    problems: list[str] = []
    simulated = False
    try:
        declared = verifier.declared_optimizers()
        w0 = state(0)
        if len(declared["optimizers"]) != len(w0["optimizers"]):
            problems.append("W_0 does not hold the optimizers configure_optimizers declares")
        for i, (d, s) in enumerate(zip(declared["optimizers"], w0["optimizers"])):
            if not _close(_group_hparams(d), _group_hparams(s)):
                problems.append(f"W_0's optimizer {i} hyperparameters {_group_hparams(s)} differ from the declared {_group_hparams(d)}")
        if len(declared["lr_schedulers"]) != len(w0["lr_schedulers"]):
            problems.append("W_0 does not hold the schedulers configure_optimizers declares")
        else:
            for i, (d, s) in enumerate(zip(declared["lr_schedulers"], w0["lr_schedulers"])):
                if not identical(_plain(d), _plain(s)):
                    problems.append(f"W_0's scheduler {i} state differs from the declared one")
        if not problems:
            simulated = _simulate_schedule(verifier, declared, steps, state, problems)
    except Exception as e:
        problems.append(f"could not check hyperparameters: {type(e).__name__}: {e}".splitlines()[0])
    report.checks["hyperparameters"] = {
        "passed": not problems,
        "schedule_simulated": simulated,
        "problems": problems[:10],
        "summary": ("declared schedule matches every checkpoint" if simulated else "W_0 matches the declared optimizers")
        if not problems else problems[0],
    }
    report.reasons.extend(problems[:2])


def _plain(obj: Any) -> Any:
    """Scheduler states with tensors turned into lists (decoded and live states store some values differently)."""
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return obj


def _simulate_schedule(verifier: PoLVerifierModule, declared: dict[str, Any], steps: list[int],
                       state: Callable[[int], dict[str, Any]], problems: list[str]) -> bool:
    """Step the declared schedulers alone (no training) and compare with every checkpoint's optimizer groups."""
    configs = verifier.training.get("lr_schedulers") or []
    opt_configs = verifier.training.get("optimizers") or []
    if len(declared["optimizers"]) != 1 or len(opt_configs) != 1:
        return False
    if any(c.get("frequency") != 1 or c.get("interval") not in ("step", "epoch") for c in configs):
        return False
    cls = resolve_import_path(opt_configs[0]["class"])  # an Optimizer: check_declared_classes made sure
    if not issubclass(cls, torch.optim.Optimizer):
        return False
    groups = declared["optimizers"][0]["param_groups"]
    opt = cls([{"params": [torch.zeros(1, requires_grad=True) for _ in g["params"]]} for g in groups])
    opt.load_state_dict(declared["optimizers"][0])
    scheds = []
    for c, sd in zip(configs, declared["lr_schedulers"]):
        scls = resolve_import_path(c["class"])
        if not issubclass(scls, torch.optim.lr_scheduler.LRScheduler):  # a custom scheduler: not simulated
            return False
        if "ReduceLROnPlateau" in import_path(scls) or "lr_lambdas" in sd or "_schedulers" in sd:
            return False
        sched = scls.__new__(scls)
        sched.optimizer = opt
        sched.load_state_dict(sd)
        scheds.append((c["interval"], sched))
    final = verifier.manifest["final_step"]
    max_steps = verifier.training.get("max_steps", -1)
    checkpoints = set(steps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in range(1, final + 1):
            s = t - 1
            last_of_epoch = s == final - 1 or verifier.step_epoch(s + 1) != verifier.step_epoch(s)
            if s == final - 1 and isinstance(max_steps, int) and max_steps == final:
                last_of_epoch = False  # stopped by max_steps mid-epoch: no epoch-end scheduler step
            for interval, sched in scheds:
                if interval == "step" or last_of_epoch:
                    sched.step()
            if t in checkpoints:
                expected = _group_hparams(opt.state_dict())
                got = _group_hparams(state(t)["optimizers"][0])
                if not _close(expected, got):
                    problems.append(f"checkpoint {t} has optimizer hyperparameters {got}, the declared schedule gives {expected}")
                    if len(problems) >= 3:
                        break
    return True


def _select(verifier: PoLVerifierModule, steps: list[int], state: Callable[[int], dict[str, Any]], q: int,
            n_random: int, seed: int, report: Report) -> list[Segment]:
    """Top-Q segments per epoch by update magnitude, plus ``n_random`` per epoch drawn from ``seed``."""
    by_epoch: dict[int, list[tuple[int, int, float]]] = {}
    for a, b in zip(steps, steps[1:]):
        magnitude = distances(state(a)["model"], state(b)["model"])["l2"] if q > 0 else math.nan
        by_epoch.setdefault(verifier.step_epoch(a), []).append((a, b, magnitude))
    rng = _random.Random(seed)
    chosen: list[Segment] = []
    probabilities = {}
    for epoch, segs in sorted(by_epoch.items()):
        if q == 0:
            chosen.extend(Segment(a, b, epoch, "all") for a, b, _ in segs)
            continue
        ranked = sorted(segs, key=lambda s: (-s[2], s[0]))
        top, rest = ranked[:q], sorted(ranked[q:])
        picks = rng.sample(rest, min(n_random, len(rest)))
        chosen.extend(Segment(a, b, epoch, "topq") for a, b, _ in top)
        chosen.extend(Segment(a, b, epoch, "random") for a, b, _ in picks)
        probabilities[epoch] = detection_probability(len(rest), len(picks), 1)
    chosen.sort(key=lambda s: s.start_step)
    total = sum(len(v) for v in by_epoch.values())
    report.selection = {
        "q": q, "random": n_random, "seed": seed, "segments_in_proof": total, "selected": len(chosen),
        "detection_probability_one_fake_per_epoch": probabilities,
        "detection_formula": "per epoch, with n segments outside the top-Q and R random picks: P(detect m fakes) = 1 - C(n-m, R) / C(n, R)",
    }
    return chosen


def _check_data(verifier: PoLVerifierModule, index_log: Any, segments: list[Segment], full_data: bool, report: Report) -> None:
    m = verifier.manifest
    problems: list[str] = []
    mismatched: list[int] = []
    try:
        leaves = verifier.reader.leaves()
        if root_of(leaves) != m["data"]["root"]:
            problems.append("the leaves do not hash to the committed Merkle root")
        dataset = _training_loader(verifier).dataset
        if len(dataset) != m["data"]["size"]:
            problems.append(f"the training dataset has {len(dataset)} samples, the proof committed to {m['data']['size']}")
        elif full_data:
            recomputed = compute_leaves(dataset)
            mismatched = (recomputed != leaves).any(dim=1).nonzero().flatten().tolist()
            if root_of(recomputed) != m["data"]["root"]:
                problems.append("the dataset's Merkle root differs from the committed root")
        else:
            needed = sorted({int(i) for s in segments for t in range(s.start_step, s.end_step) for i in index_log.step(t).tolist()})
            raw = leaves.numpy()
            mismatched = [i for i in needed if sample_leaf(dataset, i) != raw[i].tobytes()]
        if mismatched:
            problems.append(f"training samples {mismatched[:10]}{'...' if len(mismatched) > 10 else ''} differ from the committed data")
        permutation = _permutation_check(verifier, index_log)
        if not permutation["passed"]:
            problems.append(permutation["summary"])
    except PoLError as e:
        problems.append(str(e))
        permutation = {"passed": None}
    except Exception as e:
        problems.append(f"could not check the data: {type(e).__name__}: {e}".splitlines()[0])
        permutation = {"passed": None}
    report.checks["data"] = {
        "passed": not problems, "mismatched_samples": mismatched, "full_dataset": full_data,
        "permutation": permutation, "problems": problems,
        "summary": "replayed samples match the commitment" if not problems else problems[0],
    }
    report.reasons.extend(problems[:2])


def _training_loader(verifier: PoLVerifierModule) -> Any:
    dm = verifier.make_datamodule()
    if dm is not None:
        dm.prepare_data()
        dm.setup("fit")
        return dm.train_dataloader()
    return verifier.make_module().train_dataloader()


def _declared_batches(verifier: PoLVerifierModule, loader: Any) -> str | None:
    """The proof's batch size, drop_last and batches per epoch must be the re-created loader's: the
    permutation check trusts ``steps_per_epoch`` (derived from the batches) to tell a whole epoch from a
    part, and a replay under other batches per epoch never ends where the training did."""
    # batch_size and drop_last as the callback reads them: the loader's own, or its batch sampler's.
    sampler = getattr(loader, "batch_sampler", None)
    for key in ("batch_size", "drop_last"):
        mine = getattr(loader, key) if getattr(loader, "batch_size", None) is not None else getattr(sampler, key, None)
        declared = verifier.training.get(key)
        if declared is not None and mine is not None and (type(declared), declared) != (type(mine), mine):
            return f"the training dataloader has {key} {mine!r}, the proof declares {declared!r}"
    declared, limit = verifier.training.get("num_training_batches"), verifier.training.get("limit_train_batches")
    if not isinstance(declared, int):
        return None
    try:
        n = len(loader)
    except TypeError:  # an iterable dataset: no length to compare
        return None
    world = verifier.world_size
    if world > 1:  # a rank's share, as Lightning's DistributedSampler pads it: ceil(N / W) samples
        if loader.batch_size is None:
            return None  # a custom batch sampler, split by Lightning's wrapper: no length to derive here
        share = -(-len(loader.dataset) // world)
        n = share // loader.batch_size if loader.drop_last else -(-share // loader.batch_size)
    # As Lightning applies limit_train_batches: a count caps the batches, a fraction scales them.
    if isinstance(limit, int) and not isinstance(limit, bool):
        n = min(n, limit)
    elif isinstance(limit, float):
        n = int(n * limit)
    elif limit is not None:
        return None
    return None if n == declared else f"the training dataloader gives {n} batches per epoch, the proof declares {declared}"


def _permutation_check(verifier: PoLVerifierModule, index_log: Any) -> dict[str, Any]:
    """Each full epoch's indices must be a permutation of the dataset (or, with drop_last or a limit, distinct).

    Under DDP, ``DistributedSampler`` pads an epoch to a multiple of the world
    size W by repeating its first indices, so up to W - 1 samples may appear twice.
    """
    n = verifier.manifest["data"]["size"]
    runs = verifier._epoch_runs + [(index_log.steps, None)]
    training = verifier.training
    partial_ok = bool(training.get("drop_last")) or training.get("limit_train_batches") not in (1, 1.0, None)
    padding = verifier.world_size - 1
    bad = []
    for (first, epoch), (nxt, _) in zip(runs, runs[1:]):
        idx = index_log.indices[index_log.offsets[first] : index_log.offsets[nxt]]
        counts = torch.bincount(idx, minlength=n)
        complete = nxt - first == training.get("steps_per_epoch")
        repeated = int(counts.max()) > 2 or int((counts - 1).clamp(min=0).sum()) > padding
        if repeated or (complete and not partial_ok and int((counts == 0).sum()) > 0):
            bad.append(epoch)
    sampler = training.get("sampler")
    epochs = [e for _, e in verifier._epoch_runs]
    split = sorted({e for e in epochs if epochs.count(e) > 1})  # resumed mid-epoch: each part checked alone
    return {
        "passed": not bad,
        "epochs_not_permutations": bad,
        "split_epochs": split,
        "sampler": sampler,
        "summary": ("every epoch is a permutation" + (f" (epochs {split[:5]} split by a resume: distinct indices in each part)" if split else ""))
        if not bad else f"epochs {bad[:5]} are not permutations of the dataset (sampler {sampler} is not a permutation sampler)",
    }

"""verify_proof: Algorithm 2 of the paper, with exact replay, random segments and hostile-input checks.

The checks run in order: integrity (files, before anything is parsed), code
(the installed files against the code that trained, before anything the proof
names is imported), the class gate (before anything the proof names runs), initialization,
hyperparameters, segment selection, replay, data, and the chain of trust.
Each records a typed :class:`~lightning_pol.verification.report.Check`. A
check fails on a :class:`~lightning_pol.errors.PoLError` (which includes
what the prover's own code raised while the verifier ran it); any other
exception is a bug in the verifier, and is raised, never turned into a verdict.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from lightning_pol.errors import PoLError, one_line
from lightning_pol.format.environment import environment
from lightning_pol.format.index_log import IndexLog
from lightning_pol.format.manifest import Manifest
from lightning_pol.format.reader import ProofReader
from lightning_pol.format.storage import ProofStore
from lightning_pol.format.strict_json import ProofFormatError
from lightning_pol.verification.chain import check_chain
from lightning_pol.verification.code_check import check_code
from lightning_pol.verification.coverage import coverage, success_rate
from lightning_pol.verification.data_check import check_data, declared_batches
from lightning_pol.verification.hyperparameters import check_hyperparameters
from lightning_pol.verification.initialization_check import check_initialization, root_unavailable
from lightning_pol.verification.integrity import check_integrity
from lightning_pol.verification.plateau import check_plateau
from lightning_pol.verification.pretrained_check import RootUnavailable, use_trusted_root
from lightning_pol.verification.registry import Registry
from lightning_pol.verification.rank_processes import RankProcesses
from lightning_pol.verification.replay import PoLVerifierModule
from lightning_pol.verification.report import ChainCheck, IntegrityCheck, Report
from lightning_pol.verification.segments import Judge, check_replay
from lightning_pol.verification.selection import select_segments, update_size
from lightning_pol.verification.settings import VerifierSettings
from lightning_pol.verification.tiers import plan_replay

#: Environment fields that must match for bit-exact replay to be expected.
EXACT_FIELDS = ("torch", "cuda", "machine", "torch_threads", "deterministic_algorithms", "cudnn_deterministic", "float32_matmul_precision")
#: Deepest chain of parent proofs followed.
MAX_CHAIN = 64

Progress = Callable[[int, int], None]


def verify_proof(proof_dir: str | os.PathLike[str] | ProofStore, settings: VerifierSettings | None = None, *,
                 progress: Progress | None = None, **options: Any) -> Report:
    """Verify the proof in ``proof_dir`` (a directory, an fsspec URL, a :class:`~lightning_pol.format.storage.ProofStore`); returns a :class:`~lightning_pol.verification.report.Report`.

    Example::

        report = verify_proof("proof/", q=1, random=1)
        print(report.summary()); assert report.valid

    ``settings`` (a :class:`~lightning_pol.verification.settings.VerifierSettings`)
    and keyword ``options`` (its fields: ``q``, ``random``, ``seed``, ``mode``,
    ``delta``, ``full_data``, ``registry``, ...) say how; options change the
    settings. ``progress(done, total)`` is called as segments are replayed.

    Raises a :class:`~lightning_pol.errors.PoLError` when the proof cannot be
    verified at all (its manifest is unusable, the class gate refuses a class
    it names, a setting is bad): what the app reports as exit 2. Every other
    problem with the proof is a failed check.
    """
    base = settings if settings is not None else VerifierSettings()
    resolved = (base.replace(**options) if options else base).resolved()
    if resolved.registry is not None and not isinstance(resolved.registry, Registry):
        resolved = dataclasses.replace(resolved, registry=Registry(resolved.registry))
    return _verify(proof_dir, resolved, progress, ())


def _verify(proof_dir: str | os.PathLike[str] | ProofStore, settings: VerifierSettings, progress: Progress | None, chain: tuple[str, ...]) -> Report:
    reader = ProofReader(proof_dir)
    use_trusted_root(reader, settings.registry, settings.roots)
    if reader.identity in chain or len(chain) > MAX_CHAIN:
        raise ProofFormatError(f"the chain of parent proofs loops or is deeper than {MAX_CHAIN}")
    report = Report(proof_dir=str(reader.root), proof_identity=reader.identity, valid=False, settings=settings.to_dict())
    parent_settings = dataclasses.replace(settings, num_shards=1, shard=0)
    with _threads_of(reader.manifest, settings):
        mode = _compare_environments(reader.manifest, settings, report)
        _check_proof(reader, report, settings, mode, progress)
        check_chain(reader, report, settings.registry, settings.parents,
                    lambda parent: _verify(parent, parent_settings, None, chain + (reader.identity,)))
    report.reasons = [one_line(r) for r in report.reasons]
    report.valid = report.verdict()
    chain_check = report.checks["chain"]
    assert isinstance(chain_check, ChainCheck)
    others_failed = any(c.passed is False for name, c in report.checks.items() if name not in ("replay", "chain"))
    replay = report.checks.get("replay")
    own = success_rate(others_failed, [s.passed for s in report.segments], replay.passed if replay else None)
    chain_check.vsr = own * chain_check.parent_vsr
    if settings.registry is not None and settings.num_shards == 1 and report.checks["integrity"].passed:
        final = reader.checkpoints[-1].sha256 if reader.checkpoints else ""
        code = report.checks.get("code")
        recorded = {"q": settings.q, "random": settings.random, "seed": settings.seed, "mode": settings.mode,
                    "delta": dict(settings.delta), "chain": chain_check.proofs, "chain_codes": chain_check.codes,
                    "code": reader.code.digest if reader.code is not None else None, "code_policy": settings.code,
                    "code_installed": getattr(code, "installed", None)}
        settings.registry.record(reader.identity, final, report.valid, chain_check.vsr, recorded, report.environment.get("verifier", {}))
    return report


@contextmanager
def _threads_of(manifest: Manifest, settings: VerifierSettings) -> Iterator[None]:
    """Replay with the proof's CPU thread count (another count sums in another order: not bit-exact)."""
    before = torch.get_num_threads()
    threads = manifest.environment.get("torch_threads")
    try:
        if settings.match_threads and isinstance(threads, int) and 0 < threads <= 1024:
            torch.set_num_threads(threads)
        yield
    finally:
        torch.set_num_threads(before)


def _compare_environments(manifest: Manifest, settings: VerifierSettings, report: Report) -> str:
    """The effective mode: exact unless ``auto`` finds the environment differs and a δ is given."""
    prover = manifest.environment
    mine = environment()
    differs = {k: {"proof": prover.get(k), "verifier": mine.get(k)} for k in EXACT_FIELDS if prover.get(k) != mine.get(k)}
    on_gpu = settings.accelerator != "cpu"
    if (on_gpu or prover.get("gpus")) and bool(prover.get("gpus")) != on_gpu:
        differs["device_type"] = {"proof": "gpu" if prover.get("gpus") else "cpu", "verifier": settings.accelerator}
    ddp = manifest.training.get("ddp")
    backend = ddp.get("backend") if isinstance(ddp, dict) else None
    if backend is not None and backend != replay_backend(settings.accelerator):  # another backend sums in another order
        differs["ddp_backend"] = {"proof": backend, "verifier": replay_backend(settings.accelerator)}
    mode = settings.mode if settings.mode != "auto" else ("exact" if not differs or not settings.delta else "tolerant")
    report.environment = {"verifier": mine, "proof": prover, "matches": not differs, "differences": differs}
    report.mode = {"requested": settings.mode, "effective": mode, "delta": dict(settings.delta), "d_ref": dict(settings.d_ref or {})}
    if differs and mode == "exact":
        report.reasons.append(f"the verifier's environment differs from the proof's ({', '.join(differs)}); exact replay may fail")
    if "ddp_backend" in differs and mode == "exact":
        world = manifest.training.get("world_size")
        report.reasons.append(f"the proof's {world} ranks summed their gradients with {backend}, and this verifier has only "
                              f"{differs['ddp_backend']['verifier']}, which sums in another order: no replay here is bit-exact; "
                              f"verify with verifier.mode=tolerant and a delta calibrated by python -m lightning_pol.reproduce "
                              f"at world size {world}")
    return mode


def _check_proof(reader: ProofReader, report: Report, settings: VerifierSettings, mode: str, progress: Progress | None) -> None:
    integrity = check_integrity(reader)
    report.checks["integrity"] = integrity.check()
    if integrity.problems:
        report.reasons.extend(integrity.problems[:3])
        return
    assert integrity.index_log is not None
    code = check_code(reader, settings.code, settings.trusted_code, settings.project_root)  # before the gate imports anything
    report.checks["code"] = code
    if code.passed is False:
        report.reasons.append(code.summary)
        return
    if code.passed is None:
        report.notes.append(code.summary)
    overrides = {"module": settings.module_overrides, "datamodule": settings.datamodule_overrides}
    verifier = PoLVerifierModule(reader, accelerator=settings.accelerator, index_log=integrity.index_log,
                                 overrides=overrides, project_root=settings.project_root)  # the class gate
    _replay_ranks(verifier, settings, report)
    try:
        _check_content(verifier, integrity.index_log, report, settings, mode, progress)
    except ProofFormatError as e:  # a checkpoint that does not parse, or loader settings the proof does not declare
        report.checks["integrity"] = IntegrityCheck(False, str(e), [str(e)])
        report.reasons.append(str(e))


def _replay_ranks(verifier: PoLVerifierModule, settings: VerifierSettings, report: Report) -> None:
    """Replay a DDP proof's W ranks in W processes (exact for any W), or emulate them in this one (exact for two
    plain ranks), as ``settings.ranks`` says; one note says which."""
    world = verifier.world_size
    if world == 1:
        return
    how = settings.ranks if settings.ranks != "auto" else (
        "emulate" if verifier.emulation_is_exact() or not verifier.ddp else "processes")  # no record: a proof from before it
    if how == "emulate":
        exact = "" if verifier.emulation_is_exact() else ", which is not the order DDP summed in: only a tolerant replay can pass"
        report.notes.append(f"the proof's {world} DDP ranks are replayed in this process, as {world} micro-batches a step{exact}")
        return
    registry = settings.registry
    verifier.processes = RankProcesses(world, {
        "proof_dir": str(verifier.reader.root), "storage_options": verifier.reader.store.options, "accelerator": settings.accelerator, "deterministic": verifier.deterministic,
        "overrides": verifier.overrides, "registry": getattr(registry, "path", registry), "roots": str(settings.roots) if settings.roots else None,
        "project_root": str(verifier.script.root) if verifier.script is not None else None,
        "threads": torch.get_num_threads(), "backend": replay_backend(settings.accelerator),
    })
    report.notes.append(f"the proof's {world} DDP ranks are replayed by {world} processes under Lightning's DDP "
                        f"({replay_backend(settings.accelerator)}), as training ran them")


def replay_backend(accelerator: str) -> str:
    """The process-group backend a W-process replay on ``accelerator`` uses."""
    return "gloo" if accelerator == "cpu" else "nccl"


def _check_content(verifier: PoLVerifierModule, index_log: IndexLog, report: Report, settings: VerifierSettings, mode: str,
                   progress: Progress | None) -> None:
    reader = verifier.reader
    entries = {c.step: c for c in reader.checkpoints}
    steps = sorted(entries)
    # Before any replay: a replay under batches per epoch other than the training's never ends where it did.
    try:
        loader = verifier.training_loader()
    except PoLError:  # the declared classes give no loader: the data check reports it
        loader = None
    wrong_batches = declared_batches(verifier, loader) if loader is not None else None
    if wrong_batches:
        raise ProofFormatError(wrong_batches)

    @functools.lru_cache(maxsize=3)  # walks over consecutive checkpoints; never the whole proof in memory
    def state(step: int) -> dict[str, Any] | None:
        return reader.load_checkpoint(entries[step]) if entries[step].full else None

    try:
        w0 = state(0)
    except RootUnavailable as e:  # its checkpoints reference a root this verifier does not have: no state can be read
        root_unavailable(verifier, report, str(e))
        return
    check_initialization(verifier, w0, report, settings.registry, settings.roots)
    check_hyperparameters(verifier, [s for s in steps if entries[s].full], state, report)
    check_plateau(verifier, report)
    segments, report.selection = select_segments(
        steps, verifier.step_epoch, update_size(reader.manifest, state), settings.q, settings.random, settings.seed,  # type: ignore[arg-type]
    )
    mine, unchecked = plan_replay(segments[settings.shard :: settings.num_shards], entries, verifier.step_epoch, mode)
    report.selection.update({"num_shards": settings.num_shards, "shard": settings.shard, "replayed_here": len(mine)})
    if unchecked:
        report.selection["unchecked"] = unchecked
    if reader.manifest.tiered and mode == "exact" and not report.environment.get("matches", True):
        report.notes.append("a tiered proof's digests match only a bit-exact replay, and this environment differs from the proof's: "
                            "give verifier.delta for a tolerant replay between its full states")
    if reader.manifest.tiered and mode == "tolerant":
        why = "the environment differs from the proof's" if settings.mode == "auto" else "verifier.mode=tolerant"
        report.notes.append(f"tolerant replay ({why}) of a tiered proof: a digest matches only a bit-exact state, so it judges "
                            f"only spans between full states (every {reader.manifest.full_every_n_steps} steps), not their "
                            f"{len(unchecked)} selected segments alone (selection.unchecked), and cannot check the update norms")
    check_replay(verifier, mine, state, Judge(mode, settings.delta, settings.d_ref), report, progress)
    _note_compiled(verifier, report)
    _note_callbacks(verifier, report)
    check_data(verifier, index_log, mine, settings.full_data, report)
    report.coverage = coverage(verifier.manifest, index_log, [(s.start_step, s.end_step) for s in mine], settings.q)


def _note_compiled(verifier: PoLVerifierModule, report: Report) -> None:
    """One line on a module that training compiled: the replay compiles it too (its own setup does)."""
    compiled = verifier.training.get("compiled")
    if not compiled:
        return
    note = f"the module was compiled in training ({', '.join(map(str, compiled))})"
    replayed = verifier.compiled_in_replay
    if replayed is not None and sorted(replayed) != sorted(compiled):
        note += f"; the replay compiled {replayed or 'nothing'}, so it ran other code than training did"
    elif replayed is not None:
        note += "; the replay compiled it as training did"
    if not report.environment.get("matches", True):
        note += "; compiled code is bit-exact only under the prover's torch and CPU, and this machine differs"
    report.notes.append(note)


def _note_callbacks(verifier: PoLVerifierModule, report: Report) -> None:
    """Name the callbacks training ran and the replay does not: a failed segment may be theirs."""
    callbacks = verifier.training.get("callbacks") or []
    if not callbacks:
        return
    names = "; ".join(f"{c['class'][:120]} ({', '.join(map(str, c['hooks'][:8]))})" for c in callbacks[:5])
    report.notes.append(f"training ran callbacks the replay does not run: {names}")
    replay = report.checks.get("replay")
    if replay is not None and replay.passed is False:
        report.reasons.append(f"the replay does not run the callbacks training ran ({names}); a step they changed does not replay")

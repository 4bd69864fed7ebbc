"""The chain of trust, followed: find a warm start's parent proof, and check W_0 against it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from lightning_pol.format import layout
from lightning_pol.format.lineage import same_weights
from lightning_pol.format.reader import ProofReader
from lightning_pol.format.storage import is_url, open_store
from lightning_pol.format.strict_json import ProofFormatError
from lightning_pol.verification.pretrained_check import use_trusted_root
from lightning_pol.verification.registry import Registry
from lightning_pol.verification.report import ChainCheck, InitializationCheck, Report


def find_parent(child: ProofReader, parents_dir: str | os.PathLike[str] | None) -> ProofReader | None:
    """The parent proof with the recorded identity: at its recorded path, or anywhere under ``parents_dir``."""
    parent = child.manifest.parent or {}
    identity = parent.get("identity")
    candidates: list[str] = []
    recorded = parent.get("path")
    if isinstance(recorded, str) and _may_follow(recorded, child):
        candidates.append(recorded)
    if parents_dir is not None:  # every proof under it: a local directory or a URL
        try:
            found = open_store(parents_dir).files()
        except OSError:
            found = []
        suffix = "/" + layout.MANIFEST
        candidates.extend(os.path.join(parents_dir, rel.removesuffix(suffix)) for rel in found if rel.endswith(suffix))
    for path in candidates:
        try:
            reader = ProofReader(path)
        except (ProofFormatError, OSError):
            continue
        if reader.identity == identity:
            return reader
    return None


def _may_follow(recorded: str, child: ProofReader) -> bool:
    """A parent path the (hostile) child proof names is followed on this machine's disk, or on the filesystem the
    child itself is on: never to another server, which would have the verifier fetch (with its credentials) where
    the proof says. Elsewhere, ``parents=`` names where to look."""
    if not is_url(recorded):
        return True
    child_url = child.store.location if child.local_root is None else ""
    return "::" not in recorded and recorded.partition("://")[0] == child_url.partition("://")[0] != ""


def check_chain(reader: ProofReader, report: Report, registry: Registry | None, parents: str | os.PathLike[str] | None,
                verify_parent: Callable[[str | Path], Report]) -> None:
    """W_0 of a warm start must be its parent's final state, and the parent valid: by a valid record in the
    ``registry`` for its final checkpoint, or else by ``verify_parent`` (the same settings, one level up)."""
    parent = reader.manifest.parent
    own = [reader.code.digest if reader.code is not None else None]
    init = report.checks.get("initialization")
    root = getattr(init, "root", None) if init is not None else None
    if not parent and root:  # the chain ends at published weights the verifier trusts (VSR counts it as 1)
        name = root.get("name") or "untrusted"  # the initialization check says whether it is trusted and W_0 its tensors
        report.checks["chain"] = ChainCheck(True, f"pretrained start: root {name} ({root['sha256'][:12]})",
                                            proofs=[reader.identity, f"root:{name}:{root['sha256']}"], codes=[*own, None])
        return
    if not parent:
        report.checks["chain"] = ChainCheck(True, "fresh start, no parent", proofs=[reader.identity], codes=own)
        return
    check = ChainCheck(False, "", proofs=[reader.identity], codes=own, parent_from_registry=False)
    report.checks["chain"] = check
    problems: list[str] = []
    integrity = report.checks.get("integrity")
    if not isinstance(parent.get("identity"), str):
        problems.append("the manifest's parent entry is malformed")
    elif integrity is None or not integrity.passed:
        problems.append("integrity failed; the chain was not followed")
    else:
        preader = find_parent(reader, parents)
        if preader is None:
            problems.append(f"the parent proof {parent['identity'][:16]}... was not found (pass parents=DIR)")
        else:
            try:
                _follow(reader, preader, check, problems, registry, verify_parent)
            except ProofFormatError as e:
                problems.append(f"the parent proof is unusable: {e}")
    check.passed = not problems
    check.problems = problems
    codes = ", ".join(c[:12] if c else "-" for c in check.codes)
    check.summary = (f"chain of {len(check.proofs)} proofs" + (" (parent from registry)" if check.parent_from_registry else "")
                     + f", code {codes}") if not problems else problems[0]
    report.reasons.extend(problems[:2])
    init = report.checks.get("initialization")
    if init is not None and getattr(init, "strategy", None) == "warm_start":
        report.checks["initialization"] = InitializationCheck(
            check.passed, "W_0 is the parent's final state" if check.passed else check.summary, strategy="warm_start")


def _follow(reader: ProofReader, preader: ProofReader, check: ChainCheck, problems: list[str], registry: Registry | None,
            verify_parent: Callable[[str | Path], Report]) -> None:
    parent = reader.manifest.parent or {}
    if not preader.manifest.complete or not preader.checkpoints:
        raise ProofFormatError("the parent proof is not complete")
    final = preader.checkpoints[-1]
    if final.sha256 != parent.get("final_checkpoint_sha256"):
        problems.append("the parent's final checkpoint is not the one the proof names")
    w0 = reader.load_checkpoint(reader.checkpoints[0])["model"]
    use_trusted_root(preader, registry, None)  # a pretrained parent's final state may name its root's tensors
    differ = same_weights(w0, preader.load_checkpoint(final)["model"])
    if differ:
        problems.append(f"W_0 is not the parent's final state ({len(differ)} tensors differ, e.g. {differ[0]})")
    record = registry.lookup(preader.identity) if registry is not None else None
    if record is not None and record["valid"] and record["final_digest"] == final.sha256:
        check.parent_from_registry = True
        chain = list(record["settings"].get("chain") or [preader.identity])
        codes = record["settings"].get("chain_codes")
        check.proofs += chain
        check.codes += list(codes) if isinstance(codes, list) and len(codes) == len(chain) else [None] * len(chain)
        check.parent_vsr = float(record["vsr"])
        return
    sub = verify_parent(preader.root)
    sub_chain = sub.checks["chain"]
    assert isinstance(sub_chain, ChainCheck)
    check.proofs += sub_chain.proofs
    check.codes += sub_chain.codes
    check.parent_vsr = sub_chain.vsr if sub_chain.vsr is not None else 0.0
    check.parent_report = {"valid": sub.valid, "reasons": sub.reasons}
    if not sub.valid:
        problems.append(f"the parent proof is not valid: {(sub.reasons or ['rejected'])[0]}")

"""The code check: the code this verifier would run against the code that trained, before anything of it runs.

The replay runs the prover's classes as installed here. A module changed since training fails its replay
with no hint why; a module that notices the replay and loads the state it must reach passes it. So the
installed files (:func:`~lightning_pol.runtime.installed_code.installed_code`, found and hashed without
importing them) are compared with the proof's ``code`` under the verifier's policy:

- ``match``: any difference rejects the proof, naming the files;
- ``report``: the replay runs anyway, and the report names the differences;
- ``pinned``: as ``match``, and every installed file must be one the verifier reviewed: listed with its
  digest in the trusted-code file that :func:`pin` writes (``python -m lightning_pol.code pin``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lightning_pol.errors import PoLError
from lightning_pol.format.classes import NotRecreatableError
from lightning_pol.format.code_identity import CodeIdentity
from lightning_pol.format.reader import ProofReader
from lightning_pol.runtime.installed_code import (
    installed_code,
    named_classes,
)
from lightning_pol.runtime.training_script import TrainingScript
from lightning_pol.verification.report import CodeCheck

TRUSTED_FORMAT = "lightning-pol-trusted-code"


def check_code(reader: ProofReader, policy: str, trusted_code: str | os.PathLike[str] | None = None,
               project_root: str | os.PathLike[str] | None = None, installed: CodeIdentity | None = None) -> CodeCheck:
    """Compare the proof's code identity with this machine's files; ``passed`` None under ``report`` when they differ.

    Raises :class:`NotRecreatableError` (exit 2) for a class the proof records a file for and no file here defines:
    the project is not installed where the verifier runs, or its training script is not under ``project_root``
    (default: the working directory). ``installed``: this machine's identity of the proof's classes, when the
    caller computed it already."""
    named = named_classes(reader.manifest)
    installed = installed if installed is not None else installed_code(named, training_script(reader, project_root))
    recorded = reader.code
    for path, source in sorted((recorded.classes if recorded is not None else {}).items()):
        if source.file is not None and path in installed.classes and installed.classes[path].file is None:
            # Not installed here: exit 2, as the class gate says it (nothing is imported to find out)
            top = path.partition(":")[0].split(".")[0]
            raise NotRecreatableError(f"cannot import the proof's class {path!r} (no module file for it here; ModuleNotFoundError: "
                                      f"No module named {top!r} or a submodule); install its project, or verify from the project's root")
    differences: list[str] = []
    if recorded is None:
        differences.append("the proof records no code identity (written before lightning-pol recorded one)")
    else:
        if set(recorded.classes) != set(named):
            extra = sorted(set(named) ^ set(recorded.classes))
            differences.append(f"the proof's code identity does not name the classes the proof names ({', '.join(extra[:3])})")
        differences += recorded.differences(installed)
    untrusted: list[str] = []
    if policy == "pinned":
        approved = read_trusted(trusted_code) if trusted_code is not None else {}
        untrusted = [rel for rel, sha in sorted(installed.files().items()) if sha not in approved.get(rel, ())]
    check = CodeCheck(
        passed=not differences and not untrusted, summary="", policy=policy, installed=installed.digest,
        recorded=recorded.digest if recorded is not None else None, differences=differences, untrusted=untrusted,
        classes=_classes(recorded, installed),
    )
    if check.passed:
        check.summary = f"code {installed.digest[:12]}: {len(installed.classes)} classes, {len(installed.files())} files as trained"
        check.summary += ", all trusted" if policy == "pinned" else ""
    elif untrusted and not differences:
        check.summary = f"installed files the trusted code does not list: {_some(untrusted)}"
    else:
        check.summary = f"the installed code differs from the code that trained: {_some(differences)}"
        if policy == "report":
            check.passed = None  # reported, not judged: the replay decides
            check.summary += " (verifier.code=report: replayed anyway)"
        else:
            check.summary += "; verifier.code=report replays anyway"
    return check


def _some(items: list[str]) -> str:
    return ", ".join(items[:4]) + (f" and {len(items) - 4} more" if len(items) > 4 else "")


def _classes(recorded: CodeIdentity | None, installed: CodeIdentity) -> list[dict[str, Any]]:
    out = []
    for path, mine in sorted(installed.classes.items()):
        theirs = recorded.classes.get(path) if recorded is not None else None
        out.append({"class": path, "file": mine.file, "distribution": mine.distribution, "version": mine.version,
                    "installed": mine.sha256, "recorded": theirs.sha256 if theirs is not None else None,
                    "recorded_file": theirs.file if theirs is not None else None})
    return out


def training_script(reader: ProofReader, project_root: str | os.PathLike[str] | None) -> TrainingScript | None:
    """The training script the proof records, found under ``project_root`` here (found only: nothing of it runs)."""
    script = reader.manifest.script
    return None if script is None else TrainingScript(script, project_root, reader.local_root)


# ---------------------------------------------------------------- the trusted-code file (code=pinned)


def read_trusted(path: str | os.PathLike[str]) -> dict[str, set[str]]:
    """The reviewed files of a trusted-code file: relative path -> the approved SHA-256 digests."""
    try:
        data = json.loads(Path(path).read_bytes())
    except OSError as e:
        raise PoLError(f"cannot read verifier.trusted_code {path}: {e.strerror}") from None
    except ValueError:
        raise PoLError(f"verifier.trusted_code {path} is not JSON; write it with python -m lightning_pol.code pin") from None
    files = data.get("files") if isinstance(data, dict) and data.get("format") == TRUSTED_FORMAT else None
    if not isinstance(files, dict) or not all(
        isinstance(rel, str) and isinstance(d, list) and all(isinstance(x, str) for x in d) for rel, d in files.items()
    ):
        raise PoLError(f"verifier.trusted_code {path} is not a trusted-code file; write it with python -m lightning_pol.code pin")
    return {rel: set(digests) for rel, digests in files.items()}


def pin(proof_dirs: list[str | os.PathLike[str]], trusted_code: str | os.PathLike[str]) -> dict[str, str]:
    """Approve the installed files the proofs' classes would run (after reviewing them): add them to ``trusted_code``
    (created if missing; digests already approved stay). Returns the files added, with their digests."""
    approved = read_trusted(trusted_code) if Path(trusted_code).exists() else {}
    added: dict[str, str] = {}
    for proof in proof_dirs:
        reader = ProofReader(proof)
        for rel, sha in installed_code(named_classes(reader.manifest), training_script(reader, None)).files().items():
            if sha is not None and sha not in approved.setdefault(rel, set()):
                approved[rel].add(sha)
                added[rel] = sha
    body = {"format": TRUSTED_FORMAT, "files": {rel: sorted(d) for rel, d in sorted(approved.items())}}
    try:
        Path(trusted_code).write_text(json.dumps(body, indent=1) + "\n")
    except OSError as e:
        raise PoLError(f"cannot write {trusted_code}: {e.strerror}") from None
    return added

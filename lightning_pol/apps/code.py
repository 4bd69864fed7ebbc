"""``python -m lightning_pol.code``: the code a verifier runs for a proof, and the files it has reviewed.

    python -m lightning_pol.code show PROOF_DIR
    python -m lightning_pol.code pin PROOF_DIR [PROOF_DIR ...] --trusted trusted_code.json

``show`` compares the files this machine would run for the proof's classes with the proof's code identity
(exit 0 when they are the same, 1 when they differ); run it, like ``pin``, from the project root when the proof
records a training script. ``pin``, run after reviewing that installed code,
approves it: it adds each file's digest to the trusted-code file that ``verifier.code=pinned
verifier.trusted_code=PATH`` checks. Exit 2 with one ``error:`` line for bad input.
"""

from __future__ import annotations

import argparse
import sys

from lightning_pol.apps import EXIT_VALID, exit_code
from lightning_pol.format.reader import ProofReader
from lightning_pol.runtime.installed_code import installed_code, named_classes
from lightning_pol.verification.code_check import check_code, pin, training_script


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lightning_pol.code", description="The code a proof's replay runs here.")
    sub = p.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="the installed code against the proof's code identity")
    show.add_argument("proof_dir")
    pinning = sub.add_parser("pin", help="approve the installed code of these proofs' classes (after reviewing it)")
    pinning.add_argument("proof_dirs", nargs="+")
    pinning.add_argument("--trusted", required=True, help="the trusted-code file (created if missing)")
    return p


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.command == "pin":
        added = pin(args.proof_dirs, args.trusted)
        for rel, sha in added.items():
            print(f"{sha}  {rel}")
        print(f"{args.trusted}: {len(added)} files approved")
        return EXIT_VALID
    reader = ProofReader(args.proof_dir)
    installed = installed_code(named_classes(reader.manifest), training_script(reader, None))
    check = check_code(reader, "match", installed=installed)
    for entry in check.classes:
        mark = "same" if entry["recorded"] == entry["installed"] else "DIFFERS"
        origin = f"{entry['distribution']} {entry['version']}" if entry["distribution"] else "source tree"
        print(f"{mark:<8}{entry['class']}  {entry['file'] or '(no file)'}  [{origin}]")
    for rel in sorted(installed.imports):
        print(f"{'imports':<8}{rel}")
    print(check.summary)
    return EXIT_VALID if check.passed else 1


def main(argv: list[str] | None = None) -> None:
    sys.exit(exit_code(lambda: run(sys.argv[1:] if argv is None else argv)))

"""``python -m lightning_pol.export PROOF --out model.safetensors``: the proof's final model, as a file to publish.

    python -m lightning_pol.export PROOF --out DIR/model.safetensors [--key-prefix model.] [--roots FILE | --registry DB]
                                   [--sign-key KEY.pem [--signature DIR/model.sig]]

The same proof exports the same bytes. ``--sign-key`` then signs DIR with OpenSSF model-signing (key mode, ECDSA).
Exit 0, or 2 with one ``error:`` line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lightning_pol.apps import EXIT_VALID, exit_code
from lightning_pol.attestation.model_export import export_model
from lightning_pol.attestation.signed_model import ModelSigner
from lightning_pol.errors import PoLError, one_line
from lightning_pol.format.reader import ProofFormatError, ProofReader
from lightning_pol.format.storage import atomic_write
from lightning_pol.verification.pretrained_check import use_trusted_root
from lightning_pol.verification.registry import Registry


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lightning_pol.export", description="Export a proof's final model as safetensors.")
    p.add_argument("proof", help="the proof directory (or fsspec URL)")
    p.add_argument("--out", required=True, type=Path, help="the safetensors file to write")
    p.add_argument("--key-prefix", default=None, help="keep only the tensors under this attribute of the module, stripped (model.)")
    p.add_argument("--roots", default=None, help="a pretrained start's root weights file (its frozen tensors are not in the proof)")
    p.add_argument("--registry", default=None, help="a verifier registry whose trusted roots hold that file")
    p.add_argument("--sign-key", default=None, help="sign the output's directory with OpenSSF model-signing (an ECDSA PEM key)")
    p.add_argument("--signature", default=None, type=Path, help="where the model signature goes (default: DIR/model.sig)")
    return p


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.signature is not None and args.sign_key is None:
        raise PoLError("--signature needs --sign-key, the key that signs")
    if args.out.is_dir():
        raise PoLError(f"--out {args.out} is a directory: name the file (model.safetensors)")
    signer = ModelSigner(args.sign_key) if args.sign_key is not None else None
    if signer is not None:
        if args.out.parent == Path(""):
            raise PoLError(f"--sign-key signs every file of --out's directory: give the model a directory of its own "
                           f"(--out published/{args.out.name})")
        signer.check_directory(args.out.parent)
    reader = ProofReader(args.proof)
    if args.roots or args.registry:
        use_trusted_root(reader, Registry(args.registry) if args.registry else None, args.roots)
    try:
        model = export_model(reader, args.key_prefix)
    except ProofFormatError as e:
        if reader.manifest.init.strategy == "pretrained" and not (args.roots or args.registry):
            raise PoLError(f"{one_line(e)}: give it with --roots FILE (the root's weights) or --registry DB") from None
        raise
    try:
        atomic_write(args.out, model.parts)
    except OSError as e:
        raise PoLError(f"cannot write {args.out} ({e.strerror})") from None
    print(f"exported {model.tensors} tensors of step {model.step} to {args.out}: {model.size} bytes, sha256 {model.sha256}")
    if signer is not None:
        signature = signer.sign(args.out.parent, args.signature)
        print(f"signed {args.out.parent} with model-signing: {signature}")
    return EXIT_VALID


def main(argv: list[str] | None = None) -> None:
    sys.exit(exit_code(lambda: run(sys.argv[1:] if argv is None else argv)))

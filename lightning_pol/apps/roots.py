"""``python -m lightning_pol.roots``: the published weights a verifier trusts without a proof (trusted roots).

    python -m lightning_pol.roots add FILE --name NAME --registry PATH
    python -m lightning_pol.roots list --registry PATH
    python -m lightning_pol.roots remove NAME --registry PATH

``add`` records the file's SHA-256 and each tensor's (:func:`~lightning_pol.format.pretrained.tensor_digest`) and layout:
a proof whose W_0 takes tensors from that file (``init_strategy="pretrained"``) then verifies against them. A
safetensors file is read as it is; a ``.pth``/``.pt``/``.bin``/``.ckpt`` only through
``torch.load(weights_only=True)``, so a file holding a pickled callable is refused, never run. Exit 0, or 2
with one ``error:`` line.
"""

from __future__ import annotations

import argparse
import os
import sys

from lightning_pol.apps import EXIT_VALID, exit_code
from lightning_pol.errors import PoLError
from lightning_pol.format.pretrained import digests, layouts, read_weights
from lightning_pol.format.storage import is_url
from lightning_pol.verification.registry import Registry


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lightning_pol.roots", description="Trusted roots: published weights a verifier trusts.")
    sub = p.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="trust a weights file (after reviewing it)")
    add.add_argument("file")
    add.add_argument("--name", required=True)
    remove = sub.add_parser("remove", help="stop trusting a root")
    remove.add_argument("name")
    listing = sub.add_parser("list", help="the trusted roots")
    for command in (add, remove, listing):
        command.add_argument("--registry", required=True, help="the verifier's SQLite registry (created if missing)")
    return p


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    registry = Registry(args.registry)
    if args.command == "add":
        digest, tensors = read_weights(args.file)
        # where a verifier reads the tensors a proof references (checked against the digest): this path, or the URL
        path = args.file if is_url(args.file) else os.path.abspath(args.file)
        registry.add_root(args.name, digest, digests(tensors), layouts(tensors), path)
        print(f"trusted root {args.name}: sha256 {digest}, {len(tensors)} tensors, read from {path}")
    elif args.command == "remove":
        if not registry.remove_root(args.name):
            raise PoLError(f"registry {args.registry} has no root named {args.name!r}")
        print(f"removed root {args.name}")
    else:
        for root in registry.roots():
            print(f"{root['name']}\t{root['sha256']}\t{len(root['tensors'])} tensors\t{root['path'] or '-'}")
    return EXIT_VALID


def main(argv: list[str] | None = None) -> None:
    sys.exit(exit_code(lambda: run(sys.argv[1:] if argv is None else argv)))

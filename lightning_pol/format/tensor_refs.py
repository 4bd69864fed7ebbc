"""References to tensors stored elsewhere: what lets a checkpoint hold only the tensors that changed.

A checkpoint's typed-JSON state names each tensor of its file (``{"__tensor__": NAME}``). A tensor whose bytes
equal a copy stored earlier is named instead by one of two references (docs/proof-format.md, "References"):

- ``{"__same__": NAME, "step": S, "sha256": D}``: the tensor ``NAME`` stored in the file of the checkpoint of
  step ``S``, an earlier full checkpoint of the same proof, whose :func:`tensor_digest` is ``D``;
- ``{"__root__": D}``: the tensor of digest ``D`` of the proof's pretrained root (``init.params.root``), which
  the verifier reads from the root file it trusts.

A reference never points at another reference: the writer names the file that holds the bytes. The checkpoint
entry's ``sha256`` stays the digest of the *full* file of the state (every tensor stored), so replay compares
states as before, and a reader that resolves the references checks the resolved state against it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lightning_pol.format.safetensors_io import byte_view

SAME = "__same__"
ROOT = "__root__"
#: Smaller tensors are always stored: a reference (about 150 bytes) would not be smaller, and hashing them costs.
MIN_BYTES = 128

_HEX64 = re.compile(r"[0-9a-f]{64}", re.ASCII)


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of ``dtype|shape|`` and the tensor's bytes in C order: equal digests, equal tensors bit for bit.
    Hashed from the tensor's own memory (no copy) when it is a contiguous CPU tensor."""
    head = f"{str(t.dtype).removeprefix('torch.')}|{list(t.shape)}|".encode()
    h = hashlib.sha256(head)
    h.update(byte_view(t))
    return h.hexdigest()


def referable(t: torch.Tensor) -> bool:
    """Whether the writer considers ``t`` for a reference (large enough to be worth one)."""
    return t.numel() * t.element_size() >= MIN_BYTES


@dataclass(frozen=True)
class Ref:
    """A parsed reference: ``step`` None for the root's tensor of digest ``sha256``, else the tensor ``name`` of the
    checkpoint file of ``step``."""

    sha256: str
    step: int | None = None
    name: str | None = None

    def to_json(self) -> dict[str, Any]:
        if self.step is None:
            return {ROOT: self.sha256}
        return {SAME: self.name, "step": self.step, "sha256": self.sha256}

    def __str__(self) -> str:
        return f"root tensor {self.sha256[:12]}" if self.step is None else f"{self.name} of step {self.step}"


def parse_ref(obj: dict[str, Any]) -> Ref:
    """The :class:`Ref` of a JSON object holding one of the two markers; ``ValueError`` for any other form."""
    if ROOT in obj:
        if set(obj) != {ROOT} or not isinstance(obj[ROOT], str) or not _HEX64.fullmatch(obj[ROOT]):
            raise ValueError("a __root__ reference is {\"__root__\": SHA-256}")
        return Ref(obj[ROOT])
    step, name, digest = obj.get("step"), obj.get(SAME), obj.get("sha256")
    if (set(obj) != {SAME, "step", "sha256"} or not isinstance(name, str) or not name
            or type(step) is not int or step < 0 or not isinstance(digest, str) or not _HEX64.fullmatch(digest)):
        raise ValueError("a __same__ reference is {\"__same__\": NAME, \"step\": STEP, \"sha256\": SHA-256}")
    return Ref(digest, step, name)


def resolve_refs(tree: Any, tensors: dict[str, torch.Tensor], fetch: Callable[[Ref], torch.Tensor]) -> int:
    """Replace each reference in ``tree`` (in place) by a ``__tensor__`` entry of ``tensors`` holding what ``fetch``
    gives for it; returns how many there were. ``fetch`` checks the digest; a malformed reference is a ``ValueError``."""
    count = 0
    stack = [tree]
    while stack:
        obj = stack.pop()
        items = enumerate(obj) if isinstance(obj, list) else obj.items() if isinstance(obj, dict) else ()
        for key, value in list(items):
            if isinstance(value, dict) and (SAME in value or ROOT in value):
                tensor = fetch(parse_ref(value))
                name = f"{ROOT if SAME not in value else SAME}{count}"
                while name in tensors:
                    name += "_"
                tensors[name] = tensor
                obj[key] = {"__tensor__": name}
                count += 1
            elif isinstance(value, (dict, list)):
                stack.append(value)
    return count

"""Published weights a proof may start from (a trusted root): read without running code, and named by digests.

A root is a weights file: safetensors, read as it is, or a PyTorch ``.pth``/``.pt``/``.bin``/``.ckpt``,
read only through ``torch.load(weights_only=True)`` (never a full unpickle: a pickled callable is
refused). It is named by the SHA-256 of its bytes, and each tensor by :func:`tensor_digest`, so a
proof can say which of W_0's tensors are the root's and a verifier can check them against the
digests it recorded when it chose to trust the file (docs/proof-format.md, "Pretrained starts").
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lightning_pol.errors import PoLError, one_line
from lightning_pol.format.safetensors_io import load_safetensors
from lightning_pol.format.storage import MAX_FILE_BYTES, is_url, read_object
from lightning_pol.format.strict_json import ProofFormatError
from lightning_pol.format.tensor_refs import tensor_digest

#: Suffixes read with ``torch.load(weights_only=True)``; ``.safetensors`` is read as safetensors.
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


class WeightsFileError(PoLError):
    """A file is not weights this package reads (or not at all)."""


def read_weights(path: str | os.PathLike[str]) -> tuple[str, dict[str, torch.Tensor]]:
    """(SHA-256 of the file, its tensors by key); a :class:`WeightsFileError` with one line for anything else.
    ``path``: a local file, or an fsspec URL (``s3://models/base.safetensors``) read with fsspec's configuration."""
    if is_url(path):
        try:
            data = read_object(os.fspath(path), MAX_FILE_BYTES)
        except (ProofFormatError, OSError) as e:
            raise WeightsFileError(f"cannot read weights file {os.fspath(path)}: {one_line(e)}") from None
        path = Path(os.fspath(path).rpartition("/")[2])  # (its name and suffix: what the messages and the reader need)
    else:
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise WeightsFileError(f"cannot read weights file {path}: {e.strerror or e}") from None
    digest = hashlib.sha256(data).hexdigest()
    if path.suffix == ".safetensors":
        try:
            tensors, _ = load_safetensors(data, path.name)
        except Exception as e:  # noqa: BLE001 - a malformed file, whatever the parser says
            raise WeightsFileError(f"{path} is not a safetensors file ({one_line(e)})") from None
        return digest, dict(tensors)
    if path.suffix not in TORCH_SUFFIXES:
        raise WeightsFileError(f"{path}: weights are read from .safetensors or {'/'.join(TORCH_SUFFIXES)} files")
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - what weights_only refuses (a pickled callable) or a corrupt file
        raise WeightsFileError(f"{path} is not a weights file torch.load(weights_only=True) reads ({one_line(e)[:200]})") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):  # a Lightning checkpoint
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise WeightsFileError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    return digest, dict(obj)


def digests(tensors: Mapping[str, torch.Tensor]) -> dict[str, str]:
    return {k: tensor_digest(v) for k, v in tensors.items()}


def layout(t: torch.Tensor) -> str:
    """``dtype[shape]``: a tensor of W_0 with the layout of the root's tensor of its key must be that tensor."""
    return f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}"


def layouts(tensors: Mapping[str, torch.Tensor]) -> dict[str, str]:
    return {k: layout(v) for k, v in tensors.items()}


def declared_root(params: Mapping[str, Any]) -> tuple[str, RootKeys, dict[str, str]]:
    """(root digest, how W_0's keys map to the root's, {W_0 key: tensor digest}) of a ``pretrained`` declaration,
    checked for form."""
    root, tensors, prefix, peft = params.get("root"), params.get("tensors"), params.get("prefix", ""), params.get("peft", [])
    digest = root.get("sha256") if isinstance(root, Mapping) else None
    if not (isinstance(digest, str) and len(digest) == 64 and isinstance(prefix, str) and isinstance(tensors, Mapping)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in tensors.items())
            and isinstance(peft, list) and all(isinstance(p, str) for p in peft)):
        raise WeightsFileError("the proof's pretrained declaration is malformed (root.sha256, prefix, peft, tensors)")
    return digest, RootKeys(prefix, tuple(peft)), dict(tensors)


#: PEFT's renames of a tensor it wraps, undone: (infix in the key, what it stands for).
_PEFT_RENAMES = (".base_layer.", ".original_module.")
#: Key segments of tensors that PEFT adds (LoRA's own, DoRA's magnitudes): no root has them.
_PEFT_OWN = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")


class RootKeys:
    """How a key of W_0 names a tensor of the root: strip ``prefix`` (where the module holds the published model,
    ``"model."``) after undoing PEFT's renames under each of ``peft`` (where the module holds a PEFT model).

    The writer finds both (:func:`RootKeys.find`) and records them in ``init.params``; the verifier maps with them."""

    def __init__(self, prefix: str = "", peft: tuple[str, ...] = ()) -> None:
        self.prefix, self.peft = prefix, peft

    def root_key(self, key: str) -> str | None:
        """The root's key for W_0's ``key``; None for a key outside ``prefix`` or a tensor PEFT adds."""
        for outer in self.peft:
            if key.startswith(outer):
                rest = _peft_unwrapped(key[len(outer):])
                if not rest:
                    return None
                key = outer + rest
                break
        if not key or not key.startswith(self.prefix):
            return None
        return key[len(self.prefix):]

    @classmethod
    def find(cls, state_layouts: Mapping[str, str], root_layouts: Mapping[str, str], peft: tuple[str, ...]) -> RootKeys:
        """The prefix under which most of W_0's tensors are the root's of the same layout ("" when none is)."""
        unwrapped = cls("", peft)
        votes: dict[str, int] = {}
        for key, lay in state_layouts.items():
            name = unwrapped.root_key(key)
            if name is None:
                continue
            cuts = [0] + [i + 1 for i, c in enumerate(name) if c == "."]
            for cut in cuts:
                if root_layouts.get(name[cut:]) == lay:
                    votes[name[:cut]] = votes.get(name[:cut], 0) + 1
        best = max(votes.items(), key=lambda item: (item[1], -len(item[0])))[0] if votes else ""
        return cls(best, peft)


def _peft_unwrapped(rest: str) -> str:
    """A key under a PEFT model with its renames undone; "" for a tensor PEFT adds."""
    rest = rest.removeprefix("base_model.model.")
    parts = rest.split(".")
    if any(p in _PEFT_OWN for p in parts):
        return ""
    for infix in _PEFT_RENAMES:
        rest = rest.replace(infix, ".")
    if ".modules_to_save." in rest:  # a trained copy of a module: ``<module>.modules_to_save.<adapter>.<tensor>``
        head, _, tail = rest.partition(".modules_to_save.")
        rest = head + "." + tail.partition(".")[2]
    return rest

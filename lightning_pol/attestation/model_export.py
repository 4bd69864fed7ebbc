"""The model a proof trained, as the plain safetensors file its owner publishes.

The final checkpoint's LightningModule ``state_dict`` (nothing of the optimizer, the RNG or the schedule),
checked by the proof's reader like any of its files, written by the proof's own safetensors writer: the same
proof always exports the same bytes. ``key_prefix`` keeps only the tensors under the module's attribute that
holds the published model (``model.``) and strips it, so the file loads into that inner model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lightning_pol.errors import PoLError
from lightning_pol.format import layout
from lightning_pol.format.reader import ProofReader
from lightning_pol.format.safetensors_io import safetensors_parts

#: The exported file's metadata: ``format`` as transformers and safetensors' own writers set it, and the proof.
PROOF_KEY = "lightning_pol.proof"


class NoFinalModel(PoLError):
    """The proof holds no final model: training did not end."""


@dataclass(frozen=True)
class ExportedModel:
    parts: list[Any]  # the file as buffers: its header, then views of the tensors
    sha256: str
    size: int
    tensors: int
    step: int


def export_model(reader: ProofReader, key_prefix: str | None = None) -> ExportedModel:
    """The final model of ``reader``'s proof as a safetensors file; a proof still being written has none."""
    if reader.manifest.status != "complete" or not reader.checkpoints:
        raise NoFinalModel(f"{reader.root} is not a complete proof (training did not end): it holds no final model to export")
    final = reader.checkpoints[-1]
    model = reader.load_checkpoint(final)["model"]
    odd = [k for k, v in model.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise PoLError(f"the final model state holds entries that are not tensors ({odd[:3]}): a safetensors file cannot hold them")
    if key_prefix:
        inner = {k[len(key_prefix):]: v for k, v in model.items() if k.startswith(key_prefix) and len(k) > len(key_prefix)}
        if not inner:
            tops = sorted({k.split(".")[0] + "." for k in model})[:5]
            raise PoLError(f"no tensor of the final model starts with {key_prefix!r}: its keys start with {tops}")
        model = inner
    parts = safetensors_parts(model, {"format": "pt", PROOF_KEY: reader.identity})
    sha256, size = layout.sha256_parts(parts)
    return ExportedModel(parts, sha256, size, len(model), final.step)

"""Where each tensor of the training state was last stored: what lets a checkpoint reference what did not change.

A LoRA fine-tune trains a few MB of adapters on a frozen model of GBs; storing the whole state every k steps
would cost the whole model each time. The writer hashes each tensor of a checkpoint it stores and, where the
digest equals that of the copy stored last under the same name (in an earlier checkpoint file, or the
pretrained root W_0 came from), writes a reference instead (:mod:`lightning_pol.format.tensor_refs`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from lightning_pol.format.state_codec import Refer
from lightning_pol.format.tensor_refs import Ref, referable, tensor_digest


class StoredTensors:
    """The writer thread's record of stored tensors (``{name: (digest, reference to the stored copy)}``) and of the
    digests of the pretrained root's tensors.

    Example::

        stored = StoredTensors(root={digest_of_a_root_tensor, ...})
        parts = checkpoint_parts(state, stored.referrer(step))   # unchanged tensors become references
        writer.put(rel, parts); stored.stored()                  # the file is listed: its tensors are there now

    Only a file the proof keeps is recorded (a tiered proof's digest-only checkpoints store nothing), and a
    reference always names the file that holds the bytes, never another reference. A resumed run starts
    with the root alone: what it stores first is whole.
    """

    def __init__(self, root: Iterable[str] = ()) -> None:
        """``root``: the digests of W_0's tensors that are the pretrained root's: a tensor of one of them, under any
        name (a tied LM head, a frozen weight), is written as a reference to the root."""
        self._root = set(root)
        self._at: dict[str, tuple[str, Ref]] = {}
        self._pending: dict[str, tuple[str, Ref]] = {}
        #: References written by the last :meth:`referrer`: none, and the file is the state's full file.
        self.referenced = 0

    @classmethod
    def of_pretrained(cls, params: Mapping[str, object]) -> StoredTensors:
        """From a manifest's pretrained declaration (``init.params.tensors``: W_0's keys and their root digests)."""
        tensors = params.get("tensors")
        return cls(str(digest) for digest in tensors.values()) if isinstance(tensors, Mapping) else cls()

    def referrer(self, step: int) -> Refer:
        """The ``refer`` of the checkpoint file of ``step``: a reference for each tensor stored before as it is now."""
        self._pending, self.referenced = {}, 0

        def refer(name: str, tensor: torch.Tensor) -> dict[str, object] | None:
            if not referable(tensor):
                return None
            digest = tensor_digest(tensor)
            held = self._at.get(name)
            if digest in self._root:
                held = (digest, Ref(digest))
            if held is not None and held[0] == digest:
                self.referenced += 1
                return held[1].to_json()
            self._pending[name] = (digest, Ref(digest, step, name))
            return None

        return refer

    def stored(self) -> None:
        """The file last encoded with :meth:`referrer` is written and listed: its stored tensors are the copies to name."""
        self._at.update(self._pending)
        self._pending = {}

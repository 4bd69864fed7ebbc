"""Counter-based seeds of the samples: a proof's samples are fetched under seeds that depend only on what it records.

In epoch 0 each sample is fetched under its commitment seed (its dataset
index), the seed its leaf is hashed under; in later epochs each batch under
one seed from (proof seed, epoch, the batch's indices). A verifier, which
replays recorded batches, rebuilds every sample exactly whatever its worker
count or order. The derivation is part of the proof format
(docs/proof-format.md, "Sample seeds").
"""

from __future__ import annotations

import hashlib
import struct

BATCH_DOMAIN = b"lightning-pol/batch-seed/v1"
COMMITMENT_DOMAIN = b"lightning-pol/commitment-seed/v1"


def counter_seed(domain: bytes, *counters: int) -> int:
    """A 63-bit seed from a domain tag and signed 64-bit counters (SHA-256 based)."""
    h = hashlib.sha256(domain)
    for c in counters:
        h.update(struct.pack("<q", int(c)))
    return int.from_bytes(h.digest()[:8], "little") >> 1


def batch_seed(proof_seed: int, epoch: int, indices: list[int]) -> int:
    """Seed of a batch drawn in ``epoch`` (>= 1): its samples are fetched in order from one stream.

    One seeding a batch instead of one a sample: seeding three generators costs
    more than fetching a small sample, and a replay fetches whole recorded
    batches anyway.
    """
    h = hashlib.sha256(BATCH_DOMAIN)
    h.update(struct.pack(f"<{len(indices) + 3}q", int(proof_seed), int(epoch), len(indices), *indices))
    return int.from_bytes(h.digest()[:8], "little") >> 1


def commitment_seed(index: int) -> int:
    """Seed under which sample ``index`` is hashed for the data commitment, and fetched in epoch 0.

    It does not depend on the proof, so two proofs over the same data and
    transforms commit to the same leaves. Epoch 0 fetches each sample under
    it, so the first epoch trains on exactly the committed samples and the
    prover hashes them as they are fetched, instead of in a pass of its own.
    """
    return counter_seed(COMMITMENT_DOMAIN, index)

"""The data check: the replayed samples are the committed ones, and every epoch's indices are a permutation."""

from __future__ import annotations

from typing import Any

import torch

from lightning_pol.errors import PoLError
from lightning_pol.format.index_log import IndexLog
from lightning_pol.format.samples import root_of
from lightning_pol.runtime.leaves import compute_leaves, sample_leaf
from lightning_pol.verification.replay import PoLVerifierModule, prover_code
from lightning_pol.verification.report import DataCheck, Report, Segment


def check_data(verifier: PoLVerifierModule, index_log: IndexLog, segments: list[Segment], full_data: bool, report: Report) -> None:
    """The leaves hash to the committed root; the samples of ``segments`` (every sample with ``full_data``)
    hash to their leaves; each epoch of the index log is a permutation of the dataset."""
    m = verifier.manifest
    problems: list[str] = []
    mismatched: list[int] = []
    permutation: dict[str, Any] = {"passed": None}
    try:
        leaves = verifier.reader.leaves()
        if root_of(leaves) != m.data.root:
            problems.append("the leaves do not hash to the committed Merkle root")
        dataset = verifier.training_loader().dataset
        with prover_code("the proof's training dataset"):
            size = len(dataset)
            if size != m.data.size:
                problems.append(f"the training dataset has {size} samples, the proof committed to {m.data.size}")
            elif full_data:
                recomputed = compute_leaves(dataset)
                mismatched = (recomputed != leaves).any(dim=1).nonzero().flatten().tolist()
                if root_of(recomputed) != m.data.root:
                    problems.append("the dataset's Merkle root differs from the committed root")
            else:
                needed = sorted({int(i) for s in segments for t in range(s.start_step, s.end_step) for i in index_log.step(t).tolist()})
                raw = leaves.numpy()
                mismatched = [i for i in needed if sample_leaf(dataset, i) != raw[i].tobytes()]
        if mismatched:
            problems.append(f"training samples {mismatched[:10]}{'...' if len(mismatched) > 10 else ''} differ from the committed data")
        permutation = permutation_check(verifier, index_log)
        if not permutation["passed"]:
            problems.append(permutation["summary"])
    except PoLError as e:
        problems.append(str(e))
    report.checks["data"] = DataCheck(
        not problems, "replayed samples match the commitment" if not problems else problems[0],
        mismatched_samples=mismatched, full_dataset=full_data, permutation=permutation, problems=problems,
    )
    report.reasons.extend(problems[:2])


def permutation_check(verifier: PoLVerifierModule, index_log: IndexLog) -> dict[str, Any]:
    """Each full epoch's indices must be a permutation of the dataset (or, with drop_last or a limit, distinct).

    Under DDP, ``DistributedSampler`` pads an epoch to a multiple of the world
    size W by repeating its first indices, so up to W - 1 samples may appear twice.
    """
    n = verifier.manifest.data.size
    past = [first for first, _ in verifier.epoch_runs if first > index_log.steps]
    if past:  # a run of sample_epochs that starts after the last recorded step: no batch of it can be checked
        return {"passed": False, "epochs_not_permutations": [], "split_epochs": [], "sampler": verifier.training.get("sampler"),
                "summary": f"sample_epochs starts a run at step {past[0]}, past the index log's {index_log.steps} steps"}
    runs = verifier.epoch_runs + [(index_log.steps, None)]
    training = verifier.training
    partial_ok = bool(training.get("drop_last")) or training.get("limit_train_batches") not in (1, 1.0, None)
    padding = verifier.world_size - 1
    bad = []
    for (first, epoch), (nxt, _) in zip(runs, runs[1:]):
        idx = index_log.indices[index_log.offsets[first] : index_log.offsets[nxt]]
        counts = torch.bincount(idx, minlength=n)
        complete = nxt - first == training.get("steps_per_epoch")
        repeated = int(counts.max()) > 2 or int((counts - 1).clamp(min=0).sum()) > padding
        if repeated or (complete and not partial_ok and int((counts == 0).sum()) > 0):
            bad.append(epoch)
    sampler = training.get("sampler")
    epochs = [e for _, e in verifier.epoch_runs]
    split = sorted({e for e in epochs if epochs.count(e) > 1})  # resumed mid-epoch: each part checked alone
    return {
        "passed": not bad,
        "epochs_not_permutations": bad,
        "split_epochs": split,
        "sampler": sampler,
        "summary": ("every epoch is a permutation" + (f" (epochs {split[:5]} split by a resume: distinct indices in each part)" if split else ""))
        if not bad else f"epochs {bad[:5]} are not permutations of the dataset (sampler {sampler} is not a permutation sampler)",
    }


def declared_batches(verifier: PoLVerifierModule, loader: Any) -> str | None:
    """Why the re-created loader's batch size, drop_last or batches per epoch are not the proof's, or None.

    The permutation check trusts ``steps_per_epoch`` (derived from the batches) to tell a whole epoch from a
    part, and a replay under other batches per epoch never ends where the training did.
    """
    # batch_size and drop_last as the callback reads them: the loader's own, or its batch sampler's.
    with prover_code("the proof's training DataLoader"):
        sampler = getattr(loader, "batch_sampler", None)
        own = getattr(loader, "batch_size", None) is not None
        mine = {key: getattr(loader, key) if own else getattr(sampler, key, None) for key in ("batch_size", "drop_last")}
        try:
            n = len(loader)
        except TypeError:  # an iterable dataset: no length to compare
            n = None
        share = -(-len(loader.dataset) // verifier.world_size) if verifier.world_size > 1 and n is not None and own else None
    for key, value in mine.items():
        declared = verifier.training.get(key)
        if declared is not None and value is not None and (type(declared), declared) != (type(value), value):
            return f"the training dataloader has {key} {value!r}, the proof declares {declared!r}"
    declared, limit = verifier.training.get("num_training_batches"), verifier.training.get("limit_train_batches")
    if not isinstance(declared, int) or n is None:
        return None
    if verifier.world_size > 1:  # a rank's share, as Lightning's DistributedSampler pads it: ceil(N / W) samples
        if share is None:
            return None  # a custom batch sampler, split by Lightning's wrapper: no length to derive here
        n = share // loader.batch_size if loader.drop_last else -(-share // loader.batch_size)
    # As Lightning applies limit_train_batches: a count caps the batches, a fraction scales them.
    if isinstance(limit, int) and not isinstance(limit, bool):
        n = min(n, limit)
    elif isinstance(limit, float):
        n = int(n * limit)
    elif limit is not None:
        return None
    return None if n == declared else f"the training dataloader gives {n} batches per epoch, the proof declares {declared}"

"""Where a proof's time goes: each part of the callback and of the replay, timed where it runs.

``python -m benchmarks.run --sections breakdown``. The parts are the project's own functions, wrapped for one
fit (and one verification) by a :class:`Stopwatch` that adds up the wall-clock time of each call on the thread
that makes it: the training thread, or the writer thread. What the DataLoader workers add (seeding each
batch, and in epoch 0 seeding and hashing each sample) is timed in-process on the same samples, against the
plain fetch. docs/performance.md, "Where the time goes", reads the table.
"""

from __future__ import annotations

import importlib
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lightning_pol import ProofOfLearning, verify_proof

#: (label, how often it runs, module, attribute): each wrapped where it is looked up.
PROVER_PARTS = [
    ("RNG isolation: restore at batch start", "step", "lightning_pol.runtime.rng", "TrainingStream.batch_start"),
    ("RNG isolation: save after backward", "step", "lightning_pol.runtime.rng", "TrainingStream.after_backward"),
    ("index recording (sampler queue, ledger)", "step", "lightning_pol.prover.instrumentation", "RecordingSampler.pop"),
    ("index recording (sampler queue, ledger)", "step", "lightning_pol.prover.ledger", "StepLedger.batch_started"),
    ("index recording (sampler queue, ledger)", "step", "lightning_pol.prover.ledger", "StepLedger.batch_ended"),
    ("callback hooks per batch, in all", "step", "lightning_pol.prover.callback", "ProofOfLearning.on_train_batch_start"),
    ("callback hooks per batch, in all", "step", "lightning_pol.prover.callback", "ProofOfLearning.on_after_backward"),
    ("callback hooks per batch, in all", "step", "lightning_pol.prover.callback", "ProofOfLearning.on_train_batch_end"),
    ("state capture (state_dicts, RNG)", "checkpoint", "lightning_pol.prover.callback", "capture_training_state"),
    ("state snapshot (copy into reused buffers)", "checkpoint", "lightning_pol.runtime.snapshots", "SnapshotPool.take"),
    ("hand-off to the writer (queue, backpressure)", "checkpoint", "lightning_pol.prover.background", "BackgroundWriter.submit"),
    ("fit start: recreation record, callback plan", "fit", "lightning_pol.prover.callback", "recreation_record"),
    ("fit start: rehearsal, module twin (meta)", "fit", "lightning_pol.prover.rehearsal", "Rehearsal.check_module"),
    ("fit start: rehearsal, optimizers and data", "fit", "lightning_pol.prover.rehearsal", "Rehearsal.check_training"),
    ("fit start: manifest and code identity", "fit", "lightning_pol.prover.callback", "new_manifest"),
    ("fit start: code identity (part of the above)", "fit", "lightning_pol.prover.run_record", "code_identity"),
    ("fit start: proof directory created", "fit", "lightning_pol.prover.session", "ProofSession.create"),
    ("epoch 0 end: data commitment hand-off", "fit", "lightning_pol.prover.callback", "ProofOfLearning._commit_data"),
    ("train end: final checkpoint queued", "fit", "lightning_pol.prover.callback", "ProofOfLearning._finish"),
    ("teardown: waiting for the writer", "fit", "lightning_pol.prover.callback", "ProofOfLearning.teardown"),
    ("writer: encode, hash, write a checkpoint", "checkpoint", "lightning_pol.prover.session", "ProofSession._add_checkpoint"),
    ("writer: commits (index chunk, fsyncs, manifest)", "fit", "lightning_pol.prover.session", "ProofSession._commit"),
    ("writer: data commitment (Merkle tree, leaves file)", "fit", "lightning_pol.prover.session", "ProofSession._put_leaves"),
]
#: Lightning's own step (fetch, training step, hooks): what the parts are a share of.
STEP = ("lightning.pytorch.loops.training_epoch_loop", "_TrainingEpochLoop.advance")

REPLAY_PARTS = [
    ("integrity (every file hashed)", "lightning_pol.verification.verifier", "check_integrity"),
    ("code check", "lightning_pol.verification.verifier", "check_code"),
    ("initialization (KS test)", "lightning_pol.verification.verifier", "check_initialization"),
    ("hyperparameters", "lightning_pol.verification.verifier", "check_hyperparameters"),
    ("data check (sampled leaves)", "lightning_pol.verification.verifier", "check_data"),
    ("loading checkpoint states", "lightning_pol.format.reader", "ProofReader.load_checkpoint"),
    ("the replay's Trainer set-up", "lightning_pol.verification.replay", "PoLVerifierModule._trainer"),
    ("comparing states", "lightning_pol.verification.segments", "Judge.__call__"),
    ("replay runs (Trainer.fit, all chains)", "lightning_pol.verification.replay", "PoLVerifierModule.replay_chain"),
]


class Stopwatch:
    """Adds up the wall-clock seconds and calls of wrapped functions, per label and per thread."""

    def __init__(self) -> None:
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)
        self.calls: dict[tuple[str, str], int] = defaultdict(int)
        self._depth = threading.local()

    @contextmanager
    def wrapping(self, parts: list[tuple[str, str, str]]) -> Iterator[None]:
        undo = []
        for label, module, attr in parts:
            owner: Any = importlib.import_module(module)
            *outer, name = attr.split(".")
            for part in outer:
                owner = getattr(owner, part)
            original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
            setattr(owner, name, self._timed(label, original))
            undo.append((owner, name, original))
        try:
            yield
        finally:
            for owner, name, original in reversed(undo):
                setattr(owner, name, original)

    def _timed(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            thread = "writer" if threading.current_thread().name == "lightning-pol-writer" else "training"
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[(label, thread)] += time.perf_counter() - t
                self.calls[(label, thread)] += 1

        return timed


def prover(work: Any, k: int, repeats: int, tmp: Path) -> dict[str, Any]:
    """The callback's parts over ``repeats`` fits (medians), with the plain fit's step time to compare."""
    parts = [(label, module, attr) for label, _, module, attr in PROVER_PARTS] + [("step", *STEP)]
    runs, plain_steps = [], []
    for r in range(repeats):
        watch = Stopwatch()
        with watch.wrapping([("step", *STEP)]):
            work.fit([], tmp / "plain")
        plain_steps.append(watch.seconds[("step", "training")] / watch.calls[("step", "training")])
        watch = Stopwatch()
        with watch.wrapping(parts):
            work.fit([ProofOfLearning(tmp / f"breakdown-{r}", every_n_steps=k)], tmp / "pol")
        runs.append(watch)
    steps = statistics.median(w.calls[("step", "training")] for w in runs)
    checkpoints = statistics.median(w.calls[("state capture (state_dicts, RNG)", "training")] for w in runs)
    rows = []
    for label, per in dict.fromkeys((p[0], p[1]) for p in PROVER_PARTS):
        for thread in ("training", "writer"):
            if not any((label, thread) in w.calls for w in runs):
                continue
            total = statistics.median(w.seconds[(label, thread)] for w in runs)
            calls = statistics.median(w.calls[(label, thread)] for w in runs)
            rows.append({"part": label, "thread": thread, "per": per, "calls": calls, "total_ms": total * 1e3,
                         "per_call_us": total / max(calls, 1) * 1e6, "per_step_us": total / steps * 1e6})
    return {"k": k, "steps": steps, "checkpoints": checkpoints, "plain_step_ms": statistics.median(plain_steps) * 1e3,
            "proof_step_ms": statistics.median(w.seconds[("step", "training")] / w.calls[("step", "training")] for w in runs) * 1e3,
            "rows": rows}


def workers(samples: int = 512, batch: int = 32) -> dict[str, Any]:
    """What seeding (and in epoch 0 hashing) adds to a digits sample's fetch in a DataLoader worker: microseconds a sample.

    Timed in this process as a worker runs it: ``get_worker_info()`` answers, so the fetch does not save and
    restore the global streams around each batch (75 µs), which only a main-process fetch (``num_workers=0``) does.
    """
    from unittest import mock

    from lightning_pol.runtime.leaves import FirstEpochLeaves
    from lightning_pol.runtime.seeded_data import SeededDataset
    from lightning_pol.zoo import DigitsDataModule

    dm = DigitsDataModule(batch_size=batch, augment=True)
    dm.setup("fit")
    dataset = dm.train_dataloader().dataset
    n = min(samples, len(dataset))
    batches = [list(range(i, min(i + batch, n))) for i in range(0, n, batch)]

    def per_sample(fetch: Callable[[list[int]], Any]) -> float:  # the fastest of 9 passes: a difference of microseconds
        passes = []
        for _ in range(9):
            t = time.perf_counter()
            for b in batches:
                fetch(b)
            passes.append((time.perf_counter() - t) / n)
        return min(passes) * 1e6

    plain = per_sample(lambda b: [dataset[i] for i in b])
    table = FirstEpochLeaves(len(dataset))
    seeded = SeededDataset(dataset, 1234, table)
    with mock.patch("torch.utils.data.get_worker_info", return_value=object()):
        epoch0 = per_sample(lambda b: seeded.__getitems__([(0, i) for i in b]))
        later = per_sample(lambda b: seeded.__getitems__([(1, i) for i in b]))
    return {"plain_fetch_us": plain, "epoch0_extra_us": epoch0 - plain, "later_extra_us": later - plain}


def replay(work: Any, k: int, tmp: Path) -> dict[str, Any]:
    """A full replay (q=0) of one proof, its parts timed: the fixed set-up apart from the replayed steps."""
    proof = tmp / "breakdown-replay"
    work.fit([ProofOfLearning(proof, every_n_steps=k)], tmp / "pol")
    t = time.perf_counter()
    work.fit([], tmp / "plain")
    training = time.perf_counter() - t
    watch = Stopwatch()
    with watch.wrapping([(label, module, attr) for label, module, attr in REPLAY_PARTS] + [("step", *STEP)]):
        t = time.perf_counter()
        report = verify_proof(proof, q=0)
        total = time.perf_counter() - t
    assert report.valid, report.reasons
    steps = watch.calls[("step", "training")]
    step_s = watch.seconds[("step", "training")]
    rows = [{"part": label, "calls": watch.calls[(label, "training")], "total_ms": watch.seconds[(label, "training")] * 1e3}
            for label, _, _ in REPLAY_PARTS]
    return {"k": k, "training_s": training, "verify_s": total, "segments": len(report.segments), "replayed_steps": steps,
            "replayed_steps_s": step_s, "per_segment_s": step_s / max(len(report.segments), 1),
            "fixed_s": total - step_s, "rows": rows}


def markdown(res: dict[str, Any]) -> list[str]:
    p, w, r = res["prover"], res["workers"], res["replay"]
    lines = [f"**Where the time goes** (digits CNN width 32, k={p['k']}; {p['steps']:.0f} steps, {p['checkpoints']:.0f} checkpoints; "
             f"Lightning's step: {p['plain_step_ms']:.2f} ms plain, {p['proof_step_ms']:.2f} ms with the proof, hooks included)", "",
             "| part | thread | runs once a | calls | total ms | per call us | per step us |", "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {row['part']} | {row['thread']} | {row['per']} | {row['calls']:.0f} | {row['total_ms']:.1f} | {row['per_call_us']:.0f} | "
              f"{row['per_step_us']:.1f} |" for row in p["rows"]]
    lines += ["", f"DataLoader workers, per sample (timed as a worker fetches, digits): plain fetch {w['plain_fetch_us']:.1f} us; epoch 0 seeding and "
              f"hashing +{w['epoch0_extra_us']:.1f} us; later epochs' batch seeding +{w['later_extra_us']:.1f} us", "",
              f"**Full replay, in parts** (q=0, {r['segments']} segments, {r['replayed_steps']} steps): {r['verify_s']:.2f} s against "
              f"{r['training_s']:.2f} s of training; replayed steps {r['replayed_steps_s']:.2f} s ({r['per_segment_s'] * 1e3:.0f} ms a segment), "
              f"fixed {r['fixed_s']:.2f} s", "", "| part | calls | total ms |", "| --- | --- | --- |"]
    lines += [f"| {row['part']} | {row['calls']} | {row['total_ms']:.1f} |" for row in r["rows"]]
    return lines + [""]

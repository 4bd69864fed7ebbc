"""Same seed, same proof; and a checkpoint is enough to replay the next k steps bit for bit.

The replay here is a hand-written oracle (plain PyTorch, no Lightning), so it
checks the proof's content independently of the verifier's own replay code.
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from lightning_pol import ProofReader
from lightning_pol.runtime.rng import restore_rng_states
from lightning_pol.runtime.seeded_data import SeededDataset
from tests.conftest import train_with_proof
from tests.unseen_project import NoisyDigits, UnseenDataModule, UnseenModule


def digests(proof):
    return [(c.step, c.sha256) for c in ProofReader(proof).checkpoints]


class DrawsBetweenSteps(pl.Callback):
    """Consumes the global RNG where a user's code might: epoch starts and validation."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch > 0:
            torch.rand(7)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        torch.randn(3)

    def on_validation_start(self, trainer, pl_module):
        torch.rand(5)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    proof, _, _ = train_with_proof(root, UnseenModule, UnseenDataModule(num_workers=2), every_n_steps=8, max_epochs=2, gradient_clip_val=1.0)
    return proof


def test_same_seed_gives_identical_checkpoints(tmp_path, reference):
    proof, _, _ = train_with_proof(tmp_path, UnseenModule, UnseenDataModule(num_workers=2), every_n_steps=8, max_epochs=2, gradient_clip_val=1.0)
    assert digests(proof) == digests(reference)
    assert ProofReader(proof).manifest.data.root == ProofReader(reference).manifest.data.root


@pytest.mark.parametrize("dm_kwargs", [dict(num_workers=0), dict(num_workers=2, persistent_workers=True)], ids=["main-process", "persistent"])
def test_sample_randomness_does_not_depend_on_workers(tmp_path, dm_kwargs):
    """With a sampler that draws nothing, augmentation is the only data randomness: workers must not matter."""
    runs = []
    for i, kwargs in enumerate([dict(num_workers=2), dm_kwargs]):
        proof, _, _ = train_with_proof(tmp_path / str(i), UnseenModule, UnseenDataModule(sampler="custom", **kwargs), every_n_steps=8, max_epochs=2)
        runs.append(digests(proof))
    assert runs[0] == runs[1]


def test_rng_draws_between_steps_do_not_shift_the_training_stream(tmp_path):
    """Draws outside the step (other callbacks, validation, a new epoch) leave dropout's stream alone.

    The sampler here draws nothing, so the only thing such draws could change is
    the stream inside training steps. (With shuffle=True an epoch-start draw
    legitimately changes the next epoch's order, which the index log records.)
    """
    from lightning_pol import ProofOfLearning
    from tests.conftest import make_trainer

    runs = []
    for extra in ([], [DrawsBetweenSteps()]):
        pl.seed_everything(0, verbose=False)
        proof = tmp_path / f"proof{len(extra)}"
        module = UnseenModule()
        trainer = make_trainer([*extra, ProofOfLearning(proof, every_n_steps=8)], tmp_path, max_epochs=2, gradient_clip_val=1.0)
        trainer.fit(module, datamodule=UnseenDataModule(num_workers=2, sampler="custom"))
        runs.append(digests(proof))
    assert runs[0] == runs[1]


def test_another_seed_gives_another_proof(tmp_path, reference):
    proof, _, _ = train_with_proof(tmp_path, UnseenModule, UnseenDataModule(num_workers=2), every_n_steps=8, seed=1, max_epochs=2, gradient_clip_val=1.0)
    assert digests(proof)[1:] != digests(reference)[1:]


def replay(reader: ProofReader, start: int, k: int):
    """Re-run steps [start, start + k) of the unseen project from its checkpoint, in plain PyTorch."""
    entry = next(c for c in reader.checkpoints if c.step == start)
    state = reader.load_checkpoint(entry)
    module = UnseenModule(**reader.manifest.module.hparams)
    module.load_state_dict(state["model"])
    module.train()
    # As Lightning does on resume: build both as configure_optimizers does, then load their states.
    opt = torch.optim.AdamW(module.parameters(), lr=module.hparams.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=module.hparams.lr, total_steps=reader.manifest.training["estimated_stepping_batches"])
    opt.load_state_dict(state["optimizers"][0])
    sched.load_state_dict(state["lr_schedulers"][0])
    restore_rng_states(state["rng"])
    data = SeededDataset(NoisyDigits(augment=True), reader.manifest.seed)
    log = reader.index_log()
    indices, offsets = log.indices, log.offsets
    runs = reader.manifest.sample_epochs
    for t in range(start, start + k):
        epoch = max(e for first, e in runs if first <= t)
        batch = default_collate(data.__getitems__([(epoch, i) for i in indices[offsets[t] : offsets[t + 1]].tolist()]))  # one batch: one seed (epochs > 0)
        x, y, _ = batch
        loss = F.cross_entropy(module.net(x), y, label_smoothing=module.hparams.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        sched.step()
    return module, opt


@pytest.mark.parametrize("start", [0, 48, 56, 104], ids=["first", "mid-epoch", "across-epoch-boundary", "to-final"])
def test_checkpoint_replays_bit_exactly(reference, start):
    reader = ProofReader(reference)
    steps = [c.step for c in reader.checkpoints]
    end = steps[steps.index(start) + 1]
    module, opt = replay(reader, start, end - start)
    target = reader.load_checkpoint(reader.checkpoints[steps.index(end)])
    for key, value in module.state_dict().items():
        assert torch.equal(value, target["model"][key]), key
    replayed_opt = opt.state_dict()["state"]
    for pid, st in target["optimizers"][0]["state"].items():
        for name, value in st.items():
            assert torch.equal(replayed_opt[pid][name], value), (pid, name)


def test_numpy_draws_between_steps_are_undone_including_a_cached_gaussian():
    """The stream skips numpy's 70 µs get/set_state while numpy's raw words are unchanged; a legacy
    Gaussian served from numpy's cache changes no word, so a saved state holding one is always restored."""
    import numpy as np

    from lightning_pol.runtime.rng import TrainingStream

    np.random.seed(1)
    stream = TrainingStream()
    stream.batch_start()
    for draws_in_step in (0, 1, 2, 1):  # 1: the step leaves a Gaussian cached
        np.random.standard_normal(draws_in_step)
        stream.after_backward()
        expected = np.random.get_state()
        np.random.standard_normal(1)  # between steps (validation, a callback): served from the cache after an odd step
        stream.batch_start()
        got = np.random.get_state()
        assert got[0] == expected[0] and np.array_equal(got[1], expected[1]) and got[2:] == expected[2:]


def test_python_random_state_as_raw_bytes_is_getstate_exactly():
    """The stream copies Python's Mersenne Twister as bytes; the checkpoint form and a restore must be getstate()'s."""
    import random

    from lightning_pol.runtime.rng import (
        RawPythonState,
        capture_python_rng,
        portable_rng_states,
        restore_python_rng,
    )

    random.seed(5)
    [random.random() for _ in range(700)]  # past a twist: the index is not 624
    random.gauss(0, 1)  # leaves gauss_next cached
    raw, expected = capture_python_rng(), random.getstate()
    assert isinstance(raw, RawPythonState)  # the layout is confirmed on CPython 3.11
    a, b = portable_rng_states({"python": raw})["python"], portable_rng_states({"python": expected})["python"]
    assert torch.equal(a["state"], b["state"]) and (a["version"], a["gauss_next"]) == (b["version"], b["gauss_next"])
    following = [random.gauss(0, 1) for _ in range(3)]
    for saved in (raw, a):  # the raw form, and a checkpoint's
        random.seed(99)
        restore_python_rng(saved)
        assert random.getstate() == expected and [random.gauss(0, 1) for _ in range(3)] == following


class _PythonRandomDigits(torch.utils.data.Dataset):
    """Draws from Python's ``random`` only for indices >= 3 (so the first fetches look like they draw nothing),
    from its Gaussian cache too, and from torch always."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        import random

        x = torch.rand(2)
        if i >= 3:
            x = x + random.random() + random.gauss(0, 1)
        return x, i


class _NumpyRandomDigits(torch.utils.data.Dataset):
    """Draws from numpy's global RNG (a Gaussian, so a value is cached) for samples 5 and up."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        x = torch.rand(2)
        if i >= 5:
            x = x + float(np.random.randn()) + float(np.random.rand())
        return x, i


def test_numpy_is_seeded_per_sample_only_once_a_batch_draws_from_it():
    """Epoch 0 seeds numpy once a batch, not once a sample, until a batch moves it; the batch that first
    draws (in its last sample) is fetched again. Every sample equals a fetch with all generators seeded."""
    from lightning_pol.format.seeds import commitment_seed
    from lightning_pol.runtime.rng import seed_everything_local
    from lightning_pol.runtime.seeded_data import SeededDataset

    def eager(i):
        seed_everything_local(commitment_seed(i))
        return _NumpyRandomDigits()[i][0]

    want = [eager(i) for i in range(8)]
    lazy = SeededDataset(_NumpyRandomDigits(), proof_seed=7)
    for batch, draws_after in (([0, 1, 2], False), ([3, 4, 5], True), ([6, 7], True)):
        got = lazy.__getitems__([(0, i) for i in batch])
        assert all(torch.equal(g[0], want[i]) for g, i in zip(got, batch)), batch
        assert lazy.numpy_draws == draws_after


def test_python_random_is_seeded_only_for_datasets_that_draw_from_it():
    """A fetch that leaves Python's random at its marker drew nothing from it; one that moved it is fetched again,
    seeded. Either way every sample equals a fetch with all three generators seeded."""
    import random

    from lightning_pol.format.seeds import batch_seed, commitment_seed
    from lightning_pol.runtime.rng import seed_everything_local
    from lightning_pol.runtime.seeded_data import SeededDataset

    def eager(indices, seed):
        seed_everything_local(seed)
        return [_PythonRandomDigits()[i] for i in indices]

    batch = [4, 0, 6]  # a later epoch: one seed a batch
    want0 = [eager([i], commitment_seed(i))[0][0] for i in range(8)]
    want2 = [w[0] for w in eager(batch, batch_seed(7, 2, batch))]
    random.seed(123)
    before = random.getstate()
    lazy = SeededDataset(_PythonRandomDigits(), proof_seed=7)
    for i in range(8):  # epoch 0: one seed a sample
        (got,) = lazy.__getitems__([(0, i)])
        assert torch.equal(got[0], want0[i]), i
        assert lazy.python_draws == (i >= 3)
    fresh = SeededDataset(_PythonRandomDigits(), proof_seed=7)
    got = fresh.__getitems__([(2, i) for i in batch])
    assert all(torch.equal(g[0], w) for g, w in zip(got, want2)) and fresh.python_draws
    assert random.getstate() == before  # the main process's own stream is left as it was

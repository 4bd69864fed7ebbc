"""Run by tests/test_memory.py in a fresh process: 8 steps of the 76 MB MLP, with a proof (k = 4) or without; prints
the process's peak RSS. Both arms import lightning_pol, so the difference is what the callback does, not its code."""

from __future__ import annotations

import json
import resource
import sys

import lightning.pytorch as pl

from lightning_pol import ProofOfLearning
from tests.conftest import make_trainer
from tests.memory_project import RandomVectors, WideMLP

if __name__ == "__main__":
    root, arm = sys.argv[1], sys.argv[2]
    pl.seed_everything(0, verbose=False)
    model = WideMLP()
    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    callbacks = [ProofOfLearning(f"{root}/proof", every_n_steps=4)] if arm == "proof" else []
    make_trainer(callbacks, root, max_steps=8).fit(model, datamodule=RandomVectors())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes
    print(json.dumps({"peak_bytes": peak, "state_bytes": state_bytes}))

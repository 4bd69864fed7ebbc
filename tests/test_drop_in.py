"""docs/drop-in.md, done: an existing Lightning+Hydra project (laid out like the
lightning-hydra-template, owned by nobody here) adds a ``callbacks/pol.yaml``,
trains with its own ``train.py``, and its proof verifies with
``python -m lightning_pol.verify`` run outside this repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

FILES = {
    "src/myproj/__init__.py": "",
    "src/myproj/model.py": '''
        import lightning as L
        import torch
        import torch.nn.functional as F
        from torch import nn


        class DigitsMLP(L.LightningModule):
            def __init__(self, hidden: int = 32, lr: float = 1e-2) -> None:
                super().__init__()
                self.save_hyperparameters()
                self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.net(x)

            def training_step(self, batch, batch_idx):
                x, y = batch
                loss = F.cross_entropy(self(x), y)
                self.log("train/loss", loss, prog_bar=True)
                return loss

            def configure_optimizers(self):
                return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
    ''',
    "src/myproj/data.py": '''
        import lightning as L
        import torch
        from torch.utils.data import DataLoader, Dataset


        class NoisyDigits(Dataset):
            def __init__(self, images: torch.Tensor, labels: torch.Tensor, noise: float) -> None:
                self.images, self.labels, self.noise = images, labels, noise

            def __len__(self) -> int:
                return len(self.labels)

            def __getitem__(self, i: int):
                # augmentation from torch's global RNG: the proof replays it exactly
                x = self.images[i] + self.noise * torch.randn_like(self.images[i])
                return x, int(self.labels[i])


        class DigitsDataModule(L.LightningDataModule):
            def __init__(self, batch_size: int = 64, noise: float = 0.05, num_workers: int = 0) -> None:
                super().__init__()
                self.save_hyperparameters()
                self.train_set = None

            def setup(self, stage=None) -> None:
                if self.train_set is None:
                    from sklearn.datasets import load_digits

                    d = load_digits()
                    images = torch.tensor(d.images, dtype=torch.float32) / 16.0
                    labels = torch.tensor(d.target, dtype=torch.int64)
                    self.train_set = NoisyDigits(images, labels, self.hparams.noise)

            def train_dataloader(self) -> DataLoader:
                h = self.hparams
                return DataLoader(self.train_set, batch_size=h.batch_size, shuffle=True, num_workers=h.num_workers)
    ''',
    "configs/train.yaml": '''
        defaults:
          - _self_
          - data: default
          - model: default
          - callbacks: default
          - trainer: default

        seed: 0
    ''',
    "configs/model/default.yaml": '''
        _target_: myproj.model.DigitsMLP
        hidden: 32
        lr: 0.01
    ''',
    "configs/data/default.yaml": '''
        _target_: myproj.data.DigitsDataModule
        batch_size: 64
        noise: 0.05
        num_workers: 0
    ''',
    "configs/callbacks/default.yaml": '''
        defaults:
          - model_summary
          - pol
          - _self_
    ''',
    "configs/callbacks/model_summary.yaml": '''
        model_summary:
          _target_: lightning.pytorch.callbacks.ModelSummary
          max_depth: 1
    ''',
    "configs/callbacks/pol.yaml": '''
        pol:
          _target_: lightning_pol.ProofOfLearning
          dirpath: ${hydra:runtime.output_dir}/proof
          every_n_steps: 10
          init_strategy: pytorch_default
    ''',
    "configs/trainer/default.yaml": '''
        _target_: lightning.pytorch.Trainer
        default_root_dir: ${hydra:runtime.output_dir}
        accelerator: cpu
        devices: 1
        max_epochs: 2
        logger: false
        enable_checkpointing: false
        enable_progress_bar: false
    ''',
    "train.py": '''
        import hydra
        import lightning as L
        from omegaconf import DictConfig


        @hydra.main(config_path="configs", config_name="train", version_base="1.3")
        def main(cfg: DictConfig) -> None:
            L.seed_everything(cfg.seed, workers=True)
            datamodule = hydra.utils.instantiate(cfg.data)
            model = hydra.utils.instantiate(cfg.model)
            callbacks = [hydra.utils.instantiate(c) for c in cfg.callbacks.values() if "_target_" in c]
            trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks)
            trainer.fit(model, datamodule=datamodule)


        if __name__ == "__main__":
            main()
    ''',
}


def write_project(root: Path) -> Path:
    proj = root / "myproj"
    for rel, text in FILES.items():
        path = proj / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return proj


def test_an_existing_hydra_project_adds_a_proof_and_it_verifies(tmp_path):
    proj = write_project(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(proj / "src"), "HYDRA_FULL_ERROR": "1"}
    run_dir = tmp_path / "run"

    train = subprocess.run(
        [sys.executable, str(proj / "train.py"), f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-4000:]
    proof = run_dir / "proof"
    manifest = json.loads((proof / "manifest.json").read_text())
    assert manifest["module"]["class"] == "myproj.model:DigitsMLP"
    assert manifest["datamodule"]["class"] == "myproj.data:DigitsDataModule"
    assert manifest["status"] == "complete"
    # 1,797 samples at batch 64: 29 steps per epoch, 58 in all; a checkpoint every 10 and at the end
    assert [c["step"] for c in manifest["checkpoints"]] == [0, 10, 20, 30, 40, 50, 58]

    report_path = tmp_path / "v.json"
    verify = subprocess.run(
        [sys.executable, "-m", "lightning_pol.verify", f"proof_dir={proof}", "verifier.q=0",
         f"report={report_path}", f"hydra.run.dir={tmp_path / 'verify'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert verify.returncode == 0, verify.stdout[-4000:] + verify.stderr[-4000:]
    assert "verdict VALID" in verify.stdout
    report = json.loads(report_path.read_text())
    assert report["valid"] is True
    assert len(report["segments"]) == len(manifest["checkpoints"]) - 1
    assert all(s["bit_exact"] for s in report["segments"]), report["segments"]

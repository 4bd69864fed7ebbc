import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset, TensorDataset, random_split

FILENAME = "digits.npz"


class DigitsDataModule(LightningDataModule):
    """`LightningDataModule` for scikit-learn's 8x8 handwritten digits (1797 images, 10 classes).

    Plays the role of the template's `MNISTDataModule`: the data lives in files under
    `data_dir` (`digits.npz`); `prepare_data` "downloads" it there once (here: writes it from
    `sklearn.datasets.load_digits`, which ships with scikit-learn), and `setup` reads it back.
    """

    def __init__(
        self,
        data_dir: str = "data/",
        train_val_test_split: Tuple[int, int, int] = (1_257, 180, 360),
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()

        # this line allows to access init params with 'self.hparams' attribute
        # also ensures init params will be stored in ckpt
        self.save_hyperparameters(logger=False)

        self.data_train: Optional[Dataset] = None
        self.data_val: Optional[Dataset] = None
        self.data_test: Optional[Dataset] = None

        self.batch_size_per_device = batch_size

    @property
    def num_classes(self) -> int:
        return 10

    def prepare_data(self) -> None:
        """Write `<data_dir>/digits.npz` if it is not there yet (the "download").

        Called by Lightning in a single process; do not assign state here.
        """
        path = Path(self.hparams.data_dir) / FILENAME
        if path.exists():
            return
        from sklearn.datasets import load_digits

        digits = load_digits()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{FILENAME}.{os.getpid()}.tmp.npz")
        np.savez(tmp, images=digits.images.astype(np.uint8), labels=digits.target.astype(np.int64))
        os.replace(tmp, path)

    def setup(self, stage: Optional[str] = None) -> None:
        """Load the data and split it. Called on every process, after `prepare_data`."""
        # Divide batch size by the number of devices.
        if self.trainer is not None:
            if self.hparams.batch_size % self.trainer.world_size != 0:
                raise RuntimeError(
                    f"Batch size ({self.hparams.batch_size}) is not divisible by the number of devices ({self.trainer.world_size})."
                )
            self.batch_size_per_device = self.hparams.batch_size // self.trainer.world_size

        # load and split datasets only if not loaded already
        if not self.data_train and not self.data_val and not self.data_test:
            with np.load(Path(self.hparams.data_dir) / FILENAME) as f:
                images, labels = f["images"], f["labels"]
            # (N, 8, 8) pixel values 0..16 -> float (N, 1, 8, 8) in [0, 1]
            x = torch.from_numpy(images).float().unsqueeze(1) / 16.0
            y = torch.from_numpy(labels).long()
            dataset = TensorDataset(x, y)
            self.data_train, self.data_val, self.data_test = random_split(
                dataset=dataset,
                lengths=self.hparams.train_val_test_split,
                generator=torch.Generator().manual_seed(42),
            )

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(
            dataset=self.data_train,
            batch_size=self.batch_size_per_device,
            num_workers=self.hparams.num_workers,
            pin_memory=self.hparams.pin_memory,
            shuffle=True,
        )

    def val_dataloader(self) -> DataLoader[Any]:
        return DataLoader(
            dataset=self.data_val,
            batch_size=self.batch_size_per_device,
            num_workers=self.hparams.num_workers,
            pin_memory=self.hparams.pin_memory,
            shuffle=False,
        )

    def test_dataloader(self) -> DataLoader[Any]:
        return DataLoader(
            dataset=self.data_test,
            batch_size=self.batch_size_per_device,
            num_workers=self.hparams.num_workers,
            pin_memory=self.hparams.pin_memory,
            shuffle=False,
        )

    def state_dict(self) -> Dict[Any, Any]:
        return {}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        pass


if __name__ == "__main__":
    _ = DigitsDataModule()

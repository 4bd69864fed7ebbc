import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset, random_split

FILENAME = "digits.npz"


class DigitsDataModule(L.LightningDataModule):
    """scikit-learn's 8x8 handwritten digits, read from `<data_dir>/digits.npz`.

    `prepare_data` plays the download: it writes the file from `load_digits()` if it is missing.
    """

    def __init__(self, data_dir: str = "data", batch_size: int = 32) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.batch_size = batch_size

    def prepare_data(self) -> None:
        path = Path(self.data_dir) / FILENAME
        if path.exists():
            return
        from sklearn.datasets import load_digits

        digits = load_digits()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{FILENAME}.{os.getpid()}.tmp.npz")
        np.savez(tmp, images=digits.images.astype(np.uint8), labels=digits.target.astype(np.int64))
        os.replace(tmp, path)

    def setup(self, stage: str) -> None:
        with np.load(Path(self.data_dir) / FILENAME) as f:
            images, labels = f["images"], f["labels"]
        x = torch.from_numpy(images).float().unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
        y = torch.from_numpy(labels).long()
        self.train_set, self.val_set = random_split(
            TensorDataset(x, y), [0.8, 0.2], generator=torch.Generator().manual_seed(42)
        )

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)

"""CIFAR-10 and CIFAR-100 through torchvision, with the paper's augmentation, or same-shaped fake data offline."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset
from torchvision import datasets, transforms

from lightning_pol.errors import PoLError
from lightning_pol.zoo.split_data import TrainValDataModule

# Per-channel mean and std of each training set's pixels in [0, 1].
STATS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


class CifarDataModule(TrainValDataModule):
    """Example::

        dm = CifarDataModule("cifar10", root="data", download=True)
        trainer.fit(ImageClassifier(net="resnet20"), datamodule=dm)

    Samples are ``(image [3, 32, 32] normalized float, int label)``. With
    ``augment`` the training images get He et al.'s augmentation (4-pixel
    padding, random 32x32 crop, random horizontal flip), drawn from torch's
    global RNG inside ``__getitem__``. ``fake=True`` uses torchvision's
    ``FakeData`` of the same shape and class count instead (no files, no
    download): each image is fixed by its index plus ``seed`` (validation
    images follow the training ones, so the two never share an image).
    """

    def __init__(
        self,
        name: str = "cifar10",
        root: str = "data",
        download: bool = False,
        batch_size: int = 128,
        num_workers: int = 0,
        augment: bool = True,
        fake: bool = False,
        fake_train_size: int = 50000,
        fake_val_size: int = 10000,
        seed: int = 0,
        persistent_workers: bool = False,
    ) -> None:
        super().__init__()
        if name not in NUM_CLASSES:
            raise PoLError(f"unknown dataset {name!r}; choose one of {list(NUM_CLASSES)}")
        self.save_hyperparameters()

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES[self.hparams.name]

    def transform(self, train: bool) -> transforms.Compose:
        """ToTensor + Normalize, after the random crop and flip for augmented training data."""
        mean, std = STATS[self.hparams.name]
        steps: list = []
        if train and self.hparams.augment:
            steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
        return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(mean, std)])

    def _dataset(self, train: bool) -> Dataset:
        h = self.hparams
        if h.fake:
            size = h.fake_train_size if train else h.fake_val_size
            offset = h.seed if train else h.seed + h.fake_train_size
            return datasets.FakeData(
                size=size, image_size=(3, 32, 32), num_classes=self.num_classes,
                transform=self.transform(train), random_offset=offset,
            )
        cls = datasets.CIFAR10 if h.name == "cifar10" else datasets.CIFAR100
        try:
            return cls(h.root, train=train, download=h.download, transform=self.transform(train))
        except RuntimeError as e:
            where = Path(h.root).resolve() / cls.base_folder
            raise PoLError(f"{h.name} not found or corrupted in {where}; pass data.download=true to download it") from e

    def prepare_data(self) -> None:
        h = self.hparams
        if h.download and not h.fake:
            cls = datasets.CIFAR10 if h.name == "cifar10" else datasets.CIFAR100
            cls(h.root, train=True, download=True)
            cls(h.root, train=False, download=True)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.train_set = self._dataset(train=True)
        self.val_set = self._dataset(train=False)

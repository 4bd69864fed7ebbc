"""Models and datamodules that the configs and examples name by import path."""

from lightning_pol.zoo.digits_cnn import DigitsCNN
from lightning_pol.zoo.digits_data import DigitsDataModule

__all__ = ["DigitsCNN", "DigitsDataModule"]

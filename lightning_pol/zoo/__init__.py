"""Models and datamodules that the configs and examples name by import path."""

from lightning_pol.zoo.cifar_data import CifarDataModule
from lightning_pol.zoo.classifier import ImageClassifier
from lightning_pol.zoo.digits_cnn import DigitsCNN
from lightning_pol.zoo.digits_data import DigitsDataModule
from lightning_pol.zoo.networks import NETWORKS, build_network

__all__ = ["CifarDataModule", "DigitsCNN", "DigitsDataModule", "ImageClassifier", "NETWORKS", "build_network"]

from lightning.pytorch.cli import LightningCLI

from digits_cli.data import DigitsDataModule
from digits_cli.model import LitClassifier


def cli_main():
    LightningCLI(LitClassifier, DigitsDataModule)


if __name__ == "__main__":
    cli_main()

"""A language model trained the way Lightning's examples/pytorch/basics/transformer.py trains one: the module
defined in this script, the data split with random_split after seed_everything, and the DataLoaders handed to
trainer.fit. The proof callback is the one line added."""

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, random_split

import lightning as L
from corpus import Corpus
from lightning.pytorch.demos import Transformer
from lightning_pol import ProofOfLearning


class LanguageModel(L.LightningModule):
    def __init__(self, vocab_size):
        super().__init__()
        self.model = Transformer(vocab_size=vocab_size, ninp=32, nhead=2, nhid=64, nlayers=1)

    def training_step(self, batch, batch_idx):
        input, target = batch
        output = self.model(input, target)
        loss = F.nll_loss(output, target.view(-1))
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        input, target = batch
        output = self.model(input, target)
        self.log("val_loss", F.nll_loss(output, target.view(-1)))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main():
    L.seed_everything(42)
    dataset = Corpus()
    n = len(dataset)
    train_dataset, val_dataset, test_dataset = random_split(dataset, [n - 20, 10, 10])
    train_dataloader = DataLoader(train_dataset, batch_size=8, shuffle=True)
    val_dataloader = DataLoader(val_dataset, batch_size=8)
    model = LanguageModel(vocab_size=dataset.vocab_size)
    trainer = L.Trainer(gradient_clip_val=0.25, max_epochs=2, logger=False, enable_checkpointing=False,
                        callbacks=[ProofOfLearning("proof", every_n_steps=5)])
    trainer.fit(model, train_dataloader, val_dataloader)


if __name__ == "__main__":
    main()

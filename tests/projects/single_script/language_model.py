"""A language model trained the way Lightning's examples/pytorch/basics/transformer.py trains one: the module
defined in this script, the data split with random_split after seed_everything, and the DataLoaders handed to
trainer.fit. The proof callback is the one line added."""

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, random_split

import lightning as L
from corpus import Corpus
from lightning_pol import ProofOfLearning


class Net(torch.nn.Module):
    def __init__(self, vocab_size, ninp=32):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab_size, ninp)
        self.dropout = torch.nn.Dropout(0.2)
        self.hidden = torch.nn.Linear(ninp, ninp)
        self.decoder = torch.nn.Linear(ninp, vocab_size)

    def forward(self, inputs):
        h = torch.relu(self.hidden(self.dropout(self.embedding(inputs))))
        return F.log_softmax(self.decoder(h), dim=-1).view(-1, self.decoder.out_features)


class LanguageModel(L.LightningModule):
    def __init__(self, vocab_size):
        super().__init__()
        self.model = Net(vocab_size)

    def training_step(self, batch, batch_idx):
        input, target = batch
        loss = F.nll_loss(self.model(input), target.view(-1))
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        input, target = batch
        self.log("val_loss", F.nll_loss(self.model(input), target.view(-1)))

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

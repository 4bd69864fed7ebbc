"""A small in-memory corpus of word ids, cut into blocks of (input, next word) pairs."""

import torch
from torch.utils.data import Dataset

TEXT = " ".join(
    ["the quick brown fox jumps over the lazy dog and the dog sleeps while the fox runs into the woods"] * 30
)


class Corpus(Dataset):
    def __init__(self, text: str = TEXT, block: int = 8):
        words = text.split()
        self.vocab = sorted(set(words))
        ids = torch.tensor([self.vocab.index(w) for w in words])
        usable = (len(ids) - 1) // block * block
        self.inputs = ids[:usable].view(-1, block)
        self.targets = ids[1 : usable + 1].view(-1, block)
        self.vocab_size = len(self.vocab)

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, i):
        return self.inputs[i], self.targets[i]

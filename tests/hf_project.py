"""A Hugging Face fine-tune as people write one in Lightning: a transformers model built from its config (no
download), a tokenized ``datasets.Dataset`` in torch format with a collator, AdamW with a no-decay group and
transformers' linear warmup schedule, dropout on."""

from __future__ import annotations

import datasets
import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertTokenizerFast,
    DataCollatorWithPadding,
    get_linear_schedule_with_warmup,
)


class SequenceClassifierSteps(pl.LightningModule):
    """The training step of a transformers sequence classifier held as ``self.model``: its own loss."""

    model: torch.nn.Module

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model(**batch).loss
        self.log("train_loss", loss)
        return loss


class TinyBertClassifier(SequenceClassifierSteps):
    """A 2-layer BERT (hidden 64) for sequence classification, as transformers initializes it."""

    def __init__(self, hidden: int = 64, layers: int = 2, vocab: int = 125, lr: float = 5e-4, warmup_steps: int = 4,
                 total_steps: int = 40, weight_decay: float = 0.01, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                            intermediate_size=2 * hidden, max_position_embeddings=64, num_labels=2)
        self.model = BertForSequenceClassification(config)
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable()

    def configure_optimizers(self):  # type: ignore[override]
        no_decay = ("bias", "LayerNorm.weight")
        named = list(self.named_parameters())
        groups = [
            {"params": [p for n, p in named if not n.endswith(no_decay)], "weight_decay": self.hparams.weight_decay},
            {"params": [p for n, p in named if n.endswith(no_decay)], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=self.hparams.lr)
        schedule = get_linear_schedule_with_warmup(optimizer, self.hparams.warmup_steps, self.hparams.total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


WORDS = ["w" + chr(97 + i // 26) + chr(97 + i % 26) for i in range(120)]


def tiny_tokenizer() -> BertTokenizerFast:
    """A WordPiece tokenizer over :data:`WORDS`, built in memory (a real one would come from a local directory)."""
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])})


class SentenceClassesData(pl.LightningDataModule):
    """Sentences of varied length, labelled by whether their first word is in the second half of the vocabulary:
    tokenized with ``Dataset.map``, in torch format, padded per batch by ``DataCollatorWithPadding``."""

    def __init__(self, size: int = 96, batch_size: int = 16, max_length: int = 24) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.tokenizer = tiny_tokenizer()
        self.train: datasets.Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        g = torch.Generator().manual_seed(7)
        lengths = torch.randint(4, 17, (self.hparams.size,), generator=g).tolist()
        picks = [torch.randint(0, len(WORDS), (n,), generator=g).tolist() for n in lengths]
        raw = datasets.Dataset.from_dict({"text": [" ".join(WORDS[i] for i in seq) for seq in picks],
                                          "labels": [int(seq[0] >= len(WORDS) // 2) for seq in picks]})
        tokenized = raw.map(lambda b: self.tokenizer(b["text"], truncation=True, max_length=self.hparams.max_length),
                            batched=True, remove_columns=["text"])
        tokenized.set_format("torch")
        self.train = tokenized

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.hparams.batch_size, shuffle=True,
                          collate_fn=DataCollatorWithPadding(self.tokenizer))


class LoraBertClassifier(SequenceClassifierSteps):
    """LoRA on a published BERT, as PEFT's guides do it: the base loaded with ``from_pretrained`` from a local
    directory, rank-8 adapters on query and value, the new classifier trained in full (``modules_to_save``);
    only what trains goes to the optimizer."""

    def __init__(self, base: str, r: int = 8, lr: float = 2e-3, warmup_steps: int = 2, total_steps: int = 40,
                 weight_decay: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()
        from peft import LoraConfig, get_peft_model

        model = BertForSequenceClassification.from_pretrained(base, num_labels=2).train()  # loaded in eval mode: dropout on
        adapters = LoraConfig(r=r, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"], modules_to_save=["classifier"])
        self.model = get_peft_model(model, adapters)

    def configure_optimizers(self):  # type: ignore[override]
        trainable = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        schedule = get_linear_schedule_with_warmup(optimizer, self.hparams.warmup_steps, self.hparams.total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def publish_base(directory: str, seed: int = 3, hidden: int = 64, layers: int = 2, vocab: int = 125) -> str:
    """A "published" BERT encoder (random weights, no download) saved as transformers saves one; returns its
    safetensors file, the root a LoRA proof starts from."""
    from transformers import BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=64)
    BertModel(config).save_pretrained(directory)
    return f"{directory}/model.safetensors"

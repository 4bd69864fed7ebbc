"""A LoRA fine-tune of a GPT-2-small-sized model under a proof: what references save, and what the proof costs.

The base is a random GPT-2 (about 124M parameters: 12 layers, width 768, GPT-2's vocabulary) saved as transformers
saves one, the root the proof starts from. LoRA r = 8 on the attention projections (``c_attn``) trains about
0.3M of them. The same training runs three times: without a proof, with one, and with one whose checkpoints
hold every tensor (``references=False``); the proof is then verified in full (``q=0``) against its root.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset


class LoraGpt2(pl.LightningModule):
    """GPT-2 from a local directory with LoRA adapters on ``c_attn``; causal-LM loss on token sequences."""

    def __init__(self, base: str, r: int = 8, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        from peft import LoraConfig, get_peft_model
        from transformers import GPT2LMHeadModel

        model = GPT2LMHeadModel.from_pretrained(base).train()
        self.model = get_peft_model(model, LoraConfig(r=r, lora_alpha=16, lora_dropout=0.05, target_modules=["c_attn"], fan_in_fan_out=True))

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        (tokens,) = batch
        return self.model(input_ids=tokens, labels=tokens).loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=self.hparams.lr)


class TokenData(pl.LightningDataModule):
    """Random token sequences (a fixed generator: the same data for every run)."""

    def __init__(self, sequences: int = 128, length: int = 32, vocab: int = 50257, batch_size: int = 2) -> None:
        super().__init__()
        self.save_hyperparameters()

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        tokens = torch.randint(0, h.vocab, (h.sequences, h.length), generator=torch.Generator().manual_seed(0))
        return DataLoader(TensorDataset(tokens), batch_size=h.batch_size, shuffle=True)


def publish_gpt2(directory: Path, quick: bool) -> tuple[str, int]:
    """A random GPT-2 saved with ``save_pretrained``: (its safetensors file, its parameter count)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=1000) if quick else GPT2Config()  # GPT-2 small's sizes
    model = GPT2LMHeadModel(config)
    model.save_pretrained(directory)
    return str(directory / "model.safetensors"), sum(p.numel() for p in model.parameters())


def _fit(root: Path, base: str, vocab: int, steps: int, pol: dict[str, Any] | None) -> tuple[float, LoraGpt2]:
    from lightning_pol import ProofOfLearning

    pl.seed_everything(0, verbose=False)
    module = LoraGpt2(str(Path(base).parent))
    callbacks = [ProofOfLearning(root / "proof", **pol)] if pol is not None else []
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, max_epochs=-1, callbacks=callbacks, default_root_dir=root,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    start = time.perf_counter()
    trainer.fit(module, datamodule=TokenData(vocab=vocab))
    return time.perf_counter() - start, module


def lora_gpt2(tmp: Path, quick: bool) -> dict[str, Any]:
    """The row of docs/performance.md, "References": proof bytes with and without references, overhead, verification."""
    from lightning_pol import ProofReader, verify_proof

    steps, k = (8, 4) if quick else (64, 8)
    base, params = publish_gpt2(tmp / "gpt2", quick)
    vocab = 1000 if quick else 50257
    pol = {"every_n_steps": k, "init_strategy": "pretrained", "init_params": {"weights": base}, "fsync": False}
    plain, _ = _fit(tmp / "plain", base, vocab, steps, None)
    with_refs, module = _fit(tmp / "refs", base, vocab, steps, pol)
    whole, _ = _fit(tmp / "whole", base, vocab, steps, {**pol, "references": False})
    sizes = {}
    for name in ("refs", "whole"):
        reader = ProofReader(tmp / name / "proof")
        sizes[name] = {"proof": sum(e.bytes for e in reader.manifest.files.values()),
                       "checkpoints": [reader.manifest.files[c.path].bytes for c in reader.checkpoints]}
    trained = sum(p.numel() for p in module.parameters() if p.requires_grad)
    trained_bytes = 3 * sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)  # with Adam's moments
    start = time.perf_counter()
    report = verify_proof(tmp / "refs" / "proof", q=0, roots=base)
    verify = time.perf_counter() - start
    return {"parameters": params, "trained": trained, "steps": steps, "k": k,
            "proof_bytes": sizes["refs"]["proof"], "proof_bytes_without_references": sizes["whole"]["proof"],
            "smaller": sizes["whole"]["proof"] / sizes["refs"]["proof"],
            "checkpoint_bytes": sizes["refs"]["checkpoints"], "checkpoint_bound": 1.5 * trained_bytes + 16 * 1024,
            "plain_seconds": plain, "overhead": with_refs / plain, "overhead_without_references": whole / plain,
            "verify_seconds": verify, "verify_over_training": verify / plain, "valid": report.valid,
            "bit_exact": all(s.bit_exact for s in report.segments), "segments": len(report.segments)}


def markdown(r: dict[str, Any]) -> list[str]:
    return [f"**References: LoRA on a GPT-2-sized model** ({r['parameters'] / 1e6:.1f}M parameters, {r['trained'] / 1e6:.2f}M trained, "
            f"{r['steps']} steps at k = {r['k']})", "",
            "| proof MB | without references MB | smaller | largest checkpoint after W_0 (KB) | bound (KB) | overhead | without references | "
            "verification s (q=0) | / training | valid, bit-exact |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            f"| {r['proof_bytes'] / 1e6:.2f} | {r['proof_bytes_without_references'] / 1e6:.1f} | {r['smaller']:.0f}x | "
            f"{max(r['checkpoint_bytes'][1:]) / 1024:.0f} | {r['checkpoint_bound'] / 1024:.0f} | {r['overhead']:.3f}x | "
            f"{r['overhead_without_references']:.3f}x | {r['verify_seconds']:.1f} | {r['verify_over_training']:.2f}x | "
            f"{r['valid']}, {r['bit_exact']} ({r['segments']} segments) |", ""]

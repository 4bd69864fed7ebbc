"""Hugging Face transformers under a proof: initialization as transformers draws it, declared by default and
checked at fit start; a tiny BERT fine-tune (tokenized ``datasets``, AdamW with two groups, warmup) verified
bit for bit."""

from __future__ import annotations

import shutil

import pytest

transformers = pytest.importorskip("transformers")

import torch  # noqa: E402

from lightning_pol import ProofOfLearning, verify_proof  # noqa: E402
from lightning_pol.apps.roots import run as roots_app  # noqa: E402
from lightning_pol.errors import PoLError  # noqa: E402
from lightning_pol.format import layout  # noqa: E402
from lightning_pol.format.writer import rewrite_manifest_json  # noqa: E402
from lightning_pol.format.reader import ProofReader  # noqa: E402
from lightning_pol.init import check_initialization, initialize  # noqa: E402
from lightning_pol.prover.initialization import declare_initialization  # noqa: E402
from tests.conftest import make_trainer, read_proof, train_with_proof  # noqa: E402
from tests.hf_project import SentenceClassesData, TinyBertClassifier  # noqa: E402

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100)


def failed(check) -> list[str]:
    return [layer.name for layer in check.layers if not layer.passed]


def models() -> dict[str, torch.nn.Module]:
    t = transformers
    return {
        "bert-mlm": t.BertForMaskedLM(t.BertConfig(**SMALL)),
        "roberta-mlm": t.RobertaForMaskedLM(t.RobertaConfig(**SMALL, max_position_embeddings=40)),
        "gpt2": t.GPT2LMHeadModel(t.GPT2Config(n_embd=32, n_layer=3, n_head=2, vocab_size=100, n_positions=32, bos_token_id=0, eos_token_id=0)),
        "llama": t.LlamaForCausalLM(t.LlamaConfig(**SMALL, num_key_value_heads=2, max_position_embeddings=32)),
        "distilbert": t.DistilBertForSequenceClassification(t.DistilBertConfig(dim=32, n_layers=1, n_heads=2, hidden_dim=64, vocab_size=100)),
    }


def test_transformers_own_initialization_passes_and_torch_defaults_do_not():
    torch.manual_seed(1)  # under seed 0, llama's first up_proj is one of the 1-in-100 honest draws the test rejects (p = 0.00037)
    for name, model in models().items():
        assert check_initialization(model, "transformers").passed, (name, failed(check_initialization(model, "transformers")))
        assert not check_initialization(model, "pytorch_default").passed, name
        initialize(model, "transformers")  # the strategy's own draw, tied weights drawn once
        assert check_initialization(model, "transformers").passed, name
        initialize(model, "pytorch_default")
        assert not check_initialization(model, "transformers").passed, name


def test_gpt2_residual_projections_are_held_to_their_scaled_std():
    torch.manual_seed(0)
    model = models()["gpt2"]
    with torch.no_grad():  # drawn with the unscaled std, as a generic rule would
        model.transformer.h[0].mlp.c_proj.weight.normal_(0.0, model.config.initializer_range)
    assert failed(check_initialization(model, "transformers")) == ["transformer.h.0.mlp.c_proj.weight"]


def test_one_tensor_off_the_rules_is_named():
    torch.manual_seed(0)
    model = models()["bert-mlm"]
    with torch.no_grad():
        model.cls.predictions.bias.fill_(0.01)  # BERT's LM head bias starts at zero
        model.bert.encoder.layer[1].output.LayerNorm.weight[3] = 1.5
    assert failed(check_initialization(model, "transformers")) == [  # the decoder's bias is the head's, tied
        "bert.encoder.layer.1.output.LayerNorm.weight", "cls.predictions.bias", "cls.predictions.decoder.bias"]


def test_a_declaration_of_other_models_than_the_module_holds_is_refused():
    torch.manual_seed(0)
    module = TinyBertClassifier()
    strategy, params = declare_initialization(module, "auto", {}, check=True)
    assert strategy == "transformers" and params == {"models": {"model.": {"class": "BertForSequenceClassification", "std": 0.02}},
                                                     "rest": "pytorch_default"}
    for lie in ({"model.": {"class": "BertForSequenceClassification", "std": 0.03}},  # another std than the config's
                {"model.bert.": {"class": "BertModel", "std": 0.02}},  # another prefix: the head would go unchecked
                {}):
        with pytest.raises(PoLError, match="transformers models declared"):
            check_initialization(module, "transformers", models=lie)


def test_auto_is_torch_default_for_a_module_without_transformers():
    from lightning_pol.zoo import DigitsCNN

    assert declare_initialization(DigitsCNN(width=4), "auto", {}, check=True) == ("pytorch_default", {})


def test_a_model_whose_own_init_is_not_covered_is_refused_at_fit_start(tmp_path):
    """T5 draws its layers with stds of its own; the generic rules would reject its W_0, so fit does not start."""
    t5 = transformers.T5ForConditionalGeneration(transformers.T5Config(d_model=32, d_ff=64, num_layers=1, num_heads=2, vocab_size=100, d_kv=16))
    with pytest.raises(PoLError, match=r"^W_0 is not a fresh transformers draw, so the verifier would reject this proof \(encoder"):
        declare_initialization(t5, "auto", {}, check=True)


def test_a_tiny_bert_fine_tune_verifies_bit_exact_with_no_strategy_named(tmp_path):
    """Acceptance 1: 2 epochs, AdamW with two groups and linear warmup, dropout on, ``init_strategy`` not given."""
    proof, module, _ = train_with_proof(tmp_path, TinyBertClassifier, SentenceClassesData(), every_n_steps=4, max_epochs=2)
    assert module.model.training and module.model.config.hidden_dropout_prob > 0
    init = ProofReader(proof).manifest.init
    assert init.strategy == "transformers" and init.arguments()["models"] == {"model.": {"class": "BertForSequenceClassification", "std": 0.02}}
    report = verify_proof(proof, q=0)
    assert report.valid, report.reasons
    assert report.checks["initialization"].passed
    assert len(report.segments) == 3 and all(s.bit_exact for s in report.segments)  # 12 steps: 6 a epoch, k = 4


def test_declaring_torch_defaults_for_a_transformer_is_refused_before_anything_is_written(tmp_path):
    torch.manual_seed(0)
    proof = tmp_path / "proof"
    trainer = make_trainer([ProofOfLearning(proof, every_n_steps=4, init_strategy="pytorch_default")], tmp_path, max_epochs=1)
    with pytest.raises(PoLError, match=r"^W_0 is not a fresh pytorch_default draw, so the verifier would reject this proof \(model\.bert\.embeddings"):
        trainer.fit(TinyBertClassifier(), datamodule=SentenceClassesData())
    assert not proof.exists()


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    """Acceptance 2's run: LoRA r = 8 on query and value, the classifier in ``modules_to_save``, the base BERT
    loaded with ``from_pretrained`` from a local directory; ``init_params`` names the weights file alone."""
    from tests.hf_project import LoraBertClassifier, publish_base

    root = tmp_path_factory.mktemp("lora")
    weights = publish_base(str(root / "base"))
    proof, module, _ = train_with_proof(root, lambda: LoraBertClassifier(str(root / "base")), SentenceClassesData(), every_n_steps=4,
                                        max_epochs=2, pol_kwargs={"init_strategy": "pretrained", "init_params": {"weights": weights}})
    return root, weights, proof, module


def test_a_lora_fine_tune_of_a_published_bert_verifies_against_its_root_with_no_key_map(lora, tmp_path):
    _, weights, proof, module = lora
    assert module.model.training and all(m.training for m in module.modules())  # dropout on: the base's and LoRA's
    reader = read_proof(proof, weights)  # W_0's base tensors are references to the root's
    params = reader.manifest.init.arguments()
    assert (params["prefix"], params["peft"], params["fresh"]) == ("model.bert.", ["model."], "transformers")
    w0 = reader.load_checkpoint(reader.checkpoints[0])["model"]
    fresh = sorted(k for k in w0 if k not in params["tensors"])
    assert len(fresh) == 2 * 2 * 2 + 4  # A and B of query and value in 2 layers; the classifier and its trained copy
    assert all(".lora_A." in k or ".lora_B." in k or ".classifier." in k for k in fresh)
    untrusted = verify_proof(proof, q=0, registry=tmp_path / "roots.sqlite")  # the app's exit 1: tests/test_pretrained.py
    assert not untrusted.valid and params["root"]["sha256"] in untrusted.reasons[0]
    published = tmp_path / "published.safetensors"
    shutil.copyfile(weights, published)
    assert roots_app(["add", str(published), "--name", "tiny-bert", "--registry", str(tmp_path / "roots.sqlite")]) == 0
    report = verify_proof(proof, q=0, registry=tmp_path / "roots.sqlite")  # the root's tensors read from where it was added
    assert report.valid, report.reasons
    assert all(s.bit_exact for s in report.segments) and len(report.segments) == 3
    assert "12 fresh from transformers" in report.checks["initialization"].summary
    published.unlink()
    moved = verify_proof(proof, q=0, registry=tmp_path / "roots.sqlite")
    assert not moved.valid and f"the trusted root tiny-bert: cannot read weights file {published}" in moved.reasons[0], moved.reasons


def test_a_lora_checkpoint_holds_what_trains_and_references_the_rest(lora):
    """Acceptance 3: W_0's base tensors are references to the root, and every later checkpoint holds little more than
    the trainable tensors and their Adam moments (the frozen base: references to the root)."""
    _, _, proof, module = lora
    reader = ProofReader(proof)
    trained = 3 * sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)
    sizes = {c.step: reader.manifest.files[c.path].bytes for c in reader.checkpoints}
    assert all(size <= 1.5 * trained + 16 * 1024 for size in sizes.values()), (sizes, trained)
    assert all(reader.manifest.files[c.path].sha256 != c.sha256 for c in reader.checkpoints)  # files with references


LORA_A = "model.model.base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.default.weight"


@pytest.mark.parametrize("lie", ["digest_nothing_holds", "changed_claimed_same", "changed_claimed_same_resealed"])
def test_lying_references_are_rejected(lora, tmp_path, lie):
    """Acceptance 5's reference lies, in the checkpoint of step 8: a root tensor no root holds; a LoRA weight that
    trained, claimed to be its copy of step 4 (the entry's digest kept, or resealed to the state the lie resolves to)."""
    from lightning_pol.format.checkpoint import checkpoint_bytes
    from lightning_pol.format.tensor_refs import tensor_digest
    from tests.conftest import relist

    _, weights, proof, _ = lora
    forged = tmp_path / "forged"
    shutil.copytree(proof, forged)
    reader = read_proof(forged, weights)
    before, entry = reader.checkpoints[1], reader.checkpoints[2]
    state, old = reader.load_checkpoint(entry), reader.load_checkpoint(before)["model"][LORA_A[len("model."):]]
    if lie == "digest_nothing_holds":
        ref = {"__root__": tensor_digest(old)}
    else:
        ref = {"__same__": LORA_A, "step": before.step, "sha256": tensor_digest(old)}
    (forged / entry.path).write_bytes(checkpoint_bytes(state, lambda name, tensor: ref if name == LORA_A else None))
    if lie == "changed_claimed_same_resealed":
        relist(forged, entry.path)  # the entry's digest: the state with step 4's LoRA weight, as a liar would seal it
    else:
        rewrite_manifest_json(forged, lambda m: m["files"].update({entry.path: {
            "sha256": layout.sha256_file(forged / entry.path), "bytes": (forged / entry.path).stat().st_size}}))
    report = verify_proof(forged, q=0, roots=weights)
    assert not report.valid
    want = {"digest_nothing_holds": "refers to a tensor of SHA-256 " + tensor_digest(old) + " that its pretrained root does not hold",
            "changed_claimed_same": "with its references resolved is not the state its checkpoint entry records",
            "changed_claimed_same_resealed": "segment 4->8 does not replay"}[lie]
    assert any(want in r for r in report.reasons), report.reasons


def test_lora_b_not_zero_at_w0_is_refused_at_fit_start(lora, tmp_path):
    from tests.hf_project import LoraBertClassifier

    root, weights, _, _ = lora
    module = LoraBertClassifier(str(root / "base"))
    b = module.model.base_model.model.bert.encoder.layer[1].attention.self.value.lora_B.default.weight
    with torch.no_grad():
        b[0, 0] = 1e-4
    with pytest.raises(PoLError, match=r"lora_B\.default\.weight is not in model\.safetensors and not a fresh transformers draw"):
        declare_initialization(module, "pretrained", {"weights": weights}, check=True)


def test_a_base_tensor_one_value_off_the_root_is_refused_at_fit_start(lora):
    from tests.hf_project import LoraBertClassifier

    root, weights, _, _ = lora
    module = LoraBertClassifier(str(root / "base"))
    with torch.no_grad():
        module.model.base_model.model.bert.encoder.layer[0].attention.self.query.base_layer.weight[2, 3] += 1e-3
    with pytest.raises(PoLError, match=r"base_layer\.weight is not the weights' 'encoder\.layer\.0\.attention\.self\.query\.weight'"):
        declare_initialization(module, "pretrained", {"weights": weights}, check=True)


def test_bf16_mixed_with_gradient_checkpointing_verifies_bit_exact(tmp_path):
    """Acceptance 4: the recomputed forward passes of gradient checkpointing draw dropout again; torch's
    checkpoint restores the RNG for them, and the replay reruns them alike."""
    proof, module, _ = train_with_proof(tmp_path, lambda: TinyBertClassifier(gradient_checkpointing=True), SentenceClassesData(),
                                        every_n_steps=4, max_epochs=2, precision="bf16-mixed")
    assert module.model.bert.gradient_checkpointing
    assert ProofReader(proof).manifest.training["precision"] == "bf16-mixed"
    report = verify_proof(proof, q=0)
    assert report.valid, report.reasons
    assert len(report.segments) == 3 and all(s.bit_exact for s in report.segments)


@pytest.mark.parametrize("lie", ["lora_b_not_zero", "base_one_value_off"])
def test_a_forged_lora_w0_is_rejected(lora, tmp_path, lie):
    """Acceptance 5's first two lies, written into the proof itself (the callback would have refused them)."""
    from tests.conftest import forge_checkpoint

    _, weights, proof, _ = lora
    forged = tmp_path / "forged"
    shutil.copytree(proof, forged)
    prefix = "model.base_model.model.bert.encoder.layer.1.attention.self.value."
    key = prefix + ("lora_B.default.weight" if lie == "lora_b_not_zero" else "base_layer.weight")

    def one_value_off(state: dict) -> None:
        state["model"][key] = state["model"][key].clone()
        state["model"][key][0, 0] += 1e-3

    forge_checkpoint(forged, 0, one_value_off, weights)
    report = verify_proof(forged, q=0, roots=weights)
    assert not report.valid and report.checks["initialization"].passed is False
    want = "fresh tensors do not look drawn" if lie == "lora_b_not_zero" else "is not the root's 'encoder.layer.1.attention.self.value.weight'"
    assert want in report.checks["initialization"].summary, report.checks["initialization"].summary


def test_a_declared_peft_layout_other_than_the_modules_is_rejected(lora, tmp_path):
    from lightning_pol.attacks.toolkit import rewrite_claims

    _, weights, proof, _ = lora
    forged = tmp_path / "forged"
    shutil.copytree(proof, forged)
    rewrite_claims(forged, lambda m: m["init"]["params"].update(peft=["model.", "model.base_model."]))
    report = verify_proof(forged, q=0, roots=weights)
    assert not report.valid and "through PEFT models at ['model.', 'model.base_model.']" in report.checks["initialization"].summary


def test_a_tied_lm_head_the_root_saved_once_is_claimed_from_the_root(tmp_path):
    """GPT-2's ``lm_head.weight`` is its ``wte.weight``, which ``save_pretrained`` writes once: W_0's head is the
    root's all the same, claimed with that tensor's digest, not KS-tested as a fresh draw (the verifier's side:
    the LoRA row of the quick benchmarks, tests/test_benchmarks.py, verifies such a proof)."""
    from safetensors.torch import load_file

    from benchmarks.lora import LoraGpt2, publish_gpt2
    from lightning_pol.prover.pretrained import pretrained_declaration

    weights, _ = publish_gpt2(tmp_path / "gpt2", quick=True)
    assert "lm_head.weight" not in load_file(weights)
    params = pretrained_declaration(LoraGpt2(str(tmp_path / "gpt2")), {"weights": weights})
    tensors = params["tensors"]
    assert tensors["model.base_model.model.lm_head.weight"] == tensors["model.base_model.model.transformer.wte.weight"]

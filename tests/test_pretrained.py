"""Fine-tuning from published weights: trusted roots, a partly fresh W_0, and what the verifier rejects.

The "published" weights are written here (no download): a digits CNN trained without a proof, saved as
safetensors, and a torchvision ResNet-18 state_dict saved as ``.pth``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torchvision
from safetensors.torch import load_file, save_file

from lightning_pol import ProofOfLearning, ProofReader
from lightning_pol.errors import PoLError
from lightning_pol.format.pretrained import tensor_digest
from lightning_pol.format.writer import rewrite_manifest_json
from lightning_pol.init import start_from
from lightning_pol.verification.verifier import verify_proof
from lightning_pol.zoo.classification import ClassificationSteps
from lightning_pol.zoo.digits_cnn import DigitsCNN
from lightning_pol.zoo.digits_data import DigitsDataModule
from tests.conftest import forge_checkpoint, make_trainer, pickle_bomb, read_proof

REPO = Path(__file__).resolve().parents[1]


def app(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"lightning_pol.{name}", *args], capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


class ResNetDigits(ClassificationSteps):
    """torchvision's ResNet-18 with a 10-class head, on the 8x8 digits (grey repeated to 3 channels)."""

    def __init__(self, lr: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torchvision.models.resnet18(weights=None, num_classes=10)
        from torchmetrics.classification import MulticlassAccuracy

        self.val_acc = MulticlassAccuracy(num_classes=10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.expand(-1, 3, -1, -1))

    def configure_optimizers(self):  # type: ignore[override]
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


def fine_tune(root: Path, model: pl.LightningModule, weights: Path, prefix: str = "", redraw: tuple[str, ...] = ("head.2.",),
              **trainer) -> Path:
    pol = ProofOfLearning(root / "proof", every_n_steps=4, init_strategy="pretrained",
                          init_params={"weights": str(weights), "prefix": prefix, "redraw": list(redraw)})
    make_trainer([pol], root, **{"max_epochs": 2, "limit_train_batches": 8, **trainer}).fit(model, DigitsDataModule(num_workers=0))
    return root / "proof"


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A digits CNN trained without a proof and published; then fine-tuned with a fresh final layer."""
    root = tmp_path_factory.mktemp("pretrained")
    pl.seed_everything(0, verbose=False)
    published = DigitsCNN(width=16)
    make_trainer([], root / "plain", max_epochs=1, limit_train_batches=20).fit(published, DigitsDataModule(num_workers=0))
    weights = root / "published.safetensors"
    save_file({k: v.contiguous() for k, v in published.state_dict().items()}, weights)
    pl.seed_everything(1, verbose=False)
    model = DigitsCNN(width=16)
    model.load_state_dict({k: v for k, v in published.state_dict().items() if not k.startswith("head.2.")}, strict=False)
    return root, weights, fine_tune(root / "tuned", model, weights)


def test_a_fine_tuned_digits_cnn_verifies_with_its_root_trusted_and_not_without(digits, tmp_path):
    _, weights, proof = digits
    params = ProofReader(proof).manifest.init.arguments()
    reader = read_proof(proof, weights)  # W_0's backbone: references to the root's tensors
    assert sorted(k for k in reader.load_checkpoint(reader.checkpoints[0])["model"] if k not in params["tensors"]) \
        == ["head.2.bias", "head.2.weight"]  # the fresh head; everything else is the root's
    registry = tmp_path / "roots.sqlite"
    untrusted = verify_proof(proof, q=0, registry=registry)
    assert not untrusted.valid and params["root"]["sha256"] in untrusted.summary()
    added = app("roots", "add", str(weights), "--name", "digits-v1", "--registry", str(registry))
    assert added.returncode == 0 and "trusted root digits-v1" in added.stdout
    assert "digits-v1" in app("roots", "list", "--registry", str(registry)).stdout
    trusted = app("verify", f"proof_dir={proof}", "verifier.q=0", f"registry={registry}", f"report={tmp_path / 'r2.json'}")
    assert trusted.returncode == 0, trusted.stdout[-2000:] + trusted.stderr[-2000:]
    report = json.loads((tmp_path / "r2.json").read_text())
    assert report["valid"] and report["segments"] and all(s["bit_exact"] for s in report["segments"])
    assert report["checks"]["chain"]["proofs"][-1].startswith("root:digits-v1:") and report["checks"]["chain"]["vsr"] == 1.0
    assert app("roots", "remove", "digits-v1", "--registry", str(registry)).returncode == 0
    assert not verify_proof(proof, q=0, registry=registry).valid


def test_a_torchvision_resnet_from_a_pth_under_a_prefix_verifies(tmp_path):
    pl.seed_everything(2, verbose=False)
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)  # 1000 classes: the head is new
    model = start_from(ResNetDigits(), str(weights), prefix="net.")
    proof = fine_tune(tmp_path, model, weights, prefix="net.", redraw=(), max_epochs=1)
    params = ProofReader(proof).manifest.init.arguments()
    assert "net.conv1.weight" in params["tensors"] and "net.fc.weight" not in params["tensors"]
    report = verify_proof(proof, q=0, roots=weights)
    assert report.valid and all(s.bit_exact for s in report.segments), report.reasons
    assert report.checks["initialization"].root["fresh_tensors"] == 2


def test_a_pth_holding_a_pickled_callable_is_refused_as_a_root_and_runs_nothing(tmp_path):
    canary = tmp_path / "canary"
    evil = tmp_path / "published.pth"
    evil.write_bytes(pickle_bomb(canary))
    done = app("roots", "add", str(evil), "--name", "evil", "--registry", str(tmp_path / "roots.sqlite"))
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1 and "weights_only" in errors[0], done.stderr[-2000:]
    assert not canary.exists()


def test_w0_neither_the_roots_nor_fresh_is_refused_at_fit_start(digits, tmp_path):
    _, weights, _ = digits
    published = DigitsCNN(width=16)
    published.load_state_dict(dict(zip(*_file(weights))))
    changed = DigitsCNN(width=16)
    changed.load_state_dict({k: v for k, v in published.state_dict().items() if not k.startswith("head.2.")}, strict=False)
    with torch.no_grad():
        changed.features[0].weight[0, 0, 0, 0] += 1e-3
    with pytest.raises(PoLError, match=r"W_0's features.0.weight is not the weights' 'features.0.weight', which has its shape"):
        fine_tune(tmp_path / "a", changed, weights)
    scaled = DigitsCNN(width=16)
    scaled.load_state_dict({k: v for k, v in published.state_dict().items() if not k.startswith("head.2.")}, strict=False)
    with torch.no_grad():
        scaled.head[2].weight.mul_(1.5)
    with pytest.raises(PoLError, match=r"W_0's head.2.weight is not in published.safetensors and not a fresh pytorch_default draw"):
        fine_tune(tmp_path / "b", scaled, weights)
    assert not (tmp_path / "a" / "proof").exists() and not (tmp_path / "b" / "proof").exists()


def _file(weights: Path) -> tuple[list[str], list[torch.Tensor]]:
    from lightning_pol.format.pretrained import read_weights

    tensors = read_weights(weights)[1]
    return list(tensors), list(tensors.values())


def _forge_w0(proof: Path, edit, claims: str, roots: Path) -> None:
    """Rewrite W_0 (a prover controls every file; its references resolved through ``roots``). ``claims``: the manifest's
    claimed digests ``resealed`` to the forged tensors, ``left`` at the root's, or with ``features.0.weight`` ``dropped``
    (claimed fresh)."""
    model: dict = {}
    entry = forge_checkpoint(proof, 0, lambda state: (edit(state["model"]), model.update(state["model"])), roots)

    def claim(m: dict) -> None:
        tensors = m["init"]["params"]["tensors"]
        if claims == "dropped":
            del tensors["features.0.weight"]
        for key in tensors if claims == "resealed" else ():
            tensors[key] = tensor_digest(model[key])

    rewrite_manifest_json(proof, claim)
    from tests.conftest import relist

    relist(proof, entry.path)


def _fresh_draw(model: dict) -> None:
    """``features.0.weight`` as a fresh pytorch_default draw (a network built anew), not the root's."""
    with torch.random.fork_rng():
        torch.manual_seed(7)
        model["features.0.weight"] = DigitsCNN(width=16).features[0].weight.detach().clone()


FORGERIES = {  # (the edit of W_0's model, what the claims say, the initialization check's summary)
    # The claims resealed to the forged tensor: the claim is not the root's.
    "backbone_value": (lambda model: model["features.0.weight"][0, 0, 0, 0].add_(1e-3), "resealed",
                       "W_0's features.0.weight is not the root's 'features.0.weight' (published.safetensors) bit for bit"),
    # The claims left at the root's digests: the tensor is not the one it claims to be.
    "backbone_value_claims_left": (lambda model: model["features.0.weight"][0, 0, 0, 0].add_(1e-3), "left",
                                   "W_0's features.0.weight is not the root's 'features.0.weight' (published.safetensors) bit for bit"),
    # The claim dropped and a fresh draw there: a tensor of the root's layout is the root's unless declared redrawn.
    "backbone_redrawn_undeclared": (_fresh_draw, "dropped",
                                    "W_0's features.0.weight is not the root's 'features.0.weight' (published.safetensors), "
                                    "which has its shape, and a root's tensor is never fresh"),
    "head_scale": (lambda model: model["head.2.weight"].mul_(1.5), "resealed",
                   "W_0's fresh tensors do not look drawn from pytorch_default: ['head.2.weight']"),
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_a_forged_w0_is_rejected_by_the_initialization_check(digits, tmp_path, forgery):
    import shutil

    _, weights, honest = digits
    proof = tmp_path / "proof"
    shutil.copytree(honest, proof)
    edit, claims, expected = FORGERIES[forgery]
    _forge_w0(proof, edit, claims, weights)
    report = verify_proof(proof, q=0, roots=weights)
    init = report.checks["initialization"]
    assert not report.valid and init.passed is False and expected in init.summary, init.summary


def test_the_train_app_starts_from_published_weights_with_init_pretrained(digits, tmp_path):
    """``init=pretrained``: the app loads the weights (a new head redrawn), the proof declares it, and it verifies."""
    _, weights, _ = digits
    run = tmp_path / "run"
    done = app("train", "init=pretrained", f"init.params.weights={weights}", "init.params.redraw=[head.2.]", "model.width=16",
               "trainer.max_epochs=1", "+trainer.limit_train_batches=8", "pol.every_n_steps=4", f"hydra.run.dir={run}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    proof = next(run.rglob("manifest.json")).parent
    assert ProofReader(proof).manifest.init.arguments()["redraw"] == ["head.2."]
    report = verify_proof(proof, q=0, roots=weights)
    assert report.valid and all(s.bit_exact for s in report.segments), report.reasons


def test_the_reproducibility_study_reads_the_root_a_pretrained_proof_references(digits):
    """``reproduce`` measures its own proof: a pretrained one references its root, which the study reads."""
    from lightning_pol import ProofFormatError
    from lightning_pol.verification.reproducibility import reproduction_errors

    _, weights, proof = digits
    with pytest.raises(ProofFormatError, match="that this verifier does not trust"):
        reproduction_errors(proof, [4], max_segments=1)
    assert set(reproduction_errors(proof, [4], max_segments=1, roots=weights)) == {4}


def test_export_of_a_frozen_backbone_fine_tune_reads_the_root_it_is_given(digits, tmp_path):
    """The frozen tensors are references to the root in every checkpoint: the export needs the root, and says so."""
    from lightning_pol.apps.export import run as export

    root, weights, _ = digits
    pl.seed_everything(1, verbose=False)
    model = DigitsCNN(width=16)
    model.load_state_dict({k: v for k, v in load_file(weights).items() if not k.startswith("head.2.")}, strict=False)
    model.features.requires_grad_(False)
    proof = fine_tune(tmp_path, model, weights, max_epochs=1)
    with pytest.raises(PoLError, match="which this reader was not given .* --roots FILE"):
        export([str(proof), "--out", str(tmp_path / "model.safetensors")])
    assert not (tmp_path / "model.safetensors").exists()
    assert export([str(proof), "--out", str(tmp_path / "model.safetensors"), "--roots", str(weights)]) == 0
    exported, published = load_file(tmp_path / "model.safetensors"), load_file(weights)
    frozen = [f"features.{k}" for k, _ in model.features.named_parameters()]  # (its batch-norm statistics still move)
    assert frozen and all(torch.equal(exported[k], published[k]) for k in frozen)
    assert all(torch.equal(exported[k], v) for k, v in model.state_dict().items())

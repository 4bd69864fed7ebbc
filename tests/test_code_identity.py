"""Code identity (issue 21): a proof records the files of the classes it names; the verifier checks what it would run.

A project package written per test (``codeproj``: a module subclassing the zoo's digits CNN, a helper it imports,
a package ``__init__``) stands for the user's own source tree. The hydra-template project's run (train, change
one line, verify from the command line) is in tests/test_projects.py.
"""

from __future__ import annotations

import hashlib
import importlib
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest

from lightning_pol import ProofReader, verify_proof
from lightning_pol.errors import PoLError
from lightning_pol.format.code_identity import canonical_bytes
from lightning_pol.format.strict_json import ProofFormatError
from lightning_pol.format.writer import ProofDirectoryError, rewrite_manifest_json
from lightning_pol.verification.code_check import pin
from lightning_pol.zoo import DigitsDataModule
from tests.conftest import make_trainer

PACKAGE = "codeproj"
MODEL = '''"""A project's module."""

from codeproj.helpers import WIDTH
from lightning_pol.zoo.digits_cnn import DigitsCNN


class Model(DigitsCNN):
    """The project's digits CNN."""

    default_width = WIDTH
'''


def write_project(root: Path) -> Path:
    package = root / PACKAGE
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('"""The project."""\n')
    (package / "helpers.py").write_text("WIDTH = 4  # the model's width\n")
    (package / "model.py").write_text(MODEL)
    (package / "unused.py").write_text("X = 1\n")  # imported by nothing: not part of the identity
    return package


@pytest.fixture
def project(tmp_path, monkeypatch):
    """``codeproj`` on the import path, forgotten again afterwards."""
    site = tmp_path / "site"
    package = write_project(site)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    yield package
    for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
        del sys.modules[name]


def train(root: Path, **trainer: object) -> Path:
    pl.seed_everything(0, verbose=False)
    from codeproj.model import Model

    from lightning_pol import ProofOfLearning

    callbacks = [ProofOfLearning(root / "proof", every_n_steps=4, fsync=False), *trainer.pop("extra", [])]  # type: ignore[misc]
    make_trainer(callbacks, root, limit_train_batches=10, limit_val_batches=0, **trainer).fit(
        Model(width=4), datamodule=DigitsDataModule(batch_size=64))
    return root / "proof"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_proof_records_the_files_of_every_class_it_names(project, tmp_path):
    proof = train(tmp_path)
    code = ProofReader(proof).code
    assert code is not None
    module = code.classes["codeproj.model:Model"]
    assert (module.file, module.sha256, module.distribution) == ("codeproj/model.py", sha(project / "model.py"), None)
    assert code.imports == {"codeproj/__init__.py": sha(project / "__init__.py"), "codeproj/helpers.py": sha(project / "helpers.py")}
    sgd = code.classes["torch.optim.sgd:SGD"]
    assert (sgd.file, sgd.distribution) == ("torch/optim/sgd.py", "torch")
    data = code.classes["lightning_pol.zoo.digits_data:DigitsDataModule"]
    assert (data.file, data.distribution) == ("lightning_pol/zoo/digits_data.py", "lightning-pol")
    named = set(code.classes)
    assert {"torch.optim.lr_scheduler:CosineAnnealingLR", "lightning_pol.zoo.digits_data:DigitsDataset",
            "torch.utils.data.sampler:RandomSampler"} <= named  # the scheduler, the dataset and the sampler
    assert code.digest == hashlib.sha256(canonical_bytes(code.to_json())).hexdigest()
    report = verify_proof(proof, q=0)
    assert report.valid and report.checks["code"].passed and report.checks["code"].recorded == code.digest
    assert report.checks["chain"].codes == [code.digest]


def test_a_changed_line_rejects_under_match_and_is_reported_under_report(project, tmp_path):
    proof = train(tmp_path)
    helpers = project / "helpers.py"
    helpers.write_text(helpers.read_text().replace("# the model's width", "# the width of the model"))
    matched = verify_proof(proof, q=0)
    code = matched.checks["code"]
    assert not matched.valid and code.passed is False and code.differences == ["codeproj/helpers.py"]
    assert "codeproj/helpers.py" in matched.reasons[0] and "verifier.code=report" in matched.reasons[0]
    assert "replay" not in matched.checks and matched.segments == []  # rejected before anything is imported or replayed
    reported = verify_proof(proof, q=0, code="report")
    assert reported.valid and reported.checks["code"].passed is None, reported.reasons
    assert all(s.bit_exact for s in reported.segments) and any("codeproj/helpers.py" in n for n in reported.notes)


def test_pinned_accepts_only_reviewed_files(project, tmp_path):
    proof = train(tmp_path)
    trusted = tmp_path / "trusted_code.json"
    added = pin([proof], trusted)
    assert "codeproj/model.py" in added and "torch/optim/sgd.py" in added
    assert verify_proof(proof, q=0, code="pinned", trusted_code=trusted).valid
    other = tmp_path / "other.json"
    other.write_text(trusted.read_text().replace(sha(project / "model.py"), "0" * 64))
    report = verify_proof(proof, q=0, code="pinned", trusted_code=other)
    assert not report.valid and report.checks["code"].untrusted == ["codeproj/model.py"]
    with pytest.raises(PoLError, match="needs verifier.trusted_code"):
        verify_proof(proof, code="pinned")
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(PoLError, match="is not a trusted-code file"):
        verify_proof(proof, code="pinned", trusted_code=tmp_path / "bad.json")


def test_a_code_identity_that_lies_is_refused(project, tmp_path):
    proof = train(tmp_path)

    def edit(m):
        m["code"]["classes"].pop("codeproj.model:Model")  # the module's file left out, the digest not resealed

    rewrite_manifest_json(proof, edit)
    with pytest.raises(ProofFormatError, match="code.digest is not the digest"):
        ProofReader(proof)

    def reseal(m):
        m["code"]["digest"] = hashlib.sha256(canonical_bytes({k: m["code"][k] for k in ("classes", "imports")})).hexdigest()

    rewrite_manifest_json(proof, reseal)
    report = verify_proof(proof, q=0)
    assert not report.valid and "does not name the classes the proof names (codeproj.model:Model)" in report.reasons[0]


def test_a_project_not_installed_here_is_exit_2_before_anything_is_imported(project, tmp_path, monkeypatch):
    proof = train(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(project.parent)])
    for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
        monkeypatch.delitem(sys.modules, name)
    importlib.invalidate_caches()
    with pytest.raises(PoLError, match=r"cannot import the proof's class 'codeproj.model:Model' \(no module file for it here"):
        verify_proof(proof, q=0)
    assert PACKAGE not in sys.modules


def test_a_proof_without_a_code_identity(project, tmp_path):
    proof = train(tmp_path)
    rewrite_manifest_json(proof, lambda m: m.pop("code"))
    assert ProofReader(proof).code is None
    report = verify_proof(proof, q=0)
    assert not report.valid and "records no code identity" in report.reasons[0]
    assert verify_proof(proof, q=0, code="report").valid


def test_resuming_with_other_code_is_refused(project, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    checkpoints = tmp_path / "ckpt"
    proof = train(tmp_path, extra=[ModelCheckpoint(checkpoints, save_last=True)], enable_checkpointing=True)
    manifest = (proof / "manifest.json").read_bytes()
    (project / "helpers.py").write_text("WIDTH = 4  # changed after the first fit\n")
    from codeproj.model import Model

    from lightning_pol import ProofOfLearning

    trainer = make_trainer([ProofOfLearning(proof, every_n_steps=4, fsync=False)], tmp_path, max_epochs=2,
                           limit_train_batches=10, limit_val_batches=0)
    with pytest.raises(ProofDirectoryError, match=r"cannot resume: the code differs .*codeproj/helpers.py"):
        trainer.fit(Model(width=4), datamodule=DigitsDataModule(batch_size=64), ckpt_path=str(checkpoints / "last.ckpt"))
    assert (proof / "manifest.json").read_bytes() == manifest  # nothing written


def test_an_import_the_proof_leaves_out_is_a_difference(project, tmp_path):
    """A code identity resealed without one of the project's imports: the file is code training did not declare."""
    proof = train(tmp_path)

    def leave_out(m):
        m["code"]["imports"].pop("codeproj/helpers.py")
        m["code"]["digest"] = hashlib.sha256(canonical_bytes({k: m["code"][k] for k in ("classes", "imports")})).hexdigest()

    rewrite_manifest_json(proof, leave_out)
    report = verify_proof(proof, q=0)
    code = report.checks["code"]
    assert not report.valid and code.passed is False and code.differences == ["codeproj/helpers.py (not imported in training)"]
    assert "replay" not in report.checks  # rejected before anything of it runs


def test_a_changed_line_in_a_replayed_callbacks_file_is_exit_1_under_match(tmp_path):
    """The template project's own gradient-scaling callback, replayed from its Hydra config: its file is code the
    replay runs. A changed comment replays bit for bit, so only the code check can tell."""
    from tests.test_projects import train_template, verify

    project, proof, _ = train_template(tmp_path, "+trainer.limit_train_batches=4", "+trainer.limit_val_batches=1",
                                       "+trainer.limit_test_batches=1", callbacks="[with_pol,scale_gradients]")
    source = project / "src" / "callbacks" / "scale_gradients.py"
    source.write_text(source.read_text().replace("(a hand-rolled gradient scaling)", "(gradient scaling by hand)"))
    code, report, out = verify(proof, project, "verifier.q=0")
    assert code == 1 and report is not None and report["checks"]["code"]["differences"] == ["src/callbacks/scale_gradients.py"], out[-3000:]
    assert report["segments"] == []  # rejected before anything of it runs
    assert ProofReader(proof).code.classes["src.callbacks.scale_gradients:ScaleGradients"].file == "src/callbacks/scale_gradients.py"


@pytest.mark.parametrize("path", ["torch.optim.Adam", "torch.optim:Adam"])
def test_a_reexported_class_is_identified_by_the_file_that_defines_it(path):
    """``torch.optim.Adam`` (a Hydra ``_target_``) is bound in ``torch/optim/__init__.py`` by ``from .adam import Adam``."""
    from lightning_pol.runtime.installed_code import installed_code

    adam = Path(importlib.import_module("torch.optim.adam").__file__)  # torch.optim deletes the name of the submodule
    source = installed_code([path]).classes[path]
    assert (source.file, source.sha256) == ("torch/optim/adam.py", sha(adam))
    assert source.distribution == "torch"


@pytest.mark.parametrize("path", ["lightning.pytorch.callbacks:ModelCheckpoint", "torchvision.datasets:FakeData",
                                  "omegaconf:DictConfig", "hydra.utils:instantiate", "torch.optim:SGD"])
def test_an_installed_class_names_the_distribution_that_installed_it(path):
    """Asked first by the package's own name (``lightning``: its top_level.txt; ``torch``: its file list), else by the
    scan of every distribution (``hydra``, installed by ``hydra-core``): the answer is importlib.metadata's."""
    import importlib.metadata

    from lightning_pol.runtime.installed_code import installed_code

    top = path.split(".")[0].split(":")[0]
    name = importlib.metadata.packages_distributions()[top][0]
    source = installed_code([path]).classes[path]
    assert (source.distribution, source.version) == (name, importlib.metadata.version(name))

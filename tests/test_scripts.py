"""Projects that are one training script (issue 35): classes defined in the script that was run, DataLoaders
handed to ``trainer.fit``, verified from the project root.

``tests/projects/single_script`` holds two scripts written the way Lightning's own examples are:
``language_model.py`` (transformer.py's shape: the module in the script, ``random_split`` after
``seed_everything``, DataLoaders handed to ``fit``: the proof's ``fit`` recipe) and ``image_classifier.py``
(backbone_image_classifier.py's shape: LightningCLI with ``run=False``, module and datamodule in the script, fit
then test and predict: the ``classes`` recipe). Lightning's own example, unmodified, is run by
``python -m tools.lightning_examples`` (it needs a checkout of Lightning, which CI does not have).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from lightning_pol.format.classes import NotRecreatableError
from lightning_pol.format.reader import ProofReader
from lightning_pol.format.strict_json import ProofFormatError
from lightning_pol.format.writer import rewrite_manifest_json
from lightning_pol.verification.settings import VerifierSettings
from lightning_pol.verification.verifier import verify_proof
from tests.projects.runner import copy_project, run_project

def verify_cli(project: Path, *options: str) -> tuple[int, dict | None, str]:
    """``python -m lightning_pol.verify proof_dir=proof verifier.q=0`` in ``project``, as the issue's user runs it."""
    report = project / "verification.json"
    report.unlink(missing_ok=True)
    r = run_project(["-m", "lightning_pol.verify", "proof_dir=proof", "verifier.q=0", f"report={report}",
                     f"hydra.run.dir={project / 'outputs' / 'verify'}", *options], cwd=project)
    return r.returncode, json.loads(report.read_text()) if report.exists() else None, r.stdout + r.stderr


def bit_exact(report: dict) -> bool:
    return report["valid"] and bool(report["segments"]) and all(s["bit_exact"] for s in report["segments"])


@pytest.fixture(scope="module")
def language_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python language_model.py`` in a copy of the project: 2 epochs of 7 steps, a checkpoint every 5 steps."""
    project = copy_project("single_script", tmp_path_factory.mktemp("lm"))
    r = run_project(["language_model.py"], cwd=project)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return project


def test_dataloaders_handed_to_fit_verify_bit_exact(language_model: Path) -> None:
    """Acceptance 2: the module defined in the script, random_split after seed_everything, DataLoaders handed to fit."""
    manifest = ProofReader(language_model / "proof").manifest
    assert manifest.script is not None and manifest.script.to_json() == {"path": "language_model.py", "module": None, "argv": [],
                                                                           "recipe": "fit"}
    assert manifest.module.import_path == "__main__:LanguageModel" and manifest.module.instantiator == "script"
    assert manifest.datamodule is None
    assert manifest.code is not None and manifest.code.classes["__main__:LanguageModel"].file == "language_model.py"
    assert "corpus.py" in manifest.code.imports  # the script's neighbour, which it imports
    rc, report, out = verify_cli(language_model)
    assert rc == 0 and report is not None and bit_exact(report), out[-3000:]
    assert {s["epoch"] for s in report["segments"]} == {0, 1}  # a segment runs across the epoch boundary (step 7)
    assert report["checks"]["data"]["passed"]


def test_script_changed_by_one_line_is_rejected_naming_it(language_model: Path, tmp_path: Path) -> None:
    """Acceptance 3: one line of the script (or of the module it imports) changed after training: rejected under
    verifier.code=match, the file named; the replay never runs."""
    for changed in ("language_model.py", "corpus.py"):
        project = shutil.copytree(language_model, tmp_path / changed, ignore=shutil.ignore_patterns("outputs"))
        source = (project / changed).read_text()
        edited = source.replace("lr=0.1", "lr=0.1 * 1.0") if changed == "language_model.py" else source.replace("block: int = 8", "block: int = 8 + 0")
        assert edited != source
        (project / changed).write_text(edited)
        report = verify_proof(project / "proof", VerifierSettings(q=0, project_root=project))
        assert not report.valid and report.checks["code"].passed is False
        assert changed in report.checks["code"].summary and not report.segments
    rc, report, out = verify_cli(tmp_path / "language_model.py")  # the same from the command line: exit 1, the script named
    assert rc == 1 and report is not None and any("language_model.py" in r for r in report["reasons"]), out[-2000:]


def test_project_root_says_where_the_script_is(language_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Verified from elsewhere, the script is not found: one line that names project_root=; with it, valid."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NotRecreatableError, match=r"the training script language_model.py is not in the project root .*project_root=DIR"):
        verify_proof(language_model / "proof", VerifierSettings(q=0))
    report = verify_proof(language_model / "proof", VerifierSettings(q=1, random=0, project_root=language_model))
    assert report.valid and all(s.bit_exact for s in report.segments)


def test_a_split_seeded_by_the_clock_is_refused_at_fit_start(tmp_path: Path) -> None:
    """Acceptance 4: data that depends on the time of day is refused when fit starts, in one line; no proof written."""
    project = copy_project("single_script", tmp_path)
    script = project / "language_model.py"
    source = script.read_text()
    clocked = source.replace("random_split(dataset, [n - 20, 10, 10])",
                             "random_split(dataset, [n - 20, 10, 10], generator=torch.Generator().manual_seed(__import__('time').time_ns()))")
    assert clocked != source
    script.write_text(clocked)
    r = run_project(["language_model.py"], cwd=project)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert "NotRecreatableError: language_model.py run again to trainer.fit yields other training data" in last, r.stderr[-3000:]
    assert "seed it" in last
    assert not (project / "proof").exists()


def test_classes_defined_in_a_lightning_cli_script_verify_bit_exact(tmp_path: Path) -> None:
    """Acceptance 1's shape, on digits: LightningCLI(run=False) with module and datamodule in the script, the callback
    on the command line, fit then test and predict; the verifier loads the script's classes without running its
    ``__main__`` block."""
    project = copy_project("single_script", tmp_path)
    r = run_project(["image_classifier.py", "--trainer.max_epochs=2", "--trainer.callbacks+=lightning_pol.ProofOfLearning",
                     "--trainer.callbacks.dirpath=proof", "--trainer.callbacks.every_n_steps=5", "--trainer.limit_train_batches=12",
                     "--trainer.limit_val_batches=2", "--trainer.limit_test_batches=2", "--trainer.limit_predict_batches=1"], cwd=project)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    manifest = ProofReader(project / "proof").manifest
    assert manifest.script is not None and manifest.script.recipe == "classes" and manifest.script.path == "image_classifier.py"
    assert manifest.script.argv[1:4] == ("--trainer.callbacks+=lightning_pol.ProofOfLearning", "--trainer.callbacks.dirpath=proof",
                                         "--trainer.callbacks.every_n_steps=5")
    assert (manifest.module.import_path, manifest.module.instantiator) == ("__main__:LitClassifier", "lightning_cli")
    assert manifest.datamodule is not None and manifest.datamodule.import_path == "__main__:MyDataModule"
    rc, report, out = verify_cli(project)
    assert rc == 0 and report is not None and bit_exact(report), out[-3000:]
    assert len(report["segments"]) == 5
    assert (project / "main_runs.txt").read_text() == "main\n"  # training ran the __main__ block; the verifier did not


def test_hostile_script_records_are_refused(language_model: Path, tmp_path: Path) -> None:
    """The script a proof names is the project's, under its root; its recorded arguments may not name other code."""
    project = shutil.copytree(language_model, tmp_path / "p", ignore=shutil.ignore_patterns("outputs"))
    proof = project / "proof"

    def edit(key: str, value: object) -> None:
        rewrite_manifest_json(proof, lambda m: m["script"].__setitem__(key, value))

    original = json.loads((proof / "manifest.json").read_text())["script"]
    for bad in ("../language_model.py", "/etc/passwd.py", "sub/../language_model.py", "./language_model.py", "language_model.txt"):
        edit("path", bad)
        with pytest.raises(ProofFormatError, match="script.path must be a .py file relative to the project root, inside it"):
            ProofReader(proof)
    (tmp_path / "outside.py").write_text((project / "language_model.py").read_text())
    (project / "link.py").symlink_to(tmp_path / "outside.py")
    edit("path", "link.py")
    with pytest.raises(NotRecreatableError, match="is not in the project root .* [(]it leads outside it[)]"):
        verify_proof(proof, VerifierSettings(q=0, project_root=project))
    edit("path", original["path"])
    edit("module", "proof.evil")  # python -m must name the script's own file
    with pytest.raises(ProofFormatError, match="script.module must be null or the dotted module name of script.path"):
        ProofReader(proof)
    (proof / "evil.py").write_text("raise SystemExit('ran from the proof')\n")
    for module in ("proof.evil", None):  # a script the proof ships, run with python -m or as a file
        edit("module", module)
        edit("path", "proof/evil.py")
        with pytest.raises(NotRecreatableError, match="inside the proof directory"):
            verify_proof(proof, VerifierSettings(q=0, project_root=project))
    edit("path", original["path"])
    (proof / "c.yaml").write_text("model:\n  class_path: subprocess.Popen\n")
    (project / "c.yaml").write_text("trainer:\n  callbacks:\n    - class_path: os.system\n")
    for argv, refusal in ((["--trainer.callbacks+=subprocess.Popen"], r"argument 0 'subprocess.Popen' names code that builds no"),
                          (["model._target_=subprocess.Popen"], r"argument 0 'subprocess.Popen' names code"),
                          (["--model={class_path: builtins.exec}"], r"argument 0.class_path 'builtins.exec' names code"),
                          (["--config", "proof/c.yaml"], r"argument 1 names a config inside the proof directory"),
                          (["-c", "c.yaml"], r"argument 1 \(c.yaml\)\.trainer.callbacks\[0\]\.class_path 'os.system' names code")):
        edit("argv", argv)
        with pytest.raises(NotRecreatableError, match=refusal):
            verify_proof(proof, VerifierSettings(q=0, project_root=project))


def test_a_package_module_that_trains_when_imported_verifies_bit_exact(tmp_path: Path) -> None:
    """``python -m apps.classify``, whose LightningCLI call sits at its top level (no ``__main__`` guard): loaded for
    its classes it would train, so the proof takes the ``fit`` recipe, and the datamodule it hands to fit; the
    package's ``__init__.py`` is in the code identity."""
    project = copy_project("single_script", tmp_path)
    (project / "apps").mkdir()
    (project / "apps" / "__init__.py").write_text("")
    source = (project / "image_classifier.py").read_text()
    unguarded = source.replace('if __name__ == "__main__":\n    cli_main()', "cli_main()")
    assert unguarded != source
    (project / "apps" / "classify.py").write_text(unguarded)
    r = run_project(["-m", "apps.classify", "--trainer.max_epochs=2", "--trainer.callbacks+=lightning_pol.ProofOfLearning",
                     "--trainer.callbacks.dirpath=proof", "--trainer.callbacks.every_n_steps=5", "--trainer.limit_train_batches=6",
                     "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1", "--trainer.limit_predict_batches=1"], cwd=project)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    manifest = ProofReader(project / "proof").manifest
    assert manifest.script is not None and (manifest.script.path, manifest.script.module, manifest.script.recipe) == (
        "apps/classify.py", "apps.classify", "fit")
    assert manifest.module.instantiator == "script" and manifest.datamodule is None
    assert manifest.code is not None and "apps/__init__.py" in manifest.code.imports
    rc, report, out = verify_cli(project)
    assert rc == 0 and report is not None and bit_exact(report), out[-3000:]
    # the script ran three times: training, the callback's rehearsal at fit start, and the verifier's run to fit
    assert (project / "apps" / "main_runs.txt").read_text() == "main\n" * 3


SCRIPT = '''
import os, sys
import torch
import lightning.pytorch as pl
from torch.utils.data import DataLoader, TensorDataset
import neighbour

SEEN = {"argv": sys.argv[1:], "cwd": os.getcwd(), "seed_env": os.environ.get("PL_GLOBAL_SEED"), "imports": neighbour.IMPORTS}


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)


def main():
    os.chdir("/")  # the run's working directory is put back
    trainer = pl.Trainer(accelerator="gpu", devices=2, strategy="ddp", precision="16-mixed", logger=False)
    trainer.fit(Tiny(), DataLoader(TensorDataset(torch.zeros(4, 2)), batch_size=2))
    raise SystemExit("past fit")


if __name__ == "__main__":
    main()
'''


def test_a_script_runs_again_as_it_was_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run to fit, and loaded for its classes, a script sees its recorded arguments, the project root as its working
    directory, its neighbours imported afresh and no PL_GLOBAL_SEED of this process's; it builds its Trainer on the
    CPU (a GPU trainer here has none), stops at fit, and this process gets everything back."""
    from lightning_pol.format.script_record import ScriptRecord
    from lightning_pol.runtime.training_script import TrainingScript

    root = tmp_path / "project"
    (root / "scripts").mkdir(parents=True)
    (root / "scripts" / "train.py").write_text(SCRIPT)
    (root / "scripts" / "neighbour.py").write_text("import builtins\nbuiltins.NEIGHBOUR = getattr(builtins, 'NEIGHBOUR', 0) + 1\n"
                                                     "IMPORTS = builtins.NEIGHBOUR\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PL_GLOBAL_SEED", "123")
    path, argv, modules = list(sys.path), list(sys.argv), set(sys.modules)
    script = TrainingScript(ScriptRecord("scripts/train.py", ("--lr", "0.1"), "fit"), root)
    handed = script.run_to_fit()
    assert type(handed.model).__qualname__ == "Tiny" and len(handed.train_loader) == 2 and handed.datamodule is None
    seen = handed.model.__class__.__init__.__globals__["SEEN"]
    assert seen == {"argv": ["--lr", "0.1"], "cwd": str(root.resolve()), "seed_env": None, "imports": 1}
    again = script.run_to_fit().model.__class__.__init__.__globals__["SEEN"]
    assert again["imports"] == 2  # the neighbour imported afresh, as a verifier's fresh process imports it
    assert os.getcwd() == str(tmp_path) and os.environ["PL_GLOBAL_SEED"] == "123"
    assert sys.path == path and sys.argv == argv and "neighbour" not in set(sys.modules) - modules
    loaded = script.load()  # for its classes: the same arguments, the __main__ block not run
    assert loaded.SEEN["argv"] == ["--lr", "0.1"] and loaded.Tiny.__module__ == "lightning_pol_script_train"
    assert os.getcwd() == str(tmp_path)
    with pytest.raises(NotRecreatableError, match=r"scripts/train.py is not in the project root"):
        TrainingScript(ScriptRecord("scripts/train.py", (), "fit"), tmp_path)
    with pytest.raises(NotRecreatableError, match=r"is installed code, not a file of the project"):
        TrainingScript(ScriptRecord("pytest/__main__.py", (), "fit"), Path(pytest.__file__).parents[1])

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
import shutil
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
    for bad in ("../language_model.py", "/etc/passwd.py", "proof/x.py", "sub/../language_model.py"):
        edit("path", bad)
        with pytest.raises((ProofFormatError, NotRecreatableError)):
            verify_proof(proof, VerifierSettings(q=0, project_root=project))
    (proof / "x.py").write_text("raise SystemExit('ran from the proof')\n")
    edit("path", "proof/x.py")
    with pytest.raises(NotRecreatableError, match="inside the proof directory"):
        verify_proof(proof, VerifierSettings(q=0, project_root=project))
    edit("path", original["path"])
    edit("argv", ["--trainer.callbacks+=subprocess.Popen"])
    with pytest.raises(NotRecreatableError, match=r"argument 0 'subprocess.Popen' names code that builds no training object"):
        verify_proof(proof, VerifierSettings(q=0, project_root=project))

"""Real project layouts, trained and verified the way their users would (issue 18's acceptance 1, 2, 3, 5, 6).

``tests/projects/hydra_template`` is laid out like ashleve/lightning-hydra-template (``net: nn.Module``,
``_partial_`` optimizer and ``ReduceLROnPlateau`` on ``val/loss``, ModelCheckpoint and EarlyStopping on
``val/acc``, test after fit), with only ``configs/callbacks/pol.yaml`` added; ``tests/projects/lightning_cli``
is a LightningCLI app as the Lightning docs write one, the callback given on its command line.
"""

from __future__ import annotations

import json
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lightning_pol.format.reader import ProofReader
from lightning_pol.format.writer import rewrite_manifest_json
from tests.projects.runner import copy_project, run_project

STEPS_PER_EPOCH = 20  # the template project: 1257 training samples, batch 64


def verify(proof: Path, cwd: Path, *options: str, name: str | None = None) -> tuple[int, dict | None, str]:
    """``python -m lightning_pol.verify`` in ``cwd``; ``name`` (for runs at the same time) names its report and run directory."""
    report = proof.parent / f"verification-{name or len(list(proof.parent.glob('verification-*')))}.json"
    r = run_project(["-m", "lightning_pol.verify", f"proof_dir={proof}", f"report={report}", f"hydra.run.dir={report.with_suffix('')}",
                     *options], cwd=cwd)
    return r.returncode, json.loads(report.read_text()) if report.exists() else None, r.stdout + r.stderr


def all_bit_exact(report: dict) -> bool:
    return report["valid"] and bool(report["segments"]) and all(s["bit_exact"] for s in report["segments"])


def train_template(root: Path, *overrides: str, callbacks: str = "with_pol") -> tuple[Path, Path, str]:
    project = copy_project("hydra_template", root)
    run = root / "run"
    r = run_project(["src/train.py", f"callbacks={callbacks}", "trainer.max_epochs=3", f"hydra.run.dir={run}", *overrides], cwd=project)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return project, run / "proof", r.stdout + r.stderr


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return train_template(tmp_path_factory.mktemp("template"))


def test_a_template_project_with_only_pol_yaml_added_verifies_bit_exact(template):
    project, proof, log = template
    manifest = ProofReader(proof).manifest
    assert manifest.module.instantiator == "hydra" and manifest.module.arguments()["net"]["_target_"].endswith(":SimpleDenseNet")
    assert manifest.final_step == 3 * STEPS_PER_EPOCH and "test/acc" in log  # trained 3 epochs, then tested
    assert list((proof.parent / "checkpoints").glob("*.ckpt"))  # ModelCheckpoint on val/acc kept working
    code, report, out = verify(proof, project, "verifier.q=0")
    assert code == 0 and all_bit_exact(report), out[-3000:]
    crossing = [s for s in report["segments"] if s["start_step"] // STEPS_PER_EPOCH != (s["end_step"] - 1) // STEPS_PER_EPOCH]
    assert crossing and all(s["bit_exact"] for s in crossing)
    plateau = report["checks"]["plateau"]
    assert plateau["passed"] and plateau["values"] == 3  # ReduceLROnPlateau fed the recorded val/loss of each epoch


def test_a_changed_line_of_the_module_rejects_under_match_replays_under_report_and_pinned_needs_review(template, tmp_path):
    """Issue 21, acceptance 2: the verifier's copy of the project has one line of the module changed after training."""
    project, proof, _ = template
    edited = copy_project("hydra_template", tmp_path)
    module = edited / "src" / "models" / "digits_module.py"
    text = module.read_text()
    module.write_text(text.replace("for classifying the 8x8 handwritten digits.", "for classifying 8x8 digits.", 1))
    assert module.read_text() != text
    trusted = tmp_path / "trusted_code.json"
    with ThreadPoolExecutor(max_workers=2) as pool:  # independent processes, most of each spent importing
        match = pool.submit(verify, proof, edited, "verifier.q=0", name="match")
        report_only = pool.submit(verify, proof, edited, "verifier.q=0", "verifier.code=report", name="report")
        shown = pool.submit(run_project, ["-m", "lightning_pol.code", "show", str(proof)], cwd=edited)
        # pinned: the reviewer pins the project as the proof names it, then verifies each copy against that review
        pinned = pool.submit(run_project, ["-m", "lightning_pol.code", "pin", str(proof), "--trusted", str(trusted)], cwd=project).result()
        assert pinned.returncode == 0 and "src/models/digits_module.py" in pinned.stdout, pinned.stderr[-2000:]
        options = ("verifier.q=1", "verifier.random=0", "verifier.code=pinned", f"verifier.trusted_code={trusted}")
        pinned_original = pool.submit(verify, proof, project, *options, name="pinned-original")
        pinned_edited = pool.submit(verify, proof, edited, *options, name="pinned-edited")
    code, report, out = match.result()
    assert code == 1 and report["checks"]["code"]["differences"] == ["src/models/digits_module.py"], out[-3000:]
    assert "src/models/digits_module.py" in report["reasons"][0] and report["segments"] == []  # nothing replayed
    code, report, out = report_only.result()
    assert code == 0 and all_bit_exact(report), out[-3000:]
    assert report["checks"]["code"]["passed"] is None and report["checks"]["code"]["differences"] == ["src/models/digits_module.py"]
    assert shown.result().returncode == 1 and "DIFFERS src.models.digits_module:DigitsLitModule" in shown.result().stdout, shown.result().stdout[-2000:]
    code, report, out = pinned_original.result()
    assert code == 0 and report["checks"]["code"]["passed"], out[-3000:]
    code, report, out = pinned_edited.result()
    assert code == 1 and report["checks"]["code"]["untrusted"] == ["src/models/digits_module.py"], out[-3000:]


def test_moved_data_verifies_with_an_override_and_says_which_without(template, tmp_path):
    project, proof, _ = template
    moved = tmp_path / "elsewhere"
    shutil.copytree(project / "data", moved)
    shutil.move(project / "data", tmp_path / "gone")
    try:
        code, report, out = verify(proof, project, "verifier.q=1", "verifier.random=0")
        lines = [line for line in out.splitlines() if line.startswith("error:")]
        assert code == 2 and report is None and len(lines) == 1, out[-2000:]
        assert "data_dir" in lines[0] and "datamodule_overrides.data_dir=PATH" in lines[0]
        code, report, out = verify(proof, project, "verifier.q=1", "verifier.random=0", f"datamodule_overrides.data_dir={moved}")
        assert code == 0 and report["valid"], out[-3000:]
        assert report["settings"]["datamodule_overrides"] == {"data_dir": str(moved)}
        assert f"override: datamodule.data_dir='{moved}'" in out
    finally:
        shutil.move(tmp_path / "gone", project / "data")


def test_a_template_project_compiled_in_setup_verifies_bit_exact(tmp_path):
    project, proof, _ = train_template(tmp_path, "model.compile=true")
    assert ProofReader(proof).manifest.training_values()["compiled"] == ["net"]
    code, report, out = verify(proof, project, "verifier.q=0")
    assert code == 0 and all_bit_exact(report), out[-3000:]
    assert report["notes"] == ["the module was compiled in training (net); the replay compiled it as training did"]


def test_a_project_callback_from_the_hydra_config_is_replayed_bit_exact(tmp_path):
    """The project's own gradient-scaling callback, built from its callbacks config node: re-created and replayed."""
    project, proof, log = train_template(tmp_path, callbacks="[with_pol,scale_gradients]")
    assert "the replay will not run it" not in log  # no warning: the replay runs it
    (spec,) = ProofReader(proof).manifest.callbacks
    assert (spec.import_path, spec.instantiator, spec.arguments()) == ("src.callbacks.scale_gradients:ScaleGradients", "hydra", {"factor": 0.5})
    code, report, out = verify(proof, project, "verifier.q=0")
    assert code == 0 and all_bit_exact(report), out[-3000:]


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    project = copy_project("lightning_cli", tmp_path_factory.mktemp("cli"))
    r = run_project(["main.py", "fit", "--config", "config.yaml", "--trainer.callbacks+=lightning_pol.ProofOfLearning",
                     "--trainer.callbacks.dirpath=proof", "--trainer.callbacks.every_n_steps=8"], cwd=project)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return project, project / "proof"


def test_a_lightning_cli_app_with_the_callback_on_its_command_line_verifies_bit_exact(cli):
    project, proof = cli
    spec = ProofReader(proof).manifest.module
    assert spec.instantiator == "lightning_cli" and spec.arguments()["net"]["class_path"] == "digits_cli.nets.ConvNet"
    code, report, out = verify(proof, project, "verifier.q=0")
    assert code == 0 and all_bit_exact(report), out[-3000:]


def test_a_project_callback_given_by_class_path_on_the_cli_is_replayed_bit_exact(tmp_path):
    project = copy_project("lightning_cli", tmp_path)
    r = run_project(["main.py", "fit", "--config", "config.yaml", "--trainer.max_epochs=1",
                     "--trainer.callbacks+=lightning_pol.ProofOfLearning", "--trainer.callbacks.dirpath=proof",
                     "--trainer.callbacks.every_n_steps=8", "--trainer.callbacks+=digits_cli.callbacks.ScaleGradients",
                     "--trainer.callbacks.factor=0.25"], cwd=project)
    assert r.returncode == 0 and "the replay will not run it" not in r.stderr, r.stdout[-2000:] + r.stderr[-4000:]
    (spec,) = ProofReader(project / "proof").manifest.callbacks
    assert (spec.import_path, spec.instantiator, spec.arguments()) == ("digits_cli.callbacks:ScaleGradients", "hparams", {"factor": 0.25})
    code, report, out = verify(project / "proof", project, "verifier.q=0")
    assert code == 0 and all_bit_exact(report), out[-3000:]


HOSTILE = ["subprocess.Popen", "os.system", "builtins.eval", "in_proof"]


@pytest.mark.parametrize("target", HOSTILE)
@pytest.mark.parametrize("style", ["hydra", "lightning_cli"])
def test_nested_hostile_targets_are_exit_2_and_run_nothing(template, cli, tmp_path, monkeypatch, capsys, style, target):
    from lightning_pol.apps.verify import verify_with
    from lightning_pol.verification.settings import VerifierSettings

    project, honest = (template[0], template[1]) if style == "hydra" else cli
    proof = tmp_path / "proof"
    shutil.copytree(honest, proof)
    canary = tmp_path / "canary"
    command = [sys.executable, "-c", f"open({str(canary)!r}, 'w')"]
    files = {}
    if target == "in_proof":  # a module shipped inside the proof, on sys.path when the verifier runs from there
        files["evil_net.py"] = f"open({str(canary)!r}, 'w')\nimport torch\nclass Net(torch.nn.Module):\n    pass\n".encode()
        target = "evil_net.Net"
        monkeypatch.chdir(proof)
        monkeypatch.syspath_prepend(str(proof))

    def edit(m: dict) -> None:
        net = m["module"]["hparams"]["net"]
        if style == "hydra":
            net.clear()
            net.update({"_target_": target, "_args_": [" ".join(command)], "args": command})
        else:
            net.clear()
            net.update({"class_path": target, "init_args": {"args": command}})

    rewrite_manifest_json(proof, edit, files)
    monkeypatch.syspath_prepend(str(project))
    # verifier.code=report: a hostile module path reaches the gate (under match the code check stops it first)
    code = verify_with(VerifierSettings(q=0, code="report"), proof, tmp_path / "verification.json")
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1, err[-2000:]
    assert "net" in lines[0] and ("no training object" in lines[0] or "inside the proof directory" in lines[0]), lines[0]
    assert not canary.exists()

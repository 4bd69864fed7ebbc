"""The class gate over recipes (runtime/recreation.py): what a nested target may be, before anything is called."""

from __future__ import annotations

import functools

import pytest
import torch

from lightning_pol.format.classes import NotRecreatableError
from lightning_pol.runtime.recreation import (
    LIGHTNING_CLI,
    apply_overrides,
    builder,
    canonical_targets,
    gated,
)
from tests.unseen_project import UnseenModule


@pytest.mark.parametrize("path", ["subprocess.Popen", "subprocess:Popen", "os.system", "builtins.eval", "builtins:exec",
                                  "pickle.loads", "functools.partial", "importlib.import_module", "torch.load"])
def test_a_nested_target_that_builds_no_training_object_is_refused(path):
    with pytest.raises(NotRecreatableError, match="builds no training object"):
        gated(path, None, "module target at net")


@pytest.mark.parametrize("path, expected", [
    ("torch.nn.Linear", torch.nn.Linear), ("torch.optim.adam:Adam", torch.optim.Adam),
    ("torch.optim.lr_scheduler.ReduceLROnPlateau", torch.optim.lr_scheduler.ReduceLROnPlateau),
    ("torch.nn.functional.relu", torch.nn.functional.relu), ("torch.nn.init.zeros_", torch.nn.init.zeros_),
])
def test_training_objects_pass(path, expected):
    assert gated(path, None, "target") is expected


def test_a_registered_torchvision_builder_passes():
    import torchvision

    assert gated("torchvision.models.resnet18", None, "target") is torchvision.models.resnet18


def test_nothing_is_called_before_every_nested_target_passed(tmp_path):
    calls = []
    config = {"first": {"_target_": "torch.nn:Identity"}, "deep": [{"_target_": "torch.nn:Sequential",
                                                                     "_args_": [{"_target_": "os:system", "_args_": ["true"]}]}]}
    with pytest.raises(NotRecreatableError, match=r"target at deep\[0\]._args_\[0\] 'os:system' builds no training object"):
        builder("hydra", functools.partial(calls.append), config, tmp_path, "module")  # type: ignore[arg-type]
    assert calls == []


def test_a_recorded_hydra_config_holds_no_interpolation(tmp_path):
    with pytest.raises(NotRecreatableError, match="interpolation"):
        builder("hydra", UnseenModule, {"width": "${oc.env:HOME}"}, tmp_path, "module")


def test_a_lightning_cli_recipe_names_only_lightnings_instantiator(tmp_path):
    with pytest.raises(NotRecreatableError, match="only lightning.pytorch.cli.instantiate_module is run"):
        builder("lightning_cli", UnseenModule, {"_instantiator": "os.system"}, tmp_path, "module")
    with pytest.raises(NotRecreatableError, match="value at activation 'os.system' builds no training object"):
        builder("lightning_cli", UnseenModule, {"_instantiator": LIGHTNING_CLI, "activation": "os.system"}, tmp_path, "module")
    builder("lightning_cli", UnseenModule, {"_instantiator": LIGHTNING_CLI, "width": 8, "note": "data.npz"}, tmp_path, "module")


def test_an_instantiator_not_in_the_format_is_refused(tmp_path):
    with pytest.raises(NotRecreatableError, match="instantiator 'pickle'"):
        builder("pickle", UnseenModule, {}, tmp_path, "module")


def test_overrides_change_only_recorded_keys():
    recorded = {"data_dir": "/old", "net": {"root": "/a", "size": 3}}
    assert apply_overrides(recorded, {"net": {"root": "/b"}}, "datamodule") == {"data_dir": "/old", "net": {"root": "/b", "size": 3}}
    assert recorded["net"]["root"] == "/a"  # a copy
    with pytest.raises(NotRecreatableError, match=r"datamodule_overrides.net.rot: the proof's datamodule records no such"):
        apply_overrides(recorded, {"net": {"rot": "/b"}}, "datamodule")


def test_targets_are_recorded_canonically():
    assert canonical_targets({"a": [{"_target_": "torch.optim.Adam", "lr": 1}]}) == {"a": [{"_target_": "torch.optim.adam:Adam", "lr": 1}]}


def test_targets_in_plain_hparams_are_gated_too(tmp_path):
    """A module may call hydra.utils.instantiate on a config it received: its targets pass the gate first."""
    with pytest.raises(NotRecreatableError, match=r"target at net 'builtins.eval' builds no training object"):
        builder("hparams", UnseenModule, {"net": {"_target_": "builtins.eval", "_args_": ["1"]}}, tmp_path, "module")
    with pytest.raises(NotRecreatableError, match=r"target at net.class_path 'os.system'"):
        builder("hparams", UnseenModule, {"net": {"class_path": "os.system"}}, tmp_path, "module")


# Found by review (each ran code, or wrote a file, before it was fixed).


def test_a_target_hidden_in_a_tuple_is_gated(tmp_path):
    config = {"x": ({"_target_": "builtins.print", "_args_": ["ran"]},)}
    with pytest.raises(NotRecreatableError, match=r"target at x\[0\] 'builtins.print' builds no training object"):
        builder("hydra", UnseenModule, config, tmp_path, "module")


def test_a_function_annotated_to_return_a_module_is_not_a_builder():
    with pytest.raises(NotRecreatableError, match="builds no training object"):
        gated("torch.fx.graph_module.reduce_graph_module", None, "target")  # it execs its arguments


def test_a_yaml_string_jsonargparse_would_instantiate_is_gated(tmp_path):
    config = {"_instantiator": LIGHTNING_CLI, "extra": "{class_path: logging.FileHandler, init_args: {filename: x, mode: w}}"}
    with pytest.raises(NotRecreatableError, match=r"target at extra.class_path 'logging.FileHandler'"):
        builder("lightning_cli", UnseenModule, config, tmp_path, "module")


def test_a_module_that_runs_a_program_when_imported_is_refused():
    with pytest.raises(NotRecreatableError, match="special module"):
        gated("venv.__main__:X", None, "module class", object)


def test_a_package_extended_into_the_proof_directory_is_not_followed(tmp_path, monkeypatch):
    outside, proof, canary = tmp_path / "site", tmp_path / "proof", tmp_path / "canary"
    (outside / "extpkg").mkdir(parents=True)
    (outside / "extpkg" / "__init__.py").write_text("import pkgutil\n__path__ = pkgutil.extend_path(__path__, __name__)\n")
    (proof / "extpkg").mkdir(parents=True)
    (proof / "extpkg" / "evil.py").write_text(f"open({str(canary)!r}, 'w')\nimport torch\nclass Net(torch.nn.Module):\n    pass\n")
    monkeypatch.syspath_prepend(str(proof))
    monkeypatch.syspath_prepend(str(outside))
    with pytest.raises(NotRecreatableError, match="cannot import"):
        gated("extpkg.evil:Net", proof, "module target")
    assert not canary.exists()


def test_plain_hparams_hold_no_interpolation_and_hydra_recipes_no_target_of_their_own(tmp_path):
    with pytest.raises(NotRecreatableError, match="interpolation"):
        builder("hparams", UnseenModule, {"net": {"_target_": "torch.nn.Identity", "a": "${oc.create:{}}"}}, tmp_path, "module")
    with pytest.raises(NotRecreatableError, match="sets its own _target_ or _partial_"):
        builder("hydra", UnseenModule, {"_target_": "torch.nn.Identity"}, tmp_path, "module")

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


def test_a_factory_passes_by_its_return_annotation():
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

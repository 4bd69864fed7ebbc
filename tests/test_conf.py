"""conf/ groups instantiate to what the code expects, and a run built only from them writes a proof."""

from __future__ import annotations

import inspect
from pathlib import Path

import lightning.pytorch as pl
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lightning_pol import ProofOfLearning, ProofReader
from tests.conftest import make_trainer

CONF = Path(__file__).resolve().parents[1] / "conf"


def load(name: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name)


@pytest.mark.parametrize("name", ["pol/default", "model/digits_cnn", "data/digits"])
def test_every_config_key_is_an_argument(name):
    group, _ = name.split("/")
    cfg = OmegaConf.to_container(load(name)[group])
    target = instantiate({"_target_": "hydra.utils.get_class", "path": cfg.pop("_target_")})
    params = inspect.signature(target.__init__).parameters
    assert set(cfg) == set(params) - {"self"}


def test_pol_config_states_the_callbacks_defaults():
    cfg = OmegaConf.to_container(load("pol/default")["pol"])
    params = inspect.signature(ProofOfLearning.__init__).parameters
    for key, value in cfg.items():
        if key not in ("_target_", "dirpath"):
            assert params[key].default == value or (params[key].default is None and value == {}), key


def test_a_run_composed_from_conf_writes_a_proof(tmp_path):
    pl.seed_everything(0, verbose=False)
    pol_cfg = load("pol/default")["pol"]
    pol_cfg.dirpath = str(tmp_path / "proof")
    pol_cfg.every_n_steps = 10
    pol = instantiate(pol_cfg)
    assert isinstance(pol, ProofOfLearning)
    model = instantiate(load("model/digits_cnn")["model"])
    data = instantiate(load("data/digits")["data"])
    make_trainer([pol], tmp_path, max_steps=25, max_epochs=-1).fit(model, datamodule=data)
    reader = ProofReader(tmp_path / "proof")
    assert [c.step for c in reader.checkpoints] == [0, 10, 20, 25]
    assert reader.manifest.module.import_path == "lightning_pol.zoo.digits_cnn:DigitsCNN"
    assert reader.manifest.datamodule.hparams["augment"] is True

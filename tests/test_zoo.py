"""The CIFAR zoo: networks by name, ImageClassifier, CifarDataModule, their configs, and a proof from a short run."""

from __future__ import annotations

import inspect
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from lightning_pol import ProofOfLearning, ProofReader
from lightning_pol.errors import PoLError
from lightning_pol.init import check_initialization, initialize
from lightning_pol.zoo import NETWORKS, CifarDataModule, ImageClassifier, build_network
from tests.conftest import make_trainer

CONF = Path(__file__).resolve().parents[1] / "conf"
CLASSES = {"resnet20": 10, "resnet56": 10, "resnet50_cifar": 100, "mlp": 10}


@pytest.fixture(scope="module")
def networks() -> dict[str, torch.nn.Module]:
    """Each network built once (ResNet-50 is slow to build and check), from a fixed seed."""
    torch.manual_seed(0)
    return {name: build_network(name, CLASSES[name]) for name in NETWORKS}


@pytest.mark.parametrize("name", list(CLASSES))
def test_network_maps_a_batch_to_logits(networks, name):
    net = networks[name].eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 32, 32)).shape == (2, CLASSES[name])


@pytest.mark.parametrize(("name", "expected"), [("resnet20", 0.27e6), ("resnet56", 0.85e6)])
def test_cifar_resnets_have_the_papers_parameter_counts(networks, name, expected):
    count = sum(p.numel() for p in networks[name].parameters())
    assert abs(count - expected) / expected < 0.05, count


@pytest.mark.parametrize("name", list(CLASSES))
def test_networks_have_torchs_default_init(networks, name):
    result = check_initialization(networks[name], "pytorch_default")
    assert result.passed, [c for c in result.layers if not c.passed]


def test_resnet20_can_be_drawn_from_another_strategy():
    torch.manual_seed(0)
    net = initialize(build_network("resnet20", 10), "kaiming_normal")
    assert check_initialization(net, "kaiming_normal").passed
    assert not check_initialization(net, "pytorch_default").passed


def test_mlp_hidden_sizes_and_input_shape():
    net = build_network("mlp", 5, in_channels=1, input_size=8, hidden=(16,))
    assert [m.out_features for m in net.modules() if isinstance(m, torch.nn.Linear)] == [16, 5]
    assert net(torch.randn(3, 1, 8, 8)).shape == (3, 5)


def test_unknown_network_or_option_is_a_polerror():
    with pytest.raises(PoLError, match="resnet20"):
        build_network("vgg16", 10)
    with pytest.raises(PoLError, match="hidden"):
        build_network("resnet20", 10, hidden=(8,))


def test_classifier_hparams_are_plain():
    model = ImageClassifier(net="mlp", milestones=(3, 7))
    assert model.hparams.milestones == [3, 7] and type(model.hparams.milestones) is list
    assert ImageClassifier(net="mlp").hparams.milestones == [100, 150]
    opt, sched = (lambda c: (c["optimizer"], c["lr_scheduler"]))(model.configure_optimizers())
    assert opt.defaults["nesterov"] is False and opt.defaults["weight_decay"] == 1e-4
    assert sched["interval"] == "epoch" and sorted(sched["scheduler"].milestones) == [3, 7]


@pytest.mark.parametrize(("name", "classes"), [("cifar10", 10), ("cifar100", 100)])
def test_fake_cifar_gives_tensors_and_int_labels(name, classes):
    dm = CifarDataModule(name, fake=True, fake_train_size=8, fake_val_size=4)
    dm.setup("fit")
    assert dm.num_classes == classes
    assert len(dm.train_set) == 8 and len(dm.val_set) == 4
    for dataset in (dm.train_set, dm.val_set):
        for i in range(len(dataset)):
            x, y = dataset[i]
            assert isinstance(x, torch.Tensor) and x.shape == (3, 32, 32) and x.dtype == torch.float32
            assert type(y) is int and 0 <= y < classes
    assert not torch.equal(dm.train_set[0][0], dm.val_set[0][0])
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (4, 3, 32, 32) and y.dtype == torch.int64


def test_only_training_data_is_augmented():
    torch.manual_seed(0)
    dm = CifarDataModule(fake=True, fake_train_size=2, fake_val_size=2)
    dm.setup("fit")
    train = [dm.train_set[0][0] for _ in range(4)]
    assert not all(torch.equal(train[0], x) for x in train[1:])
    assert torch.equal(dm.val_set[0][0], dm.val_set[0][0])
    plain = CifarDataModule(fake=True, fake_train_size=2, fake_val_size=2, augment=False)
    plain.setup("fit")
    assert torch.equal(plain.train_set[0][0], plain.train_set[0][0])


def test_missing_dataset_says_how_to_download(tmp_path):
    dm = CifarDataModule("cifar100", root=str(tmp_path / "nowhere"), download=False)
    with pytest.raises(PoLError, match="download") as info:
        dm.setup("fit")
    assert "nowhere" in str(info.value) and "\n" not in str(info.value)


def test_unknown_dataset_is_a_polerror():
    with pytest.raises(PoLError, match="cifar10"):
        CifarDataModule("mnist")


def load(name: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name)


NEW_CONFIGS = [
    "model/resnet20", "model/resnet56", "model/resnet50_cifar", "model/mlp",
    "data/cifar10", "data/cifar100", "data/fake_cifar10", "data/fake_cifar100",
]


@pytest.mark.parametrize("name", NEW_CONFIGS)
def test_every_config_key_is_an_argument(name):
    group, _ = name.split("/")
    cfg = OmegaConf.to_container(load(name)[group])
    target = get_class(cfg.pop("_target_"))
    params = inspect.signature(target.__init__).parameters
    assert set(cfg) == set(params) - {"self"}
    if group == "model":
        assert cfg["net"] == name.split("/")[1] and cfg["num_classes"] == CLASSES[cfg["net"]]


@pytest.mark.parametrize("name", ["data/fake_cifar10", "data/fake_cifar100"])
def test_fake_data_configs_instantiate_offline(name):
    dm = instantiate(load(name)["data"])
    assert isinstance(dm, CifarDataModule) and dm.hparams.fake
    dm.setup("fit")
    assert dm.train_set[0][0].shape == (3, 32, 32)


def test_a_short_resnet20_run_writes_a_proof(tmp_path):
    pl.seed_everything(0, verbose=False)
    model = instantiate(load("model/resnet20")["model"])
    assert isinstance(model, ImageClassifier) and model.hparams.milestones == [100, 150]
    data = CifarDataModule(fake=True, fake_train_size=64, fake_val_size=32, batch_size=16)
    pol = ProofOfLearning(tmp_path / "proof", every_n_steps=2)
    make_trainer([pol], tmp_path, max_steps=4, max_epochs=-1).fit(model, datamodule=data)
    reader = ProofReader(tmp_path / "proof")
    assert [c.step for c in reader.checkpoints] == [0, 2, 4]
    assert reader.manifest.module.import_path == "lightning_pol.zoo.classifier:ImageClassifier"

"""Initialization strategies and the per-layer KS check, on real draws."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lightning_pol.errors import PoLError
from lightning_pol.init import STRATEGIES, InitCheck, check_initialization, initialize

DRAWN = ("kaiming_normal", "kaiming_uniform", "xavier_normal", "xavier_uniform", "orthogonal")
WRONG_SEEDS = range(4)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """QR/SVD of these small matrices gain nothing from threads and slow down a lot on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_net() -> nn.Sequential:
    """Conv + linear; weights of 432, 4608, 32768 and 640 entries."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3), nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
    )


def bn_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))


def drawn(name: str, seed: int, **params) -> nn.Sequential:
    torch.manual_seed(seed)
    return initialize(small_net(), name, **params)


def failed(check: InitCheck) -> list[tuple[str, str]]:
    return [(c.name, c.test) for c in check.layers if not c.passed]


def test_strategies_match_the_proof_format():
    from lightning_pol.format.manifest import INIT_STRATEGIES

    assert set(STRATEGIES) <= set(INIT_STRATEGIES)


def test_honest_draws_are_accepted():
    """alpha=0.01 with Bonferroni: about 1 rejection in 100 honest draws is expected."""
    rejected = {}
    for name in DRAWN:
        rejected[name] = sum(not check_initialization(drawn(name, s), name).passed for s in range(20))
    print(f"honest rejections: {rejected}; {sum(rejected.values())} of 100")
    assert sum(rejected.values()) <= 3, rejected


@pytest.mark.parametrize(
    "drawn_as, checked_as",
    [
        ("kaiming_normal", "xavier_normal"),
        ("xavier_normal", "kaiming_normal"),
        ("kaiming_normal", "kaiming_uniform"),
        ("kaiming_uniform", "kaiming_normal"),
        ("xavier_uniform", "xavier_normal"),
        ("xavier_normal", "xavier_uniform"),
        ("xavier_uniform", "kaiming_uniform"),
        ("kaiming_normal", "xavier_uniform"),
        ("orthogonal", "kaiming_normal"),
        ("orthogonal", "xavier_normal"),
        ("kaiming_normal", "orthogonal"),
        ("xavier_uniform", "orthogonal"),
        ("kaiming_uniform", "pytorch_default"),
        ("normal", "kaiming_normal"),
    ],
)
def test_wrong_family_is_rejected(drawn_as, checked_as):
    for s in WRONG_SEEDS:
        check = check_initialization(drawn(drawn_as, s), checked_as)
        assert not check.passed, (drawn_as, checked_as, s)


@pytest.mark.parametrize("name", DRAWN + ("normal",))
def test_scaled_draws_are_rejected(name):
    for s in WRONG_SEEDS:
        net = drawn(name, s)
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(1.5)
        check = check_initialization(net, name)
        assert not check.passed
        if name == "orthogonal":
            assert ("0.weight", "orthogonal") in failed(check)


def test_orthogonal_checks_singular_values_and_randomness():
    net = drawn("orthogonal", 0)
    check = check_initialization(net, "orthogonal")
    sv_checks = [c for c in check.layers if c.test == "orthogonal"]
    assert len(sv_checks) == 4 and all(c.passed and c.statistic < 1e-4 for c in sv_checks)
    # an orthogonal matrix that is not a random draw
    lin = nn.Linear(64, 64)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(64))
        lin.bias.zero_()
    check = check_initialization(lin, "orthogonal")
    assert failed(check) == [("weight", "ks")]


def test_pytorch_default_init_is_accepted():
    rejected = 0
    for s in range(20):
        torch.manual_seed(s)
        rejected += not check_initialization(small_net(), "pytorch_default").passed
    print(f"pytorch_default: {rejected} of 20 fresh nets rejected")
    assert rejected <= 2
    torch.manual_seed(0)
    assert check_initialization(bn_net(), "pytorch_default").passed


def test_initialize_pytorch_default_reproduces_the_constructor():
    torch.manual_seed(3)
    fresh = small_net()
    again = small_net()
    torch.manual_seed(3)
    initialize(again, "pytorch_default")
    for a, b in zip(fresh.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_changed_batchnorm_is_rejected_by_the_constant_test():
    for key in ("1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"):
        torch.manual_seed(0)
        net = bn_net()
        with torch.no_grad():
            net.state_dict()[key].add_(1)
        check = check_initialization(net, "pytorch_default")
        assert failed(check) == [(key, "constant")], key
    net = initialize(bn_net(), "kaiming_normal")
    assert check_initialization(net, "kaiming_normal").passed


def test_trained_looking_weights_are_rejected():
    for s in WRONG_SEEDS:
        torch.manual_seed(s)
        net = small_net()
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
        assert not check_initialization(net, "pytorch_default").passed


def test_report_shape_and_thresholds():
    net = drawn("kaiming_uniform", 1)
    check = check_initialization(net, "kaiming_uniform")
    assert set(check.p_values) == {"0.weight", "2.weight", "4.weight", "6.weight"}
    assert all(isinstance(v, float) for v in check.p_values.values())
    assert check.threshold == pytest.approx(0.01 / 4)
    assert {c.test for c in check.layers if c.name.endswith("bias")} == {"constant"}
    data = json.loads(json.dumps(check.to_dict()))
    assert data["strategy"] == "kaiming_uniform" and len(data["layers"]) == len(check.layers)
    assert set(data["layers"][0]) == {"name", "test", "statistic", "p_value", "passed", "detail"}

    plain = check_initialization(net, "kaiming_uniform", alpha=0.05, bonferroni=False)
    assert plain.threshold == 0.05 and not plain.bonferroni
    assert all(c.passed == (c.p_value >= 0.05) for c in plain.layers if c.test == "ks")

    torch.manual_seed(0)
    default = check_initialization(small_net(), "pytorch_default")
    assert len(default.p_values) == 8  # biases are drawn too
    assert default.threshold == pytest.approx(0.01 / 8)


def test_unknown_strategy_and_parameters_raise():
    with pytest.raises(PoLError, match="kaiming_normal"):
        initialize(small_net(), "he_normal")
    with pytest.raises(PoLError):
        check_initialization(small_net(), "warm_start")
    with pytest.raises(PoLError):
        initialize(small_net(), "xavier_normal", std=0.1)


def test_normal_parameters():
    net = drawn("normal", 0)
    assert check_initialization(net, "normal").passed
    assert not check_initialization(net, "normal", std=0.03).passed
    net = drawn("normal", 0, mean=0.1, std=0.05)
    assert check_initialization(net, "normal", mean=0.1, std=0.05).passed
    assert not check_initialization(net, "normal", std=0.05).passed


def test_unsupported_tensors_fail_closed():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8), nn.LSTM(8, 8), nn.PReLU())
    check = check_initialization(net, "pytorch_default")
    assert not check.passed
    assert {c.name for c in check.layers if c.test == "unsupported"} == {
        "1.weight_ih_l0", "1.weight_hh_l0", "1.bias_ih_l0", "1.bias_hh_l0", "2.weight",
    }
    extra = nn.Linear(8, 8)
    extra.register_parameter("hidden", nn.Parameter(torch.zeros(3)))
    assert failed(check_initialization(extra, "pytorch_default")) == [("hidden", "unsupported")]


def zoo() -> nn.Sequential:
    return nn.Sequential(
        nn.Embedding(300, 32, padding_idx=2), nn.EmbeddingBag(100, 16), nn.Bilinear(10, 12, 20),
        nn.Conv1d(4, 8, 5), nn.ConvTranspose2d(8, 16, 3, groups=2), nn.Conv3d(2, 4, 3),
        nn.BatchNorm1d(10), nn.LayerNorm(10), nn.GroupNorm(2, 10),
        nn.InstanceNorm2d(5, affine=True, track_running_stats=True), nn.RMSNorm(10), nn.Linear(200, 100),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_every_layer_type_and_dtype(dtype):
    for name in STRATEGIES:
        torch.manual_seed(0)
        net = initialize(zoo().to(dtype), name)
        assert torch.count_nonzero(net[0].weight[2]) == 0
        check = check_initialization(net, name)
        assert check.passed, (name, failed(check))
        assert not any(c.test == "unsupported" for c in check.layers)
        with torch.no_grad():
            net[0].weight[2, 0] = 0.5
        assert ("0.weight[2]", "constant") in failed(check_initialization(net, name))


def test_check_consumes_no_randomness():
    net = drawn("xavier_normal", 0)
    torch.manual_seed(5)
    check_initialization(net, "xavier_normal")
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_module():
    for name in DRAWN:
        torch.manual_seed(0)
        net = initialize(small_net().cuda(), name)
        assert check_initialization(net, name).passed
        assert not check_initialization(net, "pytorch_default").passed


def test_non_finite_weights_fail():
    net = drawn("kaiming_normal", 0)
    with torch.no_grad():
        net[4].weight[0, 0] = float("nan")
    check = check_initialization(net, "kaiming_normal")
    assert failed(check) == [("4.weight", "ks")]
    json.dumps(check.to_dict(), allow_nan=False)


def test_attention_and_lightnings_demo_transformer_are_drawn_as_torch_draws_them():
    """``nn.MultiheadAttention`` (Xavier projections, zero biases, ``out_proj``'s bias zeroed) and ``nn.Transformer``
    (Xavier on every matrix), as in Lightning's demo Transformer, the model of examples/pytorch/basics/transformer.py."""
    from lightning.pytorch.demos import Transformer

    def demo() -> nn.Module:
        return Transformer(vocab_size=50, ninp=32, nhead=2, nhid=32, nlayers=1)

    rejected = 0
    for s in range(10):
        torch.manual_seed(s)
        rejected += not check_initialization(demo(), "pytorch_default").passed
    assert rejected <= 1
    torch.manual_seed(1)
    assert check_initialization(initialize(demo(), "pytorch_default"), "pytorch_default").passed
    for kw in ({}, {"kdim": 8, "vdim": 12, "add_bias_kv": True}):  # initialize draws as the constructor does
        torch.manual_seed(7)
        fresh = nn.MultiheadAttention(16, 2, **kw)
        again = nn.MultiheadAttention(16, 2, **kw)
        torch.manual_seed(7)
        initialize(again, "pytorch_default")
        assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), again.state_dict().values()))
        assert check_initialization(fresh, "pytorch_default").passed
    for key in ("transformer.encoder.layers.0.self_attn.in_proj_bias", "transformer.encoder.layers.0.self_attn.out_proj.bias"):
        torch.manual_seed(0)
        net = demo()
        with torch.no_grad():
            net.state_dict()[key].add_(0.1)
        assert failed(check_initialization(net, "pytorch_default")) == [(key, "constant")]
    torch.manual_seed(0)
    net = demo()
    linear = net.transformer.encoder.layers[0].linear1
    linear.reset_parameters()  # a Linear's own draw, which nn.Transformer's constructor replaces by Xavier's
    with torch.no_grad():
        linear.bias.copy_(net.transformer.encoder.layers[0].linear1.bias)
    assert ("transformer.encoder.layers.0.linear1.weight", "ks") in failed(check_initialization(net, "pytorch_default"))

"""Training state survives the trip through safetensors + typed JSON, without pickle."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load, save

from lightning_pol.format.state_codec import (
    StateEncodingError,
    decode_state,
    encode_state,
)
from lightning_pol.runtime.rng import (
    collect_rng_states,
    portable_rng_states,
    restore_rng_states,
)


def roundtrip(state):
    tensors, tree = encode_state(state)
    text = json.dumps(tree, allow_nan=False)
    return decode_state(load(save(tensors)), json.loads(text))


def test_structures_come_back_with_their_types():
    state = {
        "model": {"layer.weight": torch.randn(3, 4), "bn.num_batches_tracked": torch.tensor(7), "half": torch.ones(2, dtype=torch.bfloat16)},
        "tuple": (1, 2.5, "x", None, True),
        "int_keys": {0: {"step": torch.tensor(3.0)}, 1: {}},
        "floats": [math.inf, -math.inf, 0.1, 1e-300],
        "nan": math.nan,
        "array": np.arange(6, dtype=np.uint32).reshape(2, 3),
        "np_scalar": np.float32(1.5),
        "dtype": torch.float16,
        "__reserved": 1,
    }
    out = roundtrip(state)
    assert list(out["model"]) == list(state["model"])
    for k, v in state["model"].items():
        assert out["model"][k].dtype == v.dtype and torch.equal(out["model"][k], v)
    assert out["tuple"] == state["tuple"] and isinstance(out["tuple"], tuple)
    assert set(out["int_keys"]) == {0, 1} and torch.equal(out["int_keys"][0]["step"], torch.tensor(3.0))
    assert out["floats"] == state["floats"] and math.isnan(out["nan"])
    assert out["array"].dtype == np.uint32 and (out["array"] == state["array"]).all()
    assert out["np_scalar"] == np.float32(1.5) and out["np_scalar"].dtype == np.float32
    assert out["dtype"] is torch.float16 and out["__reserved"] == 1


def test_model_tensors_are_named_model_dot_key():
    tensors, _ = encode_state({"model": {"net.0.weight": torch.zeros(1)}, "optimizers": [{"state": {0: {"exp_avg": torch.zeros(1)}}}]})
    assert "model.net.0.weight" in tensors and "optimizers.0.state.0.exp_avg" in tensors


def test_optimizer_scheduler_and_rng_states_resume_identically():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=20)

    def step():
        opt.zero_grad()
        net(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
        sched.step()

    for _ in range(5):
        step()
    random.random(), np.random.rand()
    saved = roundtrip({"model": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "rng": portable_rng_states(collect_rng_states())})  # as a checkpoint stores it
    for _ in range(5):
        step()
    expected = {k: v.clone() for k, v in net.state_dict().items()}
    py_next, np_next = random.random(), np.random.rand()

    net2 = torch.nn.Linear(4, 2)
    opt2 = torch.optim.AdamW(net2.parameters(), lr=1e-2)
    sched2 = torch.optim.lr_scheduler.OneCycleLR(opt2, max_lr=1e-2, total_steps=20)
    net2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    restore_rng_states(saved["rng"])
    net, opt, sched = net2, opt2, sched2
    for _ in range(5):
        step()
    assert all(torch.equal(v, expected[k]) for k, v in net.state_dict().items())
    assert (random.random(), np.random.rand()) == (py_next, np_next)


def test_values_without_a_pickle_free_form_are_refused_with_their_path():
    with pytest.raises(StateEncodingError, match="'sched.fn'"):
        encode_state({"sched": {"fn": lambda x: x}})
    with pytest.raises(StateEncodingError, match="object"):
        encode_state({"a": np.array([object()])})


@pytest.mark.parametrize(
    "tree",
    [{"x": {"__tensor__": "missing"}}, {"x": {"__float__": "1.0"}}, {"x": {"__tuple__": 3}}, {"x": {"__dict__": [[[], 1]]}},
     {"x": {"__ndarray__": "t", "dtype": "|O", "shape": [1]}}, {"x": {"__torch_dtype__": "Tensor"}}, {"x": {"__tensor__": "t", "extra": 1}}],
)
def test_malformed_trees_are_rejected(tree):
    with pytest.raises(ValueError):
        decode_state({"t": torch.zeros(8, dtype=torch.uint8)}, tree)

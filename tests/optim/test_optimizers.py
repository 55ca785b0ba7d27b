"""kiln.optim against torch.optim: the same gradients must give the same parameters."""

import copy

import numpy as np
import pytest
import torch

import kiln
import kiln.optim  # noqa: F401

SHAPES = [(3, 4), (4,)]
STEPS = 10

CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.5, maximize=True)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.9), weight_decay=0.1)),
    ("Adam", dict(lr=0.01, amsgrad=True)),
    ("Adam", dict(lr=0.01, amsgrad=True, maximize=True, weight_decay=0.05)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    ("AdamW", dict(lr=0.01, maximize=True)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, momentum=0.8)),
    ("RMSprop", dict(lr=0.01, centered=True, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5, maximize=True, eps=1e-6)),
    ("Adagrad", dict(lr=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.05, weight_decay=0.1)),
    ("Adagrad", dict(lr=0.1, initial_accumulator_value=0.5, eps=1e-6, maximize=True)),
]


def _initial(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, s).astype(np.float32) for s in SHAPES]


def _grads(steps=STEPS, seed=1):
    rng = np.random.default_rng(seed)
    return [[rng.normal(size=s).astype(np.float32) for s in SHAPES] for _ in range(steps)]


def _run(lib, name, kwargs, grads, params=None, opt=None, groups=None):
    """Feed `grads` to an optimizer of `lib`; returns the params and optimizer."""
    if params is None:
        params = [lib.tensor(a, requires_grad=True) for a in _initial()]
    if opt is None:
        spec = params if groups is None else [dict(g, params=[params[i] for i in idx])
                                              for idx, g in groups]
        opt = getattr(lib.optim, name)(spec, **kwargs)
    for step in grads:
        opt.zero_grad()
        for p, g in zip(params, step):
            p.grad = lib.tensor(g)
        opt.step()
    return params, opt


def _assert_same(kparams, tparams):
    for k, t in zip(kparams, tparams):
        np.testing.assert_allclose(k.detach().numpy(), t.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,kwargs", CASES, ids=[f"{n}-{sorted(k)}" for n, k in CASES])
def test_same_parameters_as_torch(name, kwargs):
    grads = _grads()
    kparams, kopt = _run(kiln, name, kwargs, grads)
    tparams, topt = _run(torch, name, kwargs, grads)
    _assert_same(kparams, tparams)
    # the state matches too, key for key
    ks, ts = kopt.state_dict(), topt.state_dict()
    assert ks["param_groups"] == ts["param_groups"]
    assert ks["state"].keys() == ts["state"].keys()
    for i in ts["state"]:
        assert ks["state"][i].keys() == ts["state"][i].keys()
        for key, tv in ts["state"][i].items():
            kv = ks["state"][i][key]
            assert kv.dtype.name == str(tv.dtype).replace("torch.", ""), key
            np.testing.assert_allclose(kv.numpy(), tv.numpy(), rtol=1e-5, atol=1e-6)


def test_param_groups_with_own_options():
    groups = [([0], dict(lr=0.05, momentum=0.9)), ([1], dict(weight_decay=0.1))]
    grads = _grads()
    kparams, kopt = _run(kiln, "SGD", dict(lr=0.1), grads, groups=groups)
    tparams, topt = _run(torch, "SGD", dict(lr=0.1), grads, groups=groups)
    _assert_same(kparams, tparams)
    assert kopt.state_dict()["param_groups"] == topt.state_dict()["param_groups"]


def test_add_param_group_and_errors():
    a, b = kiln.ones(2, requires_grad=True), kiln.ones(3, requires_grad=True)
    opt = kiln.optim.Adam([a], lr=0.1)
    opt.add_param_group({"params": b, "lr": 0.5})
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]
    assert opt.param_groups[1]["betas"] == (0.9, 0.999)
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [a]})
    with pytest.raises(ValueError, match="empty parameter list"):
        kiln.optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        kiln.optim.SGD([a], lr=-1.0)
    with pytest.raises(TypeError, match="ordered collections"):
        kiln.optim.SGD({a}, lr=0.1)


def test_zero_grad():
    p = kiln.ones(2, requires_grad=True)
    opt = kiln.optim.SGD([p], lr=0.1)
    p.grad = kiln.ones(2)
    opt.zero_grad(set_to_none=False)
    assert p.grad.tolist() == [0.0, 0.0]
    opt.zero_grad()
    assert p.grad is None
    opt.step()                      # params without grads are skipped
    assert p.tolist() == [1.0, 1.0]


def test_closure_and_autograd_training_match_torch():
    """A least-squares model trained with real backward passes, loss via closure."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(8, 3)).astype(np.float32), rng.normal(size=(8,)).astype(np.float32)

    def train(lib):
        w = lib.tensor(np.zeros(3, np.float32), requires_grad=True)
        opt = lib.optim.Adam([w], lr=0.1, amsgrad=True)
        xs, ys = lib.tensor(x), lib.tensor(y)
        losses = []

        def closure():
            opt.zero_grad()
            loss = ((xs @ w - ys) ** 2).mean()
            loss.backward()
            return loss
        for _ in range(STEPS):
            losses.append(float(opt.step(closure).detach()))
        return w, losses

    kw, kl = train(kiln)
    tw, tl = train(torch)
    _assert_same([kw], [tw])
    np.testing.assert_allclose(kl, tl, rtol=1e-5)


@pytest.mark.parametrize("name,kwargs", [("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
                                         ("Adam", dict(lr=0.01, amsgrad=True)),
                                         ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5)),
                                         ("Adagrad", dict(lr=0.1, lr_decay=0.1))])
def test_state_dict_round_trip_continues_identically(name, kwargs, tmp_path):
    grads = _grads(steps=2 * STEPS)
    straight, _ = _run(kiln, name, kwargs, grads)

    params, opt = _run(kiln, name, kwargs, grads[:STEPS])
    kiln.save({"params": [p.detach() for p in params], "opt": opt.state_dict()},
              tmp_path / "ckpt.kiln")
    ckpt = kiln.load(tmp_path / "ckpt.kiln")
    resumed = [kiln.tensor(p.numpy(), requires_grad=True) for p in ckpt["params"]]
    opt2 = getattr(kiln.optim, name)(resumed, **kwargs)
    opt2.load_state_dict(ckpt["opt"])
    assert opt2.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    _run(kiln, name, kwargs, grads[STEPS:], params=resumed, opt=opt2)
    for a, b in zip(resumed, straight):
        np.testing.assert_array_equal(a.detach().numpy(), b.detach().numpy())


def test_state_dict_loads_torch_structure():
    """A state dict shaped like torch's (converted tensors) loads and continues like torch."""
    grads = _grads(steps=2 * STEPS)
    kwargs = dict(lr=0.01, betas=(0.8, 0.95), weight_decay=0.1)
    tparams, topt = _run(torch, "AdamW", kwargs, grads[:STEPS])
    tsd = topt.state_dict()
    ksd = {"state": {i: {k: kiln.tensor(v.numpy()) for k, v in s.items()}
                     for i, s in tsd["state"].items()},
           "param_groups": copy.deepcopy(tsd["param_groups"])}
    kparams = [kiln.tensor(p.detach().numpy(), requires_grad=True) for p in tparams]
    kopt = kiln.optim.AdamW(kparams, lr=1.0)
    kopt.load_state_dict(ksd)
    assert kopt.param_groups[0]["lr"] == 0.01
    _run(torch, "AdamW", kwargs, grads[STEPS:], params=tparams, opt=topt)
    _run(kiln, "AdamW", kwargs, grads[STEPS:], params=kparams, opt=kopt)
    _assert_same(kparams, tparams)


BAD_HYPERS = [("Adam", dict(lr=-1)), ("Adam", dict(eps=-1e-8)), ("Adam", dict(betas=(0.9, 1.0))),
              ("AdamW", dict(weight_decay=-0.1)), ("Adamax", dict(betas=(-0.1, 0.9))),
              ("NAdam", dict(momentum_decay=-1)), ("RAdam", dict(eps=-1)),
              ("Adadelta", dict(rho=1.5)), ("Adadelta", dict(eps=-1)),
              ("Adagrad", dict(lr_decay=-1)), ("Adagrad", dict(initial_accumulator_value=-1)),
              ("ASGD", dict(weight_decay=-1)), ("RMSprop", dict(alpha=-1)),
              ("RMSprop", dict(momentum=-1)), ("SGD", dict(lr=0.1, momentum=-1)),
              ("LBFGS", dict(lr=-1)), ("Rprop", dict(etas=(1.2, 0.5)))]


@pytest.mark.parametrize("name,hypers", BAD_HYPERS, ids=[f"{n}-{next(iter(h))}" for n, h in
                                                         BAD_HYPERS])
def test_invalid_hyperparameter_raises_torchs_error(name, hypers):
    with pytest.raises(ValueError) as want:
        getattr(torch.optim, name)([torch.zeros(2, requires_grad=True)], **hypers)
    with pytest.raises(ValueError) as got:
        getattr(kiln.optim, name)([kiln.zeros(2, requires_grad=True)], **hypers)
    assert str(got.value) == str(want.value)

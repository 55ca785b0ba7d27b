"""torch._foreach_* against PyTorch: values, dtypes, what is returned, in-place writes and
gradients, for every form of the second operand; then the way users call them (an EMA of a
model's weights, a hand-written SGD with momentum), eagerly and compiled."""

import numpy as np
import pytest
import torch

import kiln
from kiln.tracer import foreach

SHAPES = [(3,), (2, 4), ()]


def _lists(seed=0, positive=False, dtype=np.float32):
    rng = np.random.default_rng(seed)
    arrays = [rng.uniform(0.2, 2.0, s) if positive else rng.standard_normal(s)
              for s in SHAPES]
    arrays = [np.asarray(a, dtype=dtype) for a in arrays]
    return [kiln.tensor(a) for a in arrays], [torch.tensor(a) for a in arrays]


def _same(ks, ts, rtol=1e-6):
    assert len(ks) == len(ts)
    for k, t in zip(ks, ts):
        assert k.dtype.name == str(t.dtype).removeprefix("torch."), (k.dtype, t.dtype)
        np.testing.assert_allclose(k.detach().numpy(), t.detach().numpy(), rtol=rtol,
                                   atol=1e-6)


def test_every_torch_foreach_name_is_provided():
    names = {n for n in dir(torch) if n.startswith("_foreach_")}
    assert names == set(foreach.exports())
    assert all(hasattr(kiln, n) for n in names)


UNARY = ["abs", "acos", "asin", "atan", "ceil", "cos", "cosh", "erf", "erfc", "exp", "expm1",
         "floor", "frac", "lgamma", "log", "log10", "log1p", "log2", "neg", "reciprocal",
         "round", "rsqrt", "sigmoid", "sign", "sin", "sinh", "sqrt", "tan", "tanh", "trunc"]


@pytest.mark.parametrize("name", UNARY)
def test_unary(name):
    positive = name in ("log", "log10", "log2", "log1p", "sqrt", "rsqrt", "lgamma")
    bounded = name in ("acos", "asin")
    ks, ts = _lists(1, positive=positive)
    if bounded:
        ks, ts = [k / 3 for k in ks], [t / 3 for t in ts]
    _same(getattr(kiln, f"_foreach_{name}")(ks), getattr(torch, f"_foreach_{name}")(ts), 1e-5)
    out = getattr(kiln, f"_foreach_{name}_")(ks)
    assert out is ks
    getattr(torch, f"_foreach_{name}_")(ts)
    _same(ks, ts, 1e-5)


def _other(form, seed):
    if form == "scalar":
        return 1.5, 1.5
    if form == "scalarlist":
        return [0.5, -2.0, 3.0], [0.5, -2.0, 3.0]
    if form == "tensor":
        return kiln.tensor(0.75), torch.tensor(0.75)
    return _lists(seed, positive=True)


@pytest.mark.parametrize("form", ["scalar", "scalarlist", "tensor", "list"])
@pytest.mark.parametrize("name", ["add", "sub", "mul", "div", "maximum", "minimum",
                                  "clamp_min", "clamp_max", "pow"])
def test_binary(name, form):
    if form == "tensor" and name in ("maximum", "minimum", "clamp_min", "clamp_max", "pow",
                                     "sub"):
        pytest.skip("PyTorch has no single-tensor form of this one")
    if form == "scalarlist" and name == "pow":
        ks, ts = _lists(2, positive=True)
    else:
        ks, ts = _lists(2, positive=name == "pow")
    ko, to = _other(form, 3)
    _same(getattr(kiln, f"_foreach_{name}")(ks, ko), getattr(torch, f"_foreach_{name}")(ts, to),
          1e-5)
    if name in ("add", "sub") and form == "list":
        _same(getattr(kiln, f"_foreach_{name}")(ks, ko, alpha=-0.5),
              getattr(torch, f"_foreach_{name}")(ts, to, alpha=-0.5), 1e-5)
    assert getattr(kiln, f"_foreach_{name}_")(ks, ko) is ks
    getattr(torch, f"_foreach_{name}_")(ts, to)
    _same(ks, ts, 1e-5)


def test_integer_lists_promote_as_torch():
    ks = [kiln.tensor([1, 2]), kiln.tensor([3])]
    ts = [torch.tensor([1, 2]), torch.tensor([3])]
    _same(kiln._foreach_add(ks, 1), torch._foreach_add(ts, 1))
    _same(kiln._foreach_mul(ks, 0.5), torch._foreach_mul(ts, 0.5))
    _same(kiln._foreach_div(ks, 2), torch._foreach_div(ts, 2))


@pytest.mark.parametrize("name", ["addcmul", "addcdiv"])
@pytest.mark.parametrize("value", [1, 0.3, [0.5, 2.0, -1.0], "tensor"])
def test_pointwise_with_two_lists(name, value):
    ks, ts = _lists(4)
    k1, t1 = _lists(5)
    k2, t2 = _lists(6, positive=True)
    kv, tv = (kiln.tensor([0.5, 2.0, -1.0]), torch.tensor([0.5, 2.0, -1.0])) \
        if value == "tensor" else (value, value)
    _same(getattr(kiln, f"_foreach_{name}")(ks, k1, k2, kv),
          getattr(torch, f"_foreach_{name}")(ts, t1, t2, tv), 1e-5)
    getattr(kiln, f"_foreach_{name}_")(ks, k1, k2, kv)
    getattr(torch, f"_foreach_{name}_")(ts, t1, t2, tv)
    _same(ks, ts, 1e-5)


@pytest.mark.parametrize("weight", [0.25, "list"])
def test_lerp(weight):
    ks, ts = _lists(7)
    ke, te = _lists(8)
    if weight == "list":
        kw, tw = _lists(9, positive=True)
    else:
        kw = tw = weight
    _same(kiln._foreach_lerp(ks, ke, kw), torch._foreach_lerp(ts, te, tw), 1e-5)
    kiln._foreach_lerp_(ks, ke, kw)
    torch._foreach_lerp_(ts, te, tw)
    _same(ks, ts, 1e-5)


def test_reductions_copies_and_products():
    ks, ts = _lists(10)
    for ord_ in (1, 2, 3, float("inf")):
        _same(kiln._foreach_norm(ks, ord_), torch._foreach_norm(ts, ord_), 1e-5)
        if ord_ != float("inf"):
            _same(kiln._foreach_powsum(ks, ord_), torch._foreach_powsum(ts, ord_), 1e-5)
    _same(kiln._foreach_norm(ks, 2, dtype=kiln.float64),
          torch._foreach_norm(ts, 2, dtype=torch.float64))
    _same(kiln._foreach_max(ks), torch._foreach_max(ts))
    clones = kiln._foreach_clone(ks)
    assert isinstance(clones, tuple) and all(c is not k for c, k in zip(clones, ks))
    _same(clones, ts)
    _same(kiln._foreach_pow(2.0, ks), torch._foreach_pow(2.0, ts), 1e-5)
    ka = [kiln.ones(2, 3), kiln.ones(3, 3) * 2]
    kb = [kiln.ones(3, 4), kiln.ones(3, 2)]
    ta = [torch.ones(2, 3), torch.ones(3, 3) * 2]
    tb = [torch.ones(3, 4), torch.ones(3, 2)]
    _same(kiln._foreach_mm(ka, kb), torch._foreach_mm(ta, tb))
    ks2, ts2 = _lists(11)
    assert kiln._foreach_copy_(ks, ks2) is ks
    torch._foreach_copy_(ts, ts2)
    _same(ks, ts)
    versions = [k._version[0] for k in ks]
    assert kiln._foreach_zero_(ks) is ks
    assert all(k._version[0] > v for k, v in zip(ks, versions))
    assert all(float(k.abs().sum()) == 0.0 for k in ks)


def test_out_of_place_forms_are_differentiable():
    ks, ts = _lists(12)
    k1, t1 = _lists(13, positive=True)
    # torch's foreach backward cannot take 0-d tensors ("select() cannot be applied to a
    # 0-dim tensor"): the 1-d and 2-d elements only
    ks, ts, k1, t1 = ks[:2], ts[:2], k1[:2], t1[:2]
    for k, t in zip(ks + k1, ts + t1):
        k.requires_grad_()
        t.requires_grad_()
    for lib, xs, ys in ((kiln, ks, k1), (torch, ts, t1)):
        outs = lib._foreach_addcdiv(lib._foreach_mul(xs, ys), xs, ys, 0.5)
        outs = lib._foreach_lerp(outs, lib._foreach_exp(xs), 0.25)
        sum(o.sum() for o in outs).backward()
    _same([k.grad for k in ks + k1], [t.grad for t in ts + t1], 1e-5)


def test_bad_lists_are_refused_clearly():
    ks, _ = _lists(14)
    with pytest.raises(RuntimeError, match="_foreach_add: tensor lists must have the same "
                       "number of tensors, got 3 and 2"):
        kiln._foreach_add(ks, ks[:2])
    with pytest.raises(TypeError, match="argument 'self' must be a list of tensors"):
        kiln._foreach_exp(ks[0])
    with pytest.raises(TypeError, match="unexpected keyword argument 'alpha'"):
        kiln._foreach_mul(ks, 2.0, alpha=2)


@pytest.mark.parametrize("compiled", [False, True])
def test_an_ema_of_the_weights_as_users_keep_one(compiled):
    # an exponential moving average of the weights, as diffusion and self-supervised training
    # scripts keep one, updated after each optimizer step; kiln starts from torch's weights
    model = kiln.nn.Sequential(kiln.nn.Linear(4, 8), kiln.nn.Tanh(), kiln.nn.Linear(8, 2))
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    model.load_state_dict({k: kiln.tensor(v.numpy()) for k, v in ref.state_dict().items()})
    ema = [p.detach().clone() for p in model.parameters()]
    t_ema = [p.detach().clone() for p in ref.parameters()]
    opt = kiln.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    t_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    x = np.linspace(-1, 1, 24, dtype=np.float32).reshape(6, 4)

    def step():
        opt.zero_grad()
        loss = model(kiln.tensor(x)).pow(2).mean()
        loss.backward()
        opt.step()
        with kiln.no_grad():
            kiln._foreach_lerp_(ema, list(model.parameters()), 0.1)
        return loss
    run = kiln.compile(step) if compiled else step
    for _ in range(5):
        loss = run()
        t_opt.zero_grad()
        t_loss = ref(torch.tensor(x)).pow(2).mean()
        t_loss.backward()
        t_opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(t_ema, list(ref.parameters()), 0.1)
        assert float(loss) == pytest.approx(t_loss.item(), rel=1e-5)
    _same(ema, t_ema, 1e-5)

"""kiln.optim.swa_utils against torch.optim.swa_utils: averaged weights after the same updates,
SWALR's rates step for step, update_bn's statistics, and the SWA tutorial's training loop."""

import warnings

import numpy as np
import pytest
import torch

import kiln
from tests.nn.layer_parity import torch_to_kiln_state


def _np(t):
    return t.detach().cpu().numpy()


def _net(nn):
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def _twins(make=_net, seed=0):
    torch.manual_seed(seed)
    t_model = make(torch.nn)
    k_model = make(kiln.nn)
    k_model.load_state_dict(torch_to_kiln_state(t_model))
    return t_model, k_model


def _assert_state_equal(k_module, t_module, rtol=1e-6, atol=1e-7):
    assert list(k_module.state_dict()) == list(t_module.state_dict())
    for key, value in t_module.state_dict().items():
        k_value = k_module.state_dict()[key]
        assert k_value.dtype.name == str(value.dtype).replace("torch.", ""), key
        np.testing.assert_allclose(_np(k_value), _np(value), rtol=rtol, atol=atol, err_msg=key)


def _perturb_both(t_model, k_model, rng):
    """Move both models to the same new weights and buffers (as training steps would)."""
    new = {}
    for key, value in t_model.state_dict().items():
        if value.dtype.is_floating_point:
            new[key] = (value.numpy() + rng.standard_normal(value.shape)).astype(np.float32)
        else:
            new[key] = np.asarray(value.numpy() + rng.integers(1, 4))
    t_model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in new.items()})
    k_model.load_state_dict({k: kiln.tensor(v.copy()) for k, v in new.items()})


AVERAGINGS = {
    "swa": {},
    "swa-buffers": {"use_buffers": True},
    "ema-multi": {"multi_avg_fn": lambda m: m.get_ema_multi_avg_fn(0.9)},
    "ema-multi-buffers": {"multi_avg_fn": lambda m: m.get_ema_multi_avg_fn(0.75),
                          "use_buffers": True},
    "ema-avg": {"avg_fn": lambda m: m.get_ema_avg_fn(0.8)},
    "swa-multi": {"multi_avg_fn": lambda m: m.get_swa_multi_avg_fn()},
    "swa-avg-buffers": {"avg_fn": lambda m: m.get_swa_avg_fn(), "use_buffers": True},
}


@pytest.mark.parametrize("name", AVERAGINGS)
def test_averaged_model_matches_torch(name):
    t_model, k_model = _twins()
    averaged = {}
    for lib, model in ((torch, t_model), (kiln, k_model)):
        kwargs = {key: (value(lib.optim.swa_utils) if callable(value) else value)
                  for key, value in AVERAGINGS[name].items()}
        averaged[lib] = lib.optim.swa_utils.AveragedModel(model, **kwargs)
    t_avg, k_avg = averaged[torch], averaged[kiln]
    assert [n for n, _ in k_avg.named_parameters()] == [n for n, _ in t_avg.named_parameters()]
    assert [n for n, _ in k_avg.named_buffers()] == [n for n, _ in t_avg.named_buffers()]
    rng = np.random.default_rng(1)
    for _ in range(5):
        _perturb_both(t_model, k_model, rng)
        t_avg.update_parameters(t_model)
        k_avg.update_parameters(k_model)
        _assert_state_equal(k_avg, t_avg)
    assert int(k_avg.n_averaged) == 5
    # the copy is its own: the model's weights are not the average's
    assert not np.allclose(_np(k_avg.module[0].weight), _np(k_model[0].weight))
    x = rng.standard_normal((5, 4)).astype(np.float32)
    for mode in ("train", "eval"):
        getattr(t_avg, mode)()
        getattr(k_avg, mode)()
        np.testing.assert_allclose(_np(k_avg(kiln.tensor(x))), _np(t_avg(torch.tensor(x))),
                                   rtol=1e-5, atol=1e-6)


def test_averaged_model_rejects_two_averaging_functions():
    swa_utils = kiln.optim.swa_utils
    with pytest.raises(AssertionError, match="Only one of avg_fn and multi_avg_fn"):
        swa_utils.AveragedModel(kiln.nn.Linear(2, 2), avg_fn=swa_utils.get_swa_avg_fn(),
                                multi_avg_fn=swa_utils.get_swa_multi_avg_fn())


@pytest.mark.parametrize("decay", [-0.1, 1.5])
def test_ema_decay_out_of_range_raises(decay):
    for make in (kiln.optim.swa_utils.get_ema_avg_fn, kiln.optim.swa_utils.get_ema_multi_avg_fn):
        with pytest.raises(ValueError, match=r"\[0,1\] range"):
            make(decay)


def test_averaging_functions_match_torch():
    rng = np.random.default_rng(2)
    a, b = (rng.standard_normal((3, 4)).astype(np.float32) for _ in range(2))
    for n in (1, 4):
        for lib_fns in ("get_swa_avg_fn", "get_ema_avg_fn"):
            t_out = getattr(torch.optim.swa_utils, lib_fns)()(torch.tensor(a), torch.tensor(b),
                                                              torch.tensor(n))
            k_out = getattr(kiln.optim.swa_utils, lib_fns)()(kiln.tensor(a), kiln.tensor(b),
                                                             kiln.tensor(n))
            np.testing.assert_allclose(_np(k_out), _np(t_out), rtol=1e-6, err_msg=lib_fns)
        for lib_fns in ("get_swa_multi_avg_fn", "get_ema_multi_avg_fn"):
            t_list, k_list = [torch.tensor(a)], [kiln.tensor(a)]
            getattr(torch.optim.swa_utils, lib_fns)()(t_list, [torch.tensor(b)], torch.tensor(n))
            getattr(kiln.optim.swa_utils, lib_fns)()(k_list, [kiln.tensor(b)], kiln.tensor(n))
            # (torch's lerp takes the other form at weight >= 0.5: an ulp apart)
            np.testing.assert_allclose(_np(k_list[0]), _np(t_list[0]), rtol=1e-6, atol=1e-7,
                                       err_msg=lib_fns)


# ------------------------------------------------------------------------------------ SWALR

def _lr_sequence(lib, make, steps=25, lrs=(0.1, 0.02)):
    groups = [{"params": [lib.zeros(2, requires_grad=True)], "lr": lr} for lr in lrs]
    opt = lib.optim.SGD(groups, lr=lrs[0], momentum=0.9)
    step = make(lib.optim, opt)
    seq = [[g["lr"] for g in opt.param_groups]]
    for epoch in range(steps):
        opt.step()
        step(epoch)
        seq.append([g["lr"] for g in opt.param_groups])
    return seq


def _check_lrs(make, **kwargs):
    k, t = _lr_sequence(kiln, make, **kwargs), _lr_sequence(torch, make, **kwargs)
    for epoch, (ks, ts) in enumerate(zip(k, t)):
        assert ks == pytest.approx(ts, rel=1e-12, abs=1e-15), f"epoch {epoch}: {ks} != {ts}"


def _swalr_alone(**kwargs):
    def make(optim, opt):
        sched = optim.swa_utils.SWALR(opt, **kwargs)
        return lambda epoch: sched.step()
    return make


SWALRS = {
    "cos": {"swa_lr": 0.05},
    "linear": {"swa_lr": 0.05, "anneal_strategy": "linear", "anneal_epochs": 7},
    "cos-per-group": {"swa_lr": [0.3, 0.001], "anneal_epochs": 4},
    "linear-1-epoch": {"swa_lr": 0.01, "anneal_strategy": "linear", "anneal_epochs": 1},
    "no-annealing": {"swa_lr": 0.01, "anneal_epochs": 0},
}


@pytest.mark.parametrize("name", SWALRS)
def test_swalr_matches_torch(name):
    _check_lrs(_swalr_alone(**SWALRS[name]))


@pytest.mark.parametrize("strategy", ["cos", "linear"])
def test_swalr_after_cosine_annealing_as_in_the_tutorial(strategy):
    def make(optim, opt):
        schedule = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20)
        swa = optim.swa_utils.SWALR(opt, swa_lr=0.04, anneal_epochs=5,
                                    anneal_strategy=strategy)

        def step(epoch):
            if epoch > 8:
                swa.step()
            else:
                schedule.step()
        return step
    _check_lrs(make)


def test_swalr_state_dict_round_trip_and_last_lr():
    def build(lib):
        opt = lib.optim.SGD([lib.zeros(2, requires_grad=True)], lr=0.1)
        return opt, lib.optim.swa_utils.SWALR(opt, swa_lr=0.01, anneal_epochs=6,
                                              anneal_strategy="linear")
    opt, sched = build(kiln)
    t_opt, t_sched = build(torch)
    for _ in range(2):
        opt.step()
        t_opt.step()
        sched.step()
        t_sched.step()
    state = sched.state_dict()
    assert "optimizer" not in state and state["_anneal_strategy"] == "linear"
    opt2, sched2 = build(kiln)
    sched2.load_state_dict(state)
    opt2.param_groups[0]["lr"] = opt.param_groups[0]["lr"]
    for _ in range(6):
        sched.step()
        sched2.step()
        t_sched.step()
        assert sched2.get_last_lr() == sched.get_last_lr() == pytest.approx(
            t_sched.get_last_lr(), rel=1e-12)
    assert opt.param_groups[0]["swa_lr"] == 0.01


@pytest.mark.parametrize("kwargs,match", [({"anneal_strategy": "exp"}, "'cos' or 'linear'"),
                                          ({"anneal_epochs": -1}, "equal or greater than 0"),
                                          ({"anneal_epochs": 2.5}, "equal or greater than 0"),
                                          ({"swa_lr": [0.1, 0.2]}, "same length")])
def test_swalr_bad_arguments_raise(kwargs, match):
    opt = kiln.optim.SGD([kiln.zeros(2, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match=match):
        kiln.optim.swa_utils.SWALR(opt, **{"swa_lr": 0.05, **kwargs})


def test_swalr_stepped_inside_a_compiled_step_matches_eager():
    def run(compiled):
        kiln.manual_seed(0)
        model = kiln.nn.Sequential(kiln.nn.Linear(6, 8), kiln.nn.Tanh(), kiln.nn.Linear(8, 3))
        opt = kiln.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        sched = kiln.optim.swa_utils.SWALR(opt, swa_lr=0.02, anneal_epochs=4)

        def step(x, y):
            loss = kiln.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            return loss
        fn = kiln.compile(step) if compiled else step
        x, y = kiln.randn(10, 6), kiln.randint(0, 3, (10,))
        losses, lrs = [], []
        for _ in range(8):
            losses.append(fn(x, y).item())
            lrs.append(opt.param_groups[0]["lr"])
        return losses, lrs, [_np(p) for p in model.parameters()], fn
    eager_losses, eager_lrs, eager_params, _ = run(False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        losses, lrs, params, fn = run(True)
    assert lrs == pytest.approx(eager_lrs, rel=1e-12)
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-5)
    for p, q in zip(params, eager_params):
        np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-7)
    assert sum(e.calls for e in fn.entries.values()) >= 6      # replayed, not run eagerly



@pytest.mark.parametrize("name", AVERAGINGS)
def test_averaged_model_updated_in_a_compiled_step_compiles_whole_and_matches_torch(name):
    # update_parameters read its count into Python (`int(n_averaged) == 0`): a compiled train
    # step calling it broke the graph and ran eagerly
    t_model, k_model = _twins()
    kwargs = {key: (value(kiln.optim.swa_utils) if callable(value) else value)
              for key, value in AVERAGINGS[name].items()}
    k_avg = kiln.optim.swa_utils.AveragedModel(k_model, **kwargs)
    t_avg = torch.optim.swa_utils.AveragedModel(t_model, **{
        key: (value(torch.optim.swa_utils) if callable(value) else value)
        for key, value in AVERAGINGS[name].items()})
    t_opt = torch.optim.SGD(t_model.parameters(), lr=0.1, momentum=0.9)
    k_opt = kiln.optim.SGD(k_model.parameters(), lr=0.1, momentum=0.9)

    def step(lib, model, opt, avg, x, y):
        opt.zero_grad()
        loss = lib.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        avg.update_parameters(model)
        return loss

    compiled = kiln.compile(lambda x, y: step(kiln, k_model, k_opt, k_avg, x, y))
    rng = np.random.default_rng(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(5):
            x = rng.standard_normal((8, 4)).astype(np.float32)
            y = rng.integers(0, 3, 8)
            t_loss = step(torch, t_model, t_opt, t_avg, torch.tensor(x), torch.tensor(y))
            k_loss = compiled(kiln.tensor(x), kiln.tensor(y))
            np.testing.assert_allclose(k_loss.item(), t_loss.item(), rtol=1e-5)
    _assert_state_equal(k_avg, t_avg, rtol=1e-5, atol=1e-6)
    assert int(k_avg.n_averaged) == 5
    assert sum(e.calls for e in compiled.entries.values()) >= 3     # replayed, not eager


# -------------------------------------------------------------------------------- update_bn

def _loader(lib, x, y, batch_size=8):
    data = lib.utils.data.TensorDataset(lib.tensor(x), lib.tensor(y))
    return lib.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)


def _conv_net(nn):
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4, momentum=0.3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 4 * 4, 5), nn.BatchNorm1d(5), nn.Linear(5, 2))


@pytest.mark.parametrize("training", [True, False])
def test_update_bn_matches_torch(training):
    t_model, k_model = _twins(_conv_net)
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((30, 2, 6, 6)) * 3 + 1).astype(np.float32)
    y = rng.integers(0, 2, 30)
    t_model.train(training)
    k_model.train(training)
    torch.optim.swa_utils.update_bn(_loader(torch, x, y), t_model)
    kiln.optim.swa_utils.update_bn(_loader(kiln, x, y), k_model)
    _assert_state_equal(k_model, t_model, rtol=1e-5, atol=1e-6)
    assert int(k_model[1].num_batches_tracked) == 4
    assert k_model[1].momentum == 0.3 and k_model[5].momentum == 0.1
    assert k_model.training is training and k_model[1].training is training


def test_update_bn_takes_plain_tensor_batches_and_skips_models_without_batchnorm():
    t_model, k_model = _twins()
    rng = np.random.default_rng(4)
    batches = [rng.standard_normal((6, 4)).astype(np.float32) for _ in range(3)]
    torch.optim.swa_utils.update_bn([torch.tensor(b) for b in batches], t_model)
    kiln.optim.swa_utils.update_bn([kiln.tensor(b) for b in batches], k_model, device="cpu")
    _assert_state_equal(k_model, t_model, rtol=1e-5, atol=1e-6)
    plain = kiln.nn.Linear(2, 2)
    kiln.optim.swa_utils.update_bn([kiln.ones(1, 2)], plain)       # nothing to do, no error


# ------------------------------------------------------------------------- the SWA tutorial

def _tutorial(lib, initial_state, x, y, x_test, epochs=8, swa_start=4):
    """The pattern of PyTorch's SWA recipe: cosine annealing until swa_start, then SWALR and an
    AveragedModel updated every epoch, and update_bn at the end."""
    model = _net(lib.nn)
    model.load_state_dict({k: lib.tensor(v.copy()) for k, v in initial_state.items()})
    loader = _loader(lib, x, y, batch_size=10)
    opt = lib.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scheduler = lib.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    swa_model = lib.optim.swa_utils.AveragedModel(model)
    swa_scheduler = lib.optim.swa_utils.SWALR(opt, swa_lr=0.05, anneal_epochs=2)
    loss_fn = lib.nn.CrossEntropyLoss()
    for epoch in range(epochs):
        for inputs, targets in loader:
            opt.zero_grad()
            loss_fn(model(inputs), targets).backward()
            opt.step()
        if epoch > swa_start:
            swa_model.update_parameters(model)
            swa_scheduler.step()
        else:
            scheduler.step()
    lib.optim.swa_utils.update_bn(loader, swa_model)
    swa_model.eval()
    with lib.no_grad():
        return swa_model(lib.tensor(x_test)), swa_model


def test_swa_tutorial_training_matches_torch():
    torch.manual_seed(0)
    initial = {k: v.numpy().copy() for k, v in _net(torch.nn).state_dict().items()}
    rng = np.random.default_rng(5)
    x = rng.standard_normal((40, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1)
    x_test = rng.standard_normal((16, 4)).astype(np.float32)
    t_pred, t_swa = _tutorial(torch, initial, x, y, x_test)
    k_pred, k_swa = _tutorial(kiln, initial, x, y, x_test)
    assert int(k_swa.n_averaged) == int(t_swa.n_averaged) == 3
    _assert_state_equal(k_swa, t_swa, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_np(k_pred), _np(t_pred), rtol=1e-5, atol=1e-6)

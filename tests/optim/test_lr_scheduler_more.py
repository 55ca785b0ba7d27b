"""The schedulers beyond the core set against torch's: the same rate (and momentum) sequences
step for step, state_dict round trips, and fractional epochs for warm restarts."""

import math
import warnings

import numpy as np
import pytest
import torch

import kiln
from tests.optim.test_lr_scheduler import _check, _optimizer

SCHEDULES = {
    "MultiplicativeLR": lambda m, o: m.MultiplicativeLR(o, lambda e: 0.9),
    "ConstantLR": lambda m, o: m.ConstantLR(o, factor=0.5, total_iters=4),
    "LinearLR": lambda m, o: m.LinearLR(o, start_factor=0.2, end_factor=0.9, total_iters=6),
    "PolynomialLR": lambda m, o: m.PolynomialLR(o, total_iters=8, power=2.0),
    "WarmRestarts": lambda m, o: m.CosineAnnealingWarmRestarts(o, T_0=4, eta_min=0.001),
    "WarmRestarts-mult": lambda m, o: m.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2),
    "CyclicLR": lambda m, o: m.CyclicLR(o, 0.01, 0.1, step_size_up=4),
    "CyclicLR-tri2": lambda m, o: m.CyclicLR(o, [0.01, 0.02], 0.1, step_size_up=3,
                                             step_size_down=5, mode="triangular2"),
    "CyclicLR-exp": lambda m, o: m.CyclicLR(o, 0.01, 0.1, step_size_up=3, mode="exp_range",
                                            gamma=0.9, cycle_momentum=False),
    "SequentialLR": lambda m, o: m.SequentialLR(
        o, [m.LinearLR(o, start_factor=0.1, total_iters=5), m.ExponentialLR(o, gamma=0.9)],
        milestones=[5]),
    "SequentialLR-3": lambda m, o: m.SequentialLR(
        o, [m.ConstantLR(o, factor=0.5, total_iters=3), m.StepLR(o, 3, 0.5),
            m.CosineAnnealingLR(o, T_max=6)], milestones=[4, 12]),
    "ChainedScheduler": lambda m, o: m.ChainedScheduler(
        [m.ConstantLR(o, factor=0.1, total_iters=3), m.ExponentialLR(o, gamma=0.9)]),
}


@pytest.mark.parametrize("name", SCHEDULES)
def test_sequence_matches_torch(name):
    _check(SCHEDULES[name])


def test_cyclic_lr_cycles_adam_betas_like_torch():
    _check(lambda m, o: m.CyclicLR(o, 0.001, 0.01, step_size_up=5), opt_name="Adam",
           opt_kwargs={})


def test_warm_restarts_with_fractional_epochs_match_torch():
    rates = {}
    for lib in (torch, kiln):
        opt = _optimizer(lib)
        sched = lib.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=3, T_mult=2)
        seq = []
        for epoch in range(6):
            for i in range(4):
                sched.step(epoch + i / 4)
                seq.append(opt.param_groups[0]["lr"])
        rates[lib.__name__] = seq
    assert rates["kiln"] == pytest.approx(rates["torch"], rel=1e-12)


@pytest.mark.parametrize("name", ["LinearLR", "CyclicLR", "SequentialLR", "ChainedScheduler"])
def test_state_dict_resume_continues_the_sequence(name):
    make = SCHEDULES[name]
    opt = _optimizer(kiln)
    sched = make(kiln.optim.lr_scheduler, opt)
    for _ in range(7):
        opt.step()
        sched.step()
    saved, lrs = sched.state_dict(), [g["lr"] for g in opt.param_groups]
    straight = []
    for _ in range(5):
        sched.step()
        straight.append(sched.get_last_lr())
    opt2 = _optimizer(kiln)
    sched2 = make(kiln.optim.lr_scheduler, opt2)
    sched2.load_state_dict(saved)
    for g, lr in zip(opt2.param_groups, lrs):
        g["lr"] = lr
    resumed = []
    for _ in range(5):
        sched2.step()
        resumed.append(sched2.get_last_lr())
    for a, b in zip(resumed, straight):
        assert a == pytest.approx(b, rel=1e-12)
    assert not math.isnan(resumed[-1][0])


def test_old_base_class_name_and_errors():
    assert kiln.optim.lr_scheduler._LRScheduler is kiln.optim.lr_scheduler.LRScheduler
    opt = _optimizer(kiln)
    with pytest.raises(ValueError, match="between 0 and 1"):
        kiln.optim.lr_scheduler.ConstantLR(opt, factor=2.0)
    with pytest.raises(ValueError, match="one more"):
        kiln.optim.lr_scheduler.SequentialLR(
            opt, [kiln.optim.lr_scheduler.ConstantLR(opt)], milestones=[3])


@pytest.mark.parametrize("schedule", ["LinearLR", "ExponentialLR", "StepLR"])
@pytest.mark.parametrize("compiled", [False, True])
def test_tensor_learning_rate_is_filled_in_place_and_compiles_correctly(schedule, compiled):
    """The compiling-optimizer-with-LR-scheduler recipe: Adam(lr=tensor) and a scheduler
    stepped inside the (compiled) step. The group's lr tensor is updated in place as in torch
    (initial_lr keeps its own copy), and the weights and rates follow torch's step by step;
    compiled (the scheduler's read of the rate is a graph break, so the step runs eagerly)
    they still do."""
    kwargs = {"LinearLR": dict(total_iters=4), "ExponentialLR": dict(gamma=0.8),
              "StepLR": dict(step_size=2, gamma=0.5)}[schedule]
    results = {}
    for lib in (torch, kiln):
        m = lib.nn.Linear(3, 1)
        with lib.no_grad():
            m.weight.fill_(0.5)
            m.bias.fill_(0.1)
        lr = lib.tensor(0.01)
        opt = lib.optim.Adam(m.parameters(), lr=lr)
        sched = getattr(lib.optim.lr_scheduler, schedule)(opt, **kwargs)

        def step():
            opt.step()
            sched.step()
        if lib is kiln and compiled:
            step = kiln.compile(step)
        trail = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(6):
                m(lib.ones(4, 3)).pow(2).sum().backward()
                step()
                opt.zero_grad()
                trail.append([m.weight.sum().item(), float(opt.param_groups[0]["lr"])])
        assert opt.param_groups[0]["lr"] is lr
        results[lib.__name__] = trail, float(opt.param_groups[0]["initial_lr"])
    np.testing.assert_allclose(results["kiln"][0], results["torch"][0], rtol=1e-6)
    assert results["kiln"][1] == results["torch"][1]


def _scheduler_makers(lib):
    S = lib.optim.lr_scheduler
    return {"StepLR": lambda o: S.StepLR(o, 2), "MultiStepLR": lambda o: S.MultiStepLR(o, [1, 3]),
            "CosineAnnealingLR": lambda o: S.CosineAnnealingLR(o, 5),
            "LinearLR": lambda o: S.LinearLR(o), "PolynomialLR": lambda o: S.PolynomialLR(o),
            "OneCycleLR": lambda o: S.OneCycleLR(o, 1.0, total_steps=10),
            "OneCycleLR three phases": lambda o: S.OneCycleLR(o, 1.0, total_steps=10,
                                                              three_phase=True),
            "CosineAnnealingWarmRestarts": lambda o: S.CosineAnnealingWarmRestarts(o, 3)}


@pytest.mark.parametrize("name", list(_scheduler_makers(kiln)))
def test_scheduler_state_dicts_have_torchs_keys_and_values_and_load_from_torchs(name):
    # what_is_state_dict recipe pattern: print(scheduler.state_dict()) lacked
    # _get_lr_called_within_step, and OneCycleLR's phases were tuples where torch has dicts
    def run(lib, load=None):
        p = lib.nn.Parameter(lib.ones(2))
        opt = lib.optim.SGD([p], lr=0.1, momentum=0.9)
        sched = _scheduler_makers(lib)[name](opt)
        for _ in range(3):
            opt.step()
            sched.step()
        state = sched.state_dict()
        if load is not None:
            sched.load_state_dict(load)
        rates = []
        for _ in range(4):
            opt.step()
            sched.step()
            rates.append(sched.get_last_lr()[0])
        return state, rates
    t_state, t_rates = run(torch)
    k_state, k_rates = run(kiln)
    assert list(k_state) == list(t_state)
    for key, value in t_state.items():
        if key != "_step_count" or name != "CosineAnnealingWarmRestarts":  # torch's stays 0
            assert k_state[key] == value, key
    np.testing.assert_allclose(k_rates, t_rates, rtol=1e-12)
    _, k_loaded = run(kiln, load=dict(t_state))      # torch's state, loaded into kiln's
    np.testing.assert_allclose(k_loaded, t_rates, rtol=1e-12)

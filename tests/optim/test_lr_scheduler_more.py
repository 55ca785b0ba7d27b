"""The schedulers beyond the core set against torch's: the same rate (and momentum) sequences
step for step, state_dict round trips, and fractional epochs for warm restarts."""

import math

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

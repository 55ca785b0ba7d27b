"""kiln.optim.lr_scheduler against torch's: the same learning-rate sequences, step for step."""

import warnings

import pytest
import torch

import kiln
import kiln.optim  # noqa: F401

STEPS = 30


def _optimizer(lib, name="SGD", lrs=(0.1, 0.02), **kwargs):
    groups = [{"params": [lib.zeros(2, requires_grad=True)], "lr": lr} for lr in lrs]
    return getattr(lib.optim, name)(groups, lr=lrs[0], **kwargs)


def _sequence(lib, make, opt_name="SGD", opt_kwargs=None, steps=STEPS, metrics=None):
    opt = _optimizer(lib, opt_name, **(opt_kwargs or {}))
    sched = make(lib.optim.lr_scheduler, opt)
    seq = []
    for i in range(steps):
        opt.step()
        if metrics is None:
            sched.step()
        else:
            sched.step(metrics[i])
        momentum = [g.get("momentum", g.get("betas", (None,))[0]) for g in opt.param_groups]
        seq.append((list(sched.get_last_lr()), [g["lr"] for g in opt.param_groups], momentum))
    return seq


def _check(make, **kwargs):
    k = _sequence(kiln, make, **kwargs)
    t = _sequence(torch, make, **kwargs)
    for i, (ks, ts) in enumerate(zip(k, t)):
        for kv, tv in zip(ks, ts):
            assert kv == pytest.approx(tv, rel=1e-12, abs=1e-15), f"step {i}: {ks} != {ts}"


SCHEDULES = {
    "StepLR": lambda m, o: m.StepLR(o, step_size=4, gamma=0.5),
    "MultiStepLR": lambda m, o: m.MultiStepLR(o, milestones=[3, 10, 10, 20], gamma=0.3),
    "ExponentialLR": lambda m, o: m.ExponentialLR(o, gamma=0.9),
    "CosineAnnealingLR": lambda m, o: m.CosineAnnealingLR(o, T_max=7, eta_min=0.001),
    "LambdaLR": lambda m, o: m.LambdaLR(o, lambda e: 1.0 / (1 + e)),
    "LambdaLR-list": lambda m, o: m.LambdaLR(o, [lambda e: 0.95 ** e, lambda e: e % 3 + 1]),
    "OneCycleLR-cos": lambda m, o: m.OneCycleLR(o, max_lr=[1.0, 0.5], total_steps=STEPS),
    "OneCycleLR-linear": lambda m, o: m.OneCycleLR(o, max_lr=0.3, total_steps=STEPS + 5,
                                                   anneal_strategy="linear", pct_start=0.25),
    "OneCycleLR-3phase": lambda m, o: m.OneCycleLR(o, max_lr=0.3, epochs=3, steps_per_epoch=10,
                                                   three_phase=True, div_factor=10.0),
    "OneCycleLR-nomomentum": lambda m, o: m.OneCycleLR(o, max_lr=0.3, total_steps=STEPS,
                                                       cycle_momentum=False),
}


@pytest.mark.parametrize("name", SCHEDULES)
def test_sequence_matches_torch(name):
    opt_kwargs = {"momentum": 0.9} if name.startswith("OneCycle") else None
    _check(SCHEDULES[name], opt_kwargs=opt_kwargs)


def test_one_cycle_cycles_adam_beta1():
    _check(lambda m, o: m.OneCycleLR(o, max_lr=0.01, total_steps=STEPS, base_momentum=0.8),
           opt_name="Adam")


def test_one_cycle_without_momentum_support_raises():
    opt = _optimizer(kiln, "Adagrad")
    with pytest.raises(ValueError, match="momentum or beta1"):
        kiln.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)


def test_one_cycle_past_total_steps_raises():
    opt = _optimizer(kiln)
    sched = kiln.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=3,
                                               cycle_momentum=False)
    for _ in range(3):
        sched.step()
    with pytest.raises(ValueError, match="Tried to step 4 times"):
        sched.step()


METRICS = [1.0, 0.9, 0.9, 0.95, 0.91, 0.9, 0.89, 0.95, 1.0, 1.1, 1.2, 0.5, 0.5, 0.5, 0.5,
           0.49999, 0.4, 0.6, 0.7, 0.8, 0.8, 0.8, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(patience=1, factor=0.5),
    dict(mode="max", patience=2, threshold=0.05, cooldown=2),
    dict(patience=0, threshold_mode="abs", threshold=0.05, min_lr=[0.01, 0.005]),
    dict(patience=1, factor=0.5, min_lr=0.02, eps=1e-3),
])
def test_reduce_on_plateau_matches_torch(kwargs):
    _check(lambda m, o: m.ReduceLROnPlateau(o, **kwargs), metrics=METRICS)


def test_closed_form_step_with_epoch_matches_torch():
    for name in ("StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR"):
        seqs = []
        for lib in (kiln, torch):
            opt = _optimizer(lib)
            sched = SCHEDULES[name](lib.optim.lr_scheduler, opt)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                seqs.append([lr for e in (5, 2, 17, 9)
                             for lr in (sched.step(e), sched.get_last_lr())[1]])
        assert seqs[0] == pytest.approx(seqs[1], rel=1e-12), name


def test_state_dict_resumes_sequence():
    def run(split):
        opt = _optimizer(kiln)
        sched = kiln.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
        lrs = []
        for i in range(25):
            if i == split:
                saved_opt, saved = opt.state_dict(), sched.state_dict()
                opt = _optimizer(kiln)
                opt.load_state_dict(saved_opt)
                sched = kiln.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
                sched.load_state_dict(saved)
            opt.step()
            sched.step()
            lrs.append(sched.get_last_lr())
        return lrs
    assert run(split=12) == run(split=None)
    sd = kiln.optim.lr_scheduler.StepLR(_optimizer(kiln), 3).state_dict()
    tsd = torch.optim.lr_scheduler.StepLR(_optimizer(torch), 3).state_dict()
    assert set(sd) <= set(tsd) and sd["base_lrs"] == tsd["base_lrs"]


def test_resume_needs_initial_lr():
    with pytest.raises(KeyError, match="initial_lr"):
        kiln.optim.lr_scheduler.StepLR(_optimizer(kiln), 3, last_epoch=5)

"""The fused optimizer updates on cuda (kiln._fused_adam_/_fused_adamw_/_fused_sgd_, which Adam,
AdamW and SGD take on cuda parameters in eager mode): equal to the per-op update on the CPU and
to torch.optim, one launch and no host sync per step, no rebuild when the learning rate
changes, PyTorch-compatible state dicts, and the kernels build for sm_90 ahead of time.
GPU-marked tests run on the CPU under the fake CUDA (tests/test_fake_cuda.py)."""

import copy
import re

import numpy as np
import pytest
import torch

import kiln
import kiln.optim  # noqa: F401
from kiln.runtime import fused_optim, triton_launch

SHAPES = [(3, 5), (1500,), (7,)]        # one longer than a kernel block (1024)
STEPS = 4

ADAM_CASES = [
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.9), weight_decay=0.1)),
    ("Adam", dict(lr=0.01, amsgrad=True, maximize=True, weight_decay=0.05)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1)),
    ("AdamW", dict(lr=0.02, weight_decay=0.1, amsgrad=True, eps=1e-6)),
]
SGD_CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.5, maximize=True)),
]


def _initial(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, s).astype(dtype) for s in SHAPES]


def _grads(steps=STEPS, seed=1, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [[rng.normal(size=s).astype(dtype) for s in SHAPES] for _ in range(steps)]


def _run(lib, name, kwargs, grads, device="cpu", params=None, opt=None, schedule=True):
    """Feed `grads` to an optimizer of `lib` on `device`, with a scheduler changing the
    learning rate every step; returns the params and the optimizer."""
    if params is None:
        params = [lib.tensor(a, device=device, requires_grad=True) for a in _initial()]
    opt = opt or getattr(lib.optim, name)(params, **kwargs)
    sched = lib.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.7 ** k) if schedule else None
    for step in grads:
        opt.zero_grad()
        for p, g in zip(params, step):
            p.grad = lib.tensor(g, device=device)
        opt.step()
        if sched is not None:
            sched.step()
    return params, opt


def _numpy(t):
    return t.detach().cpu().numpy()


def _assert_close(kparams, others, rtol):
    for k, o in zip(kparams, others):
        np.testing.assert_allclose(_numpy(k), _numpy(o), rtol=rtol, atol=rtol * 1e-1)


@pytest.mark.gpu
@pytest.mark.parametrize("name,kwargs", ADAM_CASES + SGD_CASES,
                         ids=[f"{n}-{sorted(k)}" for n, k in ADAM_CASES + SGD_CASES])
def test_fused_update_matches_per_op_cpu_and_torch(name, kwargs):
    grads = _grads()
    update = fused_optim.ADAM if name != "SGD" else fused_optim.SGD
    before = update.launches
    cuda, copt = _run(kiln, name, kwargs, grads, "cuda")
    assert update.launches - before == STEPS            # one per step: the fused path ran
    cpu, _ = _run(kiln, name, kwargs, grads, "cpu")
    ref, topt = _run(torch, name, kwargs, grads)
    _assert_close(cuda, cpu, 1e-6)
    _assert_close(cuda, ref, 1e-5)
    # the state too, key for key, in torch's layout (step: a float32 scalar on the CPU)
    ks, ts = copt.state_dict(), topt.state_dict()
    assert ks["param_groups"] == ts["param_groups"]
    for i, tstate in ts["state"].items():
        assert ks["state"][i].keys() == tstate.keys()
        for key, tv in tstate.items():
            kv = ks["state"][i][key]
            assert kv.dtype.name == str(tv.dtype).replace("torch.", ""), key
            if key == "step":
                assert kv.device.type == "cpu" and kv.shape == ()
            else:
                assert kv.is_cuda
            np.testing.assert_allclose(_numpy(kv), tv.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.gpu
def test_float16_parameters_compute_in_float32_as_torch_fused():
    grads = _grads(dtype=np.float16)
    kw = dict(lr=0.01, weight_decay=0.1, amsgrad=True)
    params = [kiln.tensor(a, device="cuda", requires_grad=True)
              for a in _initial(dtype=np.float16)]
    kparams, _ = _run(kiln, "AdamW", kw, grads, "cuda", params=params)
    tparams = [torch.tensor(a, requires_grad=True) for a in _initial(dtype=np.float16)]
    tparams, _ = _run(torch, "AdamW", kw, grads, opt=torch.optim.AdamW(tparams, fused=True, **kw),
                      params=tparams)
    for k, t in zip(kparams, tparams):
        assert k.dtype is kiln.float16
        np.testing.assert_allclose(_numpy(k).astype(np.float32), _numpy(t).astype(np.float32),
                                   rtol=2e-3, atol=2e-3)


@pytest.mark.gpu
def test_one_launch_no_host_sync_and_no_rebuild_per_step(monkeypatch):
    from kiln.runtime.device import cupy_module
    from tests import fake_cuda
    if cupy_module() is not fake_cuda.cupy:
        pytest.skip("counts the fake CUDA's device calls and host transfers")
    params = [kiln.tensor(a, device="cuda", requires_grad=True) for a in _initial()]
    opt = kiln.optim.Adam(params, lr=0.01, amsgrad=True)
    sched = kiln.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    grads = [[kiln.tensor(g, device="cuda") for g in step] for step in _grads()]
    for p, g in zip(params, grads[0]):
        p.grad = g
    opt.step()                      # the first step makes the state
    sched.step()
    builds, compiled = fused_optim.ADAM.builds, len(triton_launch._COMPILED)
    calls, host = [], []
    real_device, real_host = fake_cuda._on_device, fake_cuda._host_access

    def on_device(run, args=(), writes=(), stream=None):
        if not getattr(fake_cuda._CURRENT, "inside", False):
            calls.append(run)
        return real_device(run, args, writes, stream)
    monkeypatch.setattr(fake_cuda, "_on_device", on_device)
    monkeypatch.setattr(fake_cuda, "_host_access", lambda what: host.append(what) or
                        real_host(what))
    for step in grads[1:]:
        for p, g in zip(params, step):
            p.grad = g
        opt.step()
        sched.step()
    steps = len(grads) - 1
    assert opt.param_groups[0]["lr"] == 0.01 * 0.5 ** len(grads)
    assert len(calls) == steps                                    # one launch per step
    assert host == ["copying host memory to the device"] * steps  # its table: no reads
    assert (fused_optim.ADAM.builds, len(triton_launch._COMPILED)) == (builds, compiled)
    # and the result is the per-op update's on the CPU, with the same learning rates
    ref = [kiln.tensor(a, requires_grad=True) for a in _initial()]
    ropt = kiln.optim.Adam(ref, lr=0.01, amsgrad=True, foreach=False)
    rsched = kiln.optim.lr_scheduler.StepLR(ropt, step_size=1, gamma=0.5)
    for step in _grads():
        for p, g in zip(ref, step):
            p.grad = kiln.tensor(g)
        ropt.step()
        rsched.step()
    _assert_close(params, ref, 1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("name,kwargs", [("Adam", dict(lr=0.01, amsgrad=True)),
                                         ("AdamW", dict(lr=0.01, weight_decay=0.1)),
                                         ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True))])
def test_state_dict_round_trips_with_torch(name, kwargs):
    grads = _grads(steps=2 * STEPS)
    # kiln (fused, cuda) -> torch: torch continues as it would have
    kparams, kopt = _run(kiln, name, kwargs, grads[:STEPS], "cuda", schedule=False)
    ksd = kopt.state_dict()
    tsd = {"state": {i: {k: torch.tensor(_numpy(v)) for k, v in s.items()}
                     for i, s in ksd["state"].items()},
           "param_groups": copy.deepcopy(ksd["param_groups"])}
    tparams = [torch.tensor(_numpy(p), requires_grad=True) for p in kparams]
    topt = getattr(torch.optim, name)(tparams, **kwargs)
    topt.load_state_dict(tsd)
    straight, _ = _run(torch, name, kwargs, grads, schedule=False)
    _run(torch, name, kwargs, grads[STEPS:], params=tparams, opt=topt, schedule=False)
    _assert_close(tparams, straight, 1e-5)
    # torch -> kiln (fused, cuda): the step counts come to the CPU at load, kiln continues
    tparams, topt = _run(torch, name, kwargs, grads[:STEPS], schedule=False)
    tsd = topt.state_dict()
    ksd = {"state": {i: {k: kiln.tensor(v.numpy()) for k, v in s.items()}
                     for i, s in tsd["state"].items()},
           "param_groups": copy.deepcopy(tsd["param_groups"])}
    kparams = [kiln.tensor(_numpy(p), device="cuda", requires_grad=True) for p in tparams]
    kopt = getattr(kiln.optim, name)(kparams, **kwargs)
    kopt.load_state_dict(ksd)
    for state in kopt.state.values():
        assert state.get("step") is None or state["step"].device.type == "cpu"
    _run(kiln, name, kwargs, grads[STEPS:], "cuda", params=kparams, opt=kopt, schedule=False)
    _assert_close(kparams, straight, 1e-5)


@pytest.mark.gpu
def test_per_op_checkpoint_and_compiled_steps_meet_the_fused_update():
    """A kiln checkpoint of the per-op update (step count on cuda) continues fused; a compiled
    step after fused eager steps takes the per-op update in its program; all as on the CPU."""
    grads = _grads(steps=3 * STEPS)
    kw = dict(lr=0.01, weight_decay=0.1)
    straight, _ = _run(kiln, "AdamW", kw, grads, schedule=False)
    params, per_op = _run(kiln, "AdamW", dict(kw, foreach=False), grads[:STEPS], "cuda",
                          schedule=False)
    assert all(s["step"].is_cuda for s in per_op.state.values())
    saved = per_op.state_dict()      # as kiln saved them before the fused update: foreach None
    saved = dict(saved, param_groups=[dict(g, foreach=None) for g in saved["param_groups"]])
    opt = kiln.optim.AdamW(params, **kw)
    opt.load_state_dict(saved)
    assert all(not s["step"].is_cuda for s in opt.state.values())
    _run(kiln, "AdamW", kw, grads[STEPS:2 * STEPS], "cuda", params=params, opt=opt,
         schedule=False)
    assert all(not s["step"].is_cuda for s in opt.state.values())
    _assert_close(params, [kiln.tensor(_numpy(p)) for p in _run(
        kiln, "AdamW", kw, grads[:2 * STEPS], schedule=False)[0]], 1e-6)

    @kiln.compile
    def step(*gs):
        opt.zero_grad()
        for p, g in zip(params, gs):
            p.grad = g
        opt.step()
        return gs[0].sum()
    launches = fused_optim.ADAM.launches
    for gs in grads[2 * STEPS:]:
        step(*[kiln.tensor(g, device="cuda") for g in gs])
    assert fused_optim.ADAM.launches == launches        # traced and replayed: the per-op update
    _assert_close(params, straight, 1e-6)


@pytest.mark.gpu
def test_mixed_dtypes_devices_and_layouts_in_one_group():
    """float32 and float64 cuda parameters launch once per dtype; a CPU parameter and a
    non-contiguous one take the per-op update; a transposed gradient is made contiguous."""
    rng = np.random.default_rng(5)
    init = [rng.normal(size=(4, 6)).astype(np.float32), rng.normal(size=(9,)),
            rng.normal(size=(5,)).astype(np.float32), rng.normal(size=(6, 4)).astype(np.float32)]
    grads = [[rng.normal(size=a.shape[::-1] if i == 0 else a.shape).astype(a.dtype)
              for i, a in enumerate(init)] for _ in range(STEPS)]
    devices = ["cuda", "cuda", "cpu", "cuda"]

    def run(lib, on_gpu):
        params = [lib.tensor(a, device=d if on_gpu else "cpu", requires_grad=True)
                  for a, d in zip(init, devices)]
        if lib is kiln and on_gpu:      # a non-contiguous parameter (a transposed view's data)
            params[3] = kiln.tensor(init[3].T.copy(), device="cuda").t().detach()
            params[3].requires_grad_(True)
        opt = lib.optim.Adam(params, lr=0.01, weight_decay=0.1)
        for step in grads:
            for p, g in zip(params, step):
                g = lib.tensor(g, device=p.device)
                p.grad = g.t() if g.shape != p.shape else g
            opt.step()
        return params
    launches = fused_optim.ADAM.launches
    gpu = run(kiln, True)
    assert fused_optim.ADAM.launches - launches == 2 * STEPS
    _assert_close(gpu, run(kiln, False), 1e-6)
    _assert_close(gpu, run(torch, False), 1e-5)


@pytest.mark.gpu
def test_a_parameter_off_a_16_byte_boundary_takes_the_unaligned_kernel():
    memory = kiln.tensor(np.arange(1 + 1500, dtype=np.float32) / 1500, device="cuda")
    p = memory[1:].detach().requires_grad_(True)      # 4 bytes past an allocation's start
    q = kiln.tensor(p.detach().cpu().numpy(), requires_grad=True)
    kopt, copt = kiln.optim.Adam([p], lr=0.01), kiln.optim.Adam([q], lr=0.01)
    for g in _grads()[:2]:
        p.grad, q.grad = kiln.tensor(g[1], device="cuda"), kiln.tensor(g[1])
        kopt.step()
        copt.step()
    aligned = [dict(key[1])["ALIGNED"] for key in fused_optim.ADAM._launchers
               if key[2] == 2]
    assert 0 in aligned
    _assert_close([p], [q], 1e-6)


def test_fused_flags_choose_the_path_and_refuse_what_torch_refuses():
    p = kiln.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="differentiable"):
        kiln.optim.Adam([p], fused=True, differentiable=True)
    with pytest.raises(RuntimeError, match="cannot be `True` together"):
        kiln.optim.SGD([p], fused=True, foreach=True)
    # CPU parameters keep the per-op update whatever the flags (equal to torch's)
    grads = _grads()
    kparams, _ = _run(kiln, "Adam", dict(lr=0.01, fused=True), grads)
    tparams, _ = _run(torch, "Adam", dict(lr=0.01), grads)
    _assert_close(kparams, tparams, 1e-5)


def test_fused_ops_on_cpu_tensors_run_in_the_interpreter_as_the_per_op_update():
    """The ops themselves also take CPU tensors (Triton's interpreter; the optimizers keep the
    per-op update there): `kiln._fused_adamw_` and `_fused_sgd_` equal AdamW's and SGD's."""
    grads = _grads(steps=2)
    params = [kiln.tensor(a) for a in _initial()]
    exp_avgs, exp_avg_sqs = [kiln.zeros_like(p) for p in params], [kiln.zeros_like(p) for p in
                                                                   params]
    maxes, steps = [kiln.zeros_like(p) for p in params], [kiln.tensor(0.0) for _ in params]
    buffers = [kiln.empty_like(p) for p in params]
    sgd_params = [kiln.tensor(a) for a in _initial()]
    for k, step in enumerate(grads):
        for s in steps:
            s.add_(1)
        kiln._fused_adamw_(params, [kiln.tensor(g) for g in step], exp_avgs, exp_avg_sqs, maxes,
                           steps, lr=0.01, beta1=0.9, beta2=0.99, weight_decay=0.1, eps=1e-8,
                           amsgrad=True, maximize=True)
        kiln._fused_sgd_(sgd_params, [kiln.tensor(g) for g in step], buffers, weight_decay=0.1,
                         momentum=0.9, lr=0.1, dampening=0.0, nesterov=True, maximize=False,
                         is_first_step=k == 0)
    adamw, _ = _run(kiln, "AdamW", dict(lr=0.01, betas=(0.9, 0.99), weight_decay=0.1,
                                        amsgrad=True, maximize=True), grads, schedule=False)
    sgd, _ = _run(kiln, "SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
                  grads, schedule=False)
    _assert_close(params, adamw, 1e-6)
    _assert_close(sgd_params, sgd, 1e-6)


def test_fused_op_checks_its_arguments():
    a, b = kiln.ones(3), kiln.ones(3, dtype=kiln.float64)
    step = kiln.tensor(1.0)
    kw = dict(lr=0.1, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8, amsgrad=False,
              maximize=False)
    with pytest.raises(ValueError, match=r"grads\[0\] must match params\[0\]"):
        kiln._fused_adam_([a], [b], [kiln.zeros(3)], [kiln.zeros(3)], [], [step], **kw)
    with pytest.raises(ValueError, match=r"exp_avg_sqs\[0\]"):
        kiln._fused_adam_([a], [kiln.ones(3)], [kiln.zeros(3)], [kiln.zeros(2)], [], [step],
                          **kw)
    with pytest.raises(TypeError, match="int64 are not supported"):
        kiln._fused_sgd_([kiln.ones(3, dtype=kiln.int64)], [kiln.ones(3, dtype=kiln.int64)], [],
                         weight_decay=0.0, momentum=0.0, lr=0.1, dampening=0.0,
                         nesterov=False, maximize=False, is_first_step=False)
    with pytest.raises(RuntimeError, match="leaf Variable"):
        kiln._fused_sgd_([kiln.ones(3, requires_grad=True)], [kiln.ones(3)], [],
                         weight_decay=0.0, momentum=0.0, lr=0.1, dampening=0.0,
                         nesterov=False, maximize=False, is_first_step=False)



def test_fused_kernels_build_for_sm90(tmp_path, monkeypatch, nvidia_backend):
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path))
    adam = dict(AMSGRAD=1, MAXIMIZE=1, WEIGHT_DECAY=2, ALIGNED=1)
    kernels = [fused_optim.render("adam", "float32", adam, 4),
               fused_optim.render("adam", "float16", dict(adam, AMSGRAD=0, WEIGHT_DECAY=1), 4),
               fused_optim.render("adam", "float64", dict(adam, ALIGNED=0), 4),
               fused_optim.render("sgd", "float32", dict(MOMENTUM=1, NESTEROV=1, MAXIMIZE=0,
                                                         WEIGHT_DECAY=1, ALIGNED=1), 4)]
    builds = triton_launch.build_for_gpu(kernels, arch=90, workers=2)
    for tk, b in zip(kernels, builds):
        assert ".target sm_90" in b.ptx and f".entry {tk.name}" in b.ptx
        assert b.cubin[:4] == b"\x7fELF"
        # full blocks of aligned arrays move 16 bytes at a time; float32 divides and takes
        # square roots correctly rounded (Triton's defaults are approximate)
        vectors = re.search(r"ld\.global\.v[24]\.b(32|64)", b.ptx) is not None
        assert vectors == bool(tk.constexprs["ALIGNED"]), tk.name
        assert "approx" not in b.ptx, tk.name

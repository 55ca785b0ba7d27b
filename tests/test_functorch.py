"""kiln.functorch (functorch's former API, which `kiln run` gives `import functorch`) against
torch's functorch: make_functional(_with_buffers) with jvp, grad and vmap, and
combine_state_for_ensemble, on the same weights and inputs."""

import warnings

import numpy as np
import pytest

import kiln
import kiln.functorch as kft
from tests.test_kiln_run import kiln_run, torch_run

torch = pytest.importorskip("torch")
ft = pytest.importorskip("functorch")


def _models(seed=0):
    torch.manual_seed(seed)
    t_model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4),
                                  torch.nn.Tanh(), torch.nn.Linear(4, 3))
    k_model = kiln.nn.Sequential(kiln.nn.Linear(5, 4), kiln.nn.BatchNorm1d(4), kiln.nn.Tanh(),
                                 kiln.nn.Linear(4, 3))
    k_model.load_state_dict({k: kiln.tensor(v.numpy()) for k, v in t_model.state_dict().items()})
    return k_model, t_model


def _close(k, t, tol=1e-6):
    np.testing.assert_allclose(k.detach().numpy(), t.detach().numpy(), rtol=tol, atol=tol)


def test_make_functional_with_buffers_and_jvp_match_functorch():
    # forward_ad_usage tutorial: func, params, buffers = ft.make_functional_with_buffers(model)
    # then ft.jvp(lambda params: func(params, buffers, input), (params,), (tangents,))
    k_model, t_model = _models()
    k_model.eval(), t_model.eval()         # (torch's jvp refuses a batch norm's running update)
    k_model[1].running_mean.fill_(0.25), t_model[1].running_mean.fill_(0.25)
    x = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        t_func, t_params, t_buffers = ft.make_functional_with_buffers(t_model)
        t_tangents = tuple(torch.ones_like(p) * 0.5 for p in t_params)
        t_out, t_jvp = ft.jvp(lambda ps: t_func(ps, t_buffers, torch.from_numpy(x)),
                              (t_params,), (t_tangents,))
    with pytest.warns(FutureWarning, match="functorch.make_functional_with_buffers"):
        k_func, k_params, k_buffers = kft.make_functional_with_buffers(k_model)
    assert k_func.param_names == ("0.weight", "0.bias", "1.weight", "1.bias", "3.weight",
                                  "3.bias")
    assert len(k_buffers) == len(t_buffers) == 3
    assert all(k is not p for k, p in zip(k_params, k_model.parameters()))   # a copy's
    k_tangents = tuple(kiln.ones_like(p) * 0.5 for p in k_params)
    with pytest.warns(FutureWarning, match="functorch.jvp"):
        k_out, k_jvp = kft.jvp(lambda ps: k_func(ps, k_buffers, kiln.tensor(x)),
                               (k_params,), (k_tangents,))
    _close(k_out, t_out)
    _close(k_jvp, t_jvp, 1e-5)
    for k, t in zip(k_buffers, t_buffers):
        _close(k, t)


def test_make_functional_grad_and_ensemble_vmap_match_functorch():
    torch.manual_seed(1)
    t_models = [torch.nn.Linear(3, 2) for _ in range(4)]
    k_models = [kiln.nn.Linear(3, 2) for _ in range(4)]
    for k, t in zip(k_models, t_models):
        k.load_state_dict({n: kiln.tensor(v.numpy()) for n, v in t.state_dict().items()})
    x = np.random.default_rng(1).standard_normal((5, 3)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        t_func, t_params = ft.make_functional(t_models[0])
        t_grads = ft.grad(lambda ps: t_func(ps, torch.from_numpy(x)).pow(2).sum())(t_params)
        t_efunc, t_eparams, t_ebuffers = ft.combine_state_for_ensemble(t_models)
        t_ens = ft.vmap(t_efunc, in_dims=(0, 0, None))(t_eparams, t_ebuffers,
                                                       torch.from_numpy(x))
        k_func, k_params = kft.make_functional(k_models[0])
        k_grads = kft.grad(lambda ps: k_func(ps, kiln.tensor(x)).pow(2).sum())(k_params)
        k_efunc, k_eparams, k_ebuffers = kft.combine_state_for_ensemble(k_models)
        k_ens = kft.vmap(k_efunc, in_dims=(0, 0, None))(k_eparams, k_ebuffers, kiln.tensor(x))
    for k, t in zip(k_grads, t_grads):
        _close(k, t, 1e-5)
    assert [tuple(p.shape) for p in k_eparams] == [tuple(p.shape) for p in t_eparams]
    assert [p.requires_grad for p in k_eparams] == [p.requires_grad for p in t_eparams]
    _close(k_ens, t_ens, 1e-6)
    with pytest.raises(RuntimeError, match="has buffers"):
        kft.make_functional(kiln.nn.BatchNorm1d(3))


def test_kiln_run_resolves_functorch(tmp_path):
    script = tmp_path / "uses_functorch.py"
    script.write_text(
        "import torch\nimport functorch as ft\n"
        "torch.manual_seed(0)\nmodel = torch.nn.Linear(3, 2)\n"
        "func, params = ft.make_functional(model)\n"
        "x = torch.arange(6.0).reshape(2, 3)\n"
        "out, tangent = ft.jvp(lambda ps: func(ps, x), (params,), "
        "(tuple(torch.ones_like(p) for p in params),))\n"
        "print(out.tolist(), tangent.tolist())\n")
    done = kiln_run(script, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        expected = torch_run(script, cwd=tmp_path)
    k_vals = [float(v) for v in done.stdout.replace("[", " ").replace("]", " ")
              .replace(",", " ").split()]
    t_vals = [float(v) for v in expected.replace("[", " ").replace("]", " ")
              .replace(",", " ").split()]
    np.testing.assert_allclose(k_vals, t_vals, rtol=1e-6)

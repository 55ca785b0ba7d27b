"""kiln.export: exported programs match eager, survive a save and a fresh process without the
model's code, follow a dynamic batch, and refuse what they cannot honour with clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import kiln
import kiln.export
import kiln.nn as nn
from kiln.serialization import CheckpointError
from tests.export.models import MODELS, build, eager

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _exported(name):
    model, make = build(name)
    return model, make, kiln.export.export(model, (make(3),), dynamic_shapes=({0: "batch"},))


def test_fresh_process_matches_eager(tmp_path):
    """Every model, saved, then loaded and run at batch 1 and 7 by a new Python process that
    has kiln but none of the tests' modules (so no model class or source)."""
    expected = {}
    for name in MODELS:
        model, make, ep = _exported(name)
        ep.save(tmp_path / f"{name}.kiln")
        for b in (1, 7):
            x = make(b, seed=b)
            np.save(tmp_path / f"{name}_{b}_in.npy", x.numpy())
            expected[name, b] = eager(model, x)
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import kiln, kiln.export
        for name in {list(MODELS)!r}:
            ep = kiln.export.load(name + ".kiln")
            for b in (1, 7):
                x = kiln.tensor(np.load(f"{{name}}_{{b}}_in.npy"))
                np.save(f"{{name}}_{{b}}_out.npy", ep(x).numpy())
        assert not [m for m in sys.modules if m == "tests" or m.startswith("tests.")]
        print("ran", len({list(MODELS)!r}))
    """)
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for (name, b), want in expected.items():
        got = np.load(tmp_path / f"{name}_{b}_out.npy")
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=f"{name} batch {b}")


@pytest.mark.parametrize("name", ["digits_cnn", "transformer"])
def test_compiled_route_matches_eager(name):
    model, make, ep = _exported(name)
    run = ep.compiled()
    for b in (1, 7):
        x = make(b, seed=b)
        np.testing.assert_allclose(run(x).numpy(), eager(model, x), rtol=0, atol=1e-5)
        np.testing.assert_array_equal(ep(x.numpy()).numpy(), ep(x).numpy())   # NumPy input


def test_specs_state_dict_and_guards():
    model, make, ep = _exported("digits_cnn")
    (spec,) = ep.input_specs
    assert spec.name == "x" and spec.dtype is kiln.float32 and spec.shape_text() == \
        "[batch, 1, 8, 8]"
    assert ep.output_specs[0].shape_text() == "[batch, 10]"
    assert set(ep.state_dict) == set(model.state_dict()) - {
        k for k in model.state_dict() if k.endswith("num_batches_tracked")}
    for k, t in ep.state_dict.items():
        np.testing.assert_array_equal(t.numpy(), model.state_dict()[k].numpy())
    assert any("eval mode" in g for g in ep.guards)
    x = make(2, seed=1)
    before = ep(x).numpy()
    with kiln.no_grad():
        model.classifier[4].weight.add_(1.0)       # training goes on after the export
    np.testing.assert_array_equal(ep(x).numpy(), before)
    assert model.training is False       # build() put it in eval mode; export restores flags
    model.train()
    kiln.export.export(model, (make(2),))
    assert model.training and model.features[1].training


def test_static_program_and_pytree_outputs():
    lin = nn.Linear(4, 3)

    def fn(inputs, scale):
        a, b = inputs["a"], inputs["b"]
        y = lin(a) * scale
        return {"y": y, "pair": (y.sum(1), b + 1)}
    a, b = kiln.randn(2, 4), kiln.randn(5)
    ep = kiln.export.export(fn, ({"a": a, "b": b}, 2.0))
    out = ep({"a": a, "b": b}, 2.0)
    want = fn({"a": a, "b": b}, 2.0)
    np.testing.assert_allclose(out["y"].numpy(), want["y"].detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(out["pair"][0].numpy(), want["pair"][0].detach().numpy(),
                               atol=1e-6)
    np.testing.assert_array_equal(out["pair"][1].numpy(), want["pair"][1].numpy())
    assert "lin.weight" in ep.state_dict
    with pytest.raises(TypeError, match="exported for arguments"):
        ep({"a": a, "b": b}, 3.0)
    with pytest.raises(RuntimeError, match=r"input 'inputs.0' has shape \[3, 4\].*"
                                           r"expects \[2, 4\]"):
        ep({"a": kiln.randn(3, 4), "b": b}, 2.0)


def test_graph_break_is_an_error_naming_the_line():
    def branchy(x):
        if x.sum() > 0:           # the line the error names
            return x * 2
        return x
    line = branchy.__code__.co_firstlineno + 1
    with pytest.raises(RuntimeError, match=rf"cannot be exported as one graph.*"
                                           rf"test_export.py:{line}"):
        kiln.export.export(branchy, (kiln.randn(3),))


def test_wrong_shape_and_dtype_name_the_input():
    _, make, ep = _exported("digits_cnn")
    with pytest.raises(RuntimeError, match=r"input 'x' has shape \[2, 1, 9, 8\]; the exported "
                                           r"program expects \[batch, 1, 8, 8\]"):
        ep(kiln.randn(2, 1, 9, 8))
    with pytest.raises(RuntimeError, match=r"input 'x' has dtype float64; .* expects float32 "
                                           r"of shape \[batch, 1, 8, 8\]"):
        ep(kiln.randn(2, 1, 8, 8, dtype=kiln.float64))


def test_corrupt_and_foreign_files_raise_checkpoint_error(tmp_path):
    _, _, ep = _exported("mlp")
    path = tmp_path / "mlp.kiln"
    ep.save(path)
    data = bytearray(path.read_bytes())
    bad = tmp_path / "bad.kiln"
    data[-5] ^= 0xFF                          # a weight's byte: the checksum catches it
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        kiln.export.load(bad)
    bad.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated|header length"):
        kiln.export.load(bad)
    plain = tmp_path / "plain.kiln"
    kiln.save({"w": kiln.ones(2)}, plain)
    with pytest.raises(CheckpointError, match="not an exported program"):
        kiln.export.load(plain)


def test_newer_version_refused(tmp_path):
    _, _, ep = _exported("mlp")
    path = tmp_path / "v.kiln"
    kiln.save({"format": "kiln.export", "version": 99, "program": "{}", "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="version 99"):
        kiln.export.load(path)


def test_dynamic_batch_rewrites_view_of_traced_size():
    """`view(-1, 256)` traced at batch 3 is a reshape to (3, 256): the export writes it in terms
    of the batch, and the program runs at other batch sizes."""
    lin = nn.Linear(256, 4)

    def fn(x):
        return lin(x.view(-1, 256))
    ep = kiln.export.export(fn, (kiln.randn(3, 16, 16),), dynamic_shapes={"x": {0: "batch"}})
    (index, (ins, attrs)), = ep.templates.items()
    assert ep.graph.nodes[index].op == "reshape" and str(dict(attrs)["shape"][0]) == "batch"
    x = kiln.randn(5, 16, 16)
    with kiln.no_grad():
        np.testing.assert_allclose(ep(x).numpy(), fn(x).numpy(), atol=1e-6)


def test_dynamic_batch_refused_where_the_size_is_baked_in():
    lin = nn.Linear(16, 4)

    def fn(x):
        return lin(x).view(3, 8)          # 3 is the traced batch, written as a number
    line = fn.__code__.co_firstlineno + 1
    with pytest.raises(ValueError, match=rf"tracing at batch=4 .*failed.*test_export.py:{line}"):
        kiln.export.export(fn, (kiln.randn(3, 2, 16),), dynamic_shapes={"x": {0: "batch"}})

    def quadratic(x):
        n = x.shape[0]
        return x.reshape(1, -1).expand(n, -1).reshape(n * n * 2)
    line = quadratic.__code__.co_firstlineno + 2
    with pytest.raises(ValueError, match=rf"does not follow the dynamic size linearly.*"
                                         rf"reshape \(from .*test_export.py:{line}"):
        kiln.export.export(quadratic, (kiln.randn(3, 2),), dynamic_shapes={"x": {0: "batch"}})


def test_random_ops_are_refused():
    def noisy(x):
        return x + kiln.randn(3)
    with pytest.raises(RuntimeError, match="random"):
        kiln.export.export(noisy, (kiln.randn(3),))


def test_torch_export_dim_hints_and_module_level_save_load(tmp_path):
    # torch.export tutorial pattern: batch = torch.export.Dim("batch"), dynamic_shapes with it on
    # two inputs, torch.export.save / load (kiln had no Dim and no module-level save)
    import torch

    def two_inputs(lib):
        class TwoInputs(lib.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = lib.nn.Linear(6, 3)

            def forward(self, x, y):
                return lib.relu(self.lin(x + y))
        return TwoInputs()

    t_mod, k_mod = two_inputs(torch), two_inputs(kiln)
    k_mod.load_state_dict({k: kiln.tensor(v.detach().numpy())
                           for k, v in t_mod.state_dict().items()})
    ex = np.random.default_rng(0).normal(size=(2, 4, 6)).astype(np.float32)
    outs, reprs = {}, {}
    for lib, mod in ((kiln, k_mod), (torch, t_mod)):
        batch = lib.export.Dim("batch", max=64)
        reprs[lib.__name__] = [repr(batch), repr(lib.export.Dim("n", min=2, max=9)),
                               repr(lib.export.Dim("m", min=4))]
        ep = lib.export.export(mod, (lib.tensor(ex[0]), lib.tensor(ex[1])),
                               dynamic_shapes={"x": {0: batch, 1: lib.export.Dim.STATIC},
                                               "y": {0: batch}})
        lib.export.save(ep, str(tmp_path / f"{lib.__name__}.pt2"))
        back = lib.export.load(str(tmp_path / f"{lib.__name__}.pt2"))
        x = lib.tensor(np.arange(30, dtype=np.float32).reshape(5, 6) / 30)
        outs[lib.__name__] = back.module()(x, x * 2).detach().numpy()
    assert reprs["kiln"] == reprs["torch"]
    np.testing.assert_allclose(outs["kiln"], outs["torch"], rtol=1e-5, atol=1e-6)  # float32 sums
    with pytest.raises(ValueError, match="outside Dim\\('batch', min=0, max=3\\)'s range"):
        kiln.export.export(k_mod, (kiln.tensor(ex[0]), kiln.tensor(ex[1])),
                           dynamic_shapes={"x": {0: kiln.export.Dim("batch", max=3)}})


@pytest.mark.gpu
def test_export_of_a_model_on_cuda_with_a_dynamic_batch():
    """A model on the GPU exports with a dynamic batch (the example is resized on the device)
    and its program, which runs on the CPU, gives the eager model's values for cuda inputs."""
    kiln.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).to("cuda").eval()
    ep = kiln.export.export(model, (kiln.randn(3, 4, device="cuda"),),
                            dynamic_shapes=({0: "batch"},))
    x = kiln.randn(5, 4, device="cuda")
    got = ep.module()(x)
    assert got.device.type == "cpu" and tuple(got.shape) == (5, 2)
    np.testing.assert_allclose(got.numpy(), model(x).detach().cpu().numpy(), rtol=1e-5,
                               atol=1e-6)

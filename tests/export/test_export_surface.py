"""torch.export's surface on kiln, against torch.export on the same small modules: the
signature export(mod, args, kwargs, *, dynamic_shapes, strict), graph_signature,
range_constraints, graph_module, run_decompositions, unflatten, ShapesCollection, save/load,
and a module with a data-dependent torch.cond (the export tutorial's)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kiln
import kiln.export
from tests.parity import assert_close, random_array

TOL = dict(atol=1e-5, rtol=1e-5)


def scaled_linear(lib):
    """A tutorial-style module: a parameterised layer, a buffer, a keyword argument."""
    class ScaledLinear(lib.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lib.nn.Linear(3, 2)
            self.register_buffer("scale", lib.arange(1.0, 3.0))

        def forward(self, x, bias=None):
            return self.lin(x) * self.scale + bias, x.sum()
    return ScaledLinear()


def pair():
    """The same module in torch and kiln (kiln's weights copied into torch's)."""
    k_mod, t_mod = scaled_linear(kiln), scaled_linear(torch)
    t_mod.load_state_dict({n: torch.from_numpy(t.detach().numpy().copy())
                           for n, t in k_mod.state_dict().items()})
    return k_mod, t_mod


def data(batch, seed=0):
    x = random_array((batch, 3), rng=np.random.default_rng(seed))
    b = random_array((2,), rng=np.random.default_rng(seed + 1))
    return (torch.from_numpy(x), torch.from_numpy(b)), (kiln.tensor(x), kiln.tensor(b))


def export_both(strict=False):
    k_mod, t_mod = pair()
    (tx, tb), (kx, kb) = data(4)
    t_ep = torch.export.export(t_mod, (tx,), {"bias": tb}, strict=strict,
                               dynamic_shapes={"x": {0: torch.export.Dim("batch", min=2,
                                                                         max=64)},
                                               "bias": None})
    k_ep = kiln.export.export(k_mod, (kx,), {"bias": kb}, strict=strict,
                              dynamic_shapes={"x": {0: kiln.export.Dim("batch", min=2, max=64)},
                                              "bias": None})
    return k_ep, t_ep


def close(k, t, atol=1e-5, rtol=1e-5):
    assert len(k) == len(t)
    for i, (a, b) in enumerate(zip(k, t)):
        assert_close(a, b.detach(), atol, rtol, what=f"output {i}")


@pytest.mark.parametrize("strict", [False, True])
def test_export_with_kwargs_and_strict_runs_like_torch(strict):
    k_ep, t_ep = export_both(strict)
    for batch in (4, 9, 2):
        (tx, tb), (kx, kb) = data(batch, seed=batch)
        close(k_ep(kx, bias=kb), t_ep.module()(tx, bias=tb))
        close(k_ep.module()(kx, bias=kb), t_ep.module()(tx, bias=tb))


def test_dynamic_shapes_is_keyword_only_as_in_torch():
    k_mod, _ = pair()
    (_, _), (kx, kb) = data(4)
    with pytest.raises(TypeError, match="kwargs must be a dict.*dynamic_shapes is keyword-only"):
        kiln.export.export(k_mod, (kx, kb), ({0: "batch"}, None))
    with pytest.raises(NotImplementedError, match="preserve_module_call_signature"):
        kiln.export.export(k_mod, (kx, kb), preserve_module_call_signature=("lin",))


def test_graph_signature_matches_torch():
    k_ep, t_ep = export_both()
    k_sig, t_sig = k_ep.graph_signature, t_ep.graph_signature
    assert [(s.kind.name, s.arg.name, s.target, s.persistent) for s in k_sig.input_specs] == \
        [(s.kind.name, s.arg.name, s.target, s.persistent) for s in t_sig.input_specs]
    assert k_sig.user_inputs == t_sig.user_inputs
    assert k_sig.parameters == t_sig.parameters and k_sig.buffers == t_sig.buffers
    assert k_sig.inputs_to_parameters == t_sig.inputs_to_parameters
    assert k_sig.inputs_to_buffers == t_sig.inputs_to_buffers
    assert k_sig.buffers_to_mutate == t_sig.buffers_to_mutate
    # torch names outputs after their FX nodes, kiln after their position
    assert len(k_sig.user_outputs) == len(t_sig.user_outputs)
    assert [s.kind.name for s in k_sig.output_specs] == [s.kind.name for s in t_sig.output_specs]
    assert [n for n, _ in k_ep.named_parameters()] == [n for n, _ in t_ep.named_parameters()]
    # the printed listing: the inputs part equal to torch's (outputs are named differently)
    assert str(k_sig).split("# outputs")[0] == str(t_sig).split("# outputs")[0]
    assert [n for n, _ in k_ep.named_buffers()] == [n for n, _ in t_ep.named_buffers()]


def test_range_constraints_follow_the_dims_and_are_enforced():
    k_ep, t_ep = export_both()
    (t_range,), (k_range,) = t_ep.range_constraints.values(), k_ep.range_constraints.values()
    assert (k_range.lower, k_range.upper) == (int(t_range.lower), int(t_range.upper))
    (tx, tb), (kx, kb) = data(65)
    with pytest.raises(Exception):
        t_ep.module()(tx, bias=tb)
    with pytest.raises(RuntimeError, match="in \\[2, 64\\], got 65"):
        k_ep(kx, bias=kb)


def test_graph_module_takes_torchs_placeholders_and_computes_the_program():
    k_ep, t_ep = export_both()
    k_gm, t_gm = k_ep.graph_module, t_ep.graph_module

    def signature_line(code):
        return next(line.strip() for line in code.splitlines() if "def forward" in line)
    assert signature_line(k_gm.code) == signature_line(t_gm.code)
    (tx, tb), (kx, kb) = data(4, seed=3)
    t_lifted = [dict(t_ep.named_parameters(), **dict(t_ep.named_buffers()))[n]
                for n in t_ep.graph_signature.parameters + t_ep.graph_signature.buffers]
    k_lifted = [k_ep.state_dict[s.target] for s in k_ep.graph_signature.input_specs
                if s.target is not None]
    close(k_gm(*k_lifted, kx, kb), t_gm(*t_lifted, tx, tb))
    assert "kiln_ir_matmul" in str(k_gm.code)


def test_a_plain_tensor_attribute_is_a_lifted_constant_as_in_torch():
    def with_table(lib):
        class WithTable(lib.nn.Module):
            def __init__(self):
                super().__init__()
                self.table = lib.arange(6.0).reshape(2, 3)
                self.lin = lib.nn.Linear(3, 3)

            def forward(self, x):
                return self.lin(x * self.table)
        return WithTable()
    k_mod, t_mod = with_table(kiln), with_table(torch)
    t_mod.load_state_dict({n: torch.from_numpy(t.detach().numpy().copy())
                           for n, t in k_mod.state_dict().items()})
    x = random_array((2, 3))
    k_ep = kiln.export.export(k_mod, (kiln.tensor(x),))
    t_ep = torch.export.export(t_mod, (torch.from_numpy(x),))
    assert str(k_ep.graph_signature).split("# outputs")[0] == \
        str(t_ep.graph_signature).split("# outputs")[0]
    k_gm, t_gm = k_ep.graph_module, t_ep.graph_module
    k_lifted = [k_ep.state_dict[s.target] for s in k_ep.graph_signature.input_specs
                if s.target is not None]
    t_state = dict(t_ep.named_parameters(), **t_ep.constants)
    t_lifted = [t_state[s.target] for s in t_ep.graph_signature.input_specs
                if s.target is not None]
    close(k_gm(*k_lifted, kiln.tensor(x)), t_gm(*t_lifted, torch.from_numpy(x)))


def test_run_decompositions_gives_an_equivalent_program():
    k_ep, t_ep = export_both()
    k_dec, t_dec = k_ep.run_decompositions(), t_ep.run_decompositions()
    assert isinstance(k_dec, kiln.export.ExportedProgram)
    (tx, tb), (kx, kb) = data(5, seed=4)
    close(k_dec(kx, bias=kb), t_dec.module()(tx, bias=tb))


def test_unflatten_restores_the_module_tree_and_reads_its_weights():
    k_ep, t_ep = export_both()
    k_un, t_un = kiln.export.unflatten(k_ep), torch.export.unflatten(t_ep)
    assert [n for n, _ in k_un.named_parameters()] == [n for n, _ in t_un.named_parameters()]
    assert [n for n, _ in k_un.named_buffers()] == [n for n, _ in t_un.named_buffers()]
    (tx, tb), (kx, kb) = data(4, seed=5)
    close(k_un(kx, bias=kb), t_un(tx, bias=tb))
    with torch.no_grad(), kiln.no_grad():
        t_un.lin.weight.mul_(2.0)
        k_un.lin.weight.mul_(2.0)
    close(k_un(kx, bias=kb), t_un(tx, bias=tb))


def test_shapes_collection_builds_dynamic_shapes_like_torch():
    k_mod, t_mod = pair()
    (tx, tb), (kx, kb) = data(4)
    t_sc, k_sc = torch.export.ShapesCollection(), kiln.export.ShapesCollection()
    t_sc[tx] = {0: torch.export.Dim("rows")}
    k_sc[kx] = {0: kiln.export.Dim("rows")}
    t_spec = t_sc.dynamic_shapes(t_mod, (tx,), {"bias": tb})
    k_spec = k_sc.dynamic_shapes(k_mod, (kx,), {"bias": kb})
    assert list(k_spec) == list(t_spec) and k_spec["bias"] is t_spec["bias"] is None
    assert k_spec["x"][0].__name__ == t_spec["x"][0].__name__
    k_ep = kiln.export.export(k_mod, (kx,), {"bias": kb}, dynamic_shapes=k_spec)
    t_ep = torch.export.export(t_mod, (tx,), {"bias": tb}, dynamic_shapes=t_spec)
    (tx, tb), (kx, kb) = data(7, seed=6)
    close(k_ep(kx, bias=kb), t_ep.module()(tx, bias=tb))


def test_signature_and_ranges_survive_save_and_load(tmp_path):
    k_ep, _ = export_both()
    k_ep.save(tmp_path / "model.kiln")
    loaded = kiln.export.load(tmp_path / "model.kiln")
    assert loaded.graph_signature == k_ep.graph_signature
    assert loaded.range_constraints == k_ep.range_constraints


def test_exported_cond_module_matches_torch_export_for_both_predicates():
    def cond_module(lib):
        class DataDependent(lib.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = lib.nn.Linear(3, 3)

            def forward(self, x):
                def true_fn(x):
                    return self.lin(x).sin()

                def false_fn(x):
                    return self.lin(x).cos() * 2
                return lib.cond(x.sum() > 0, true_fn, false_fn, (x,))
        return DataDependent()
    k_mod, t_mod = cond_module(kiln), cond_module(torch)
    t_mod.load_state_dict({n: torch.from_numpy(t.detach().numpy().copy())
                           for n, t in k_mod.state_dict().items()})
    x = np.abs(random_array((4, 3)))
    k_ep = kiln.export.export(k_mod, (kiln.tensor(x),),
                              dynamic_shapes={"x": {0: kiln.export.Dim("batch")}})
    t_ep = torch.export.export(t_mod, (torch.from_numpy(x),),
                               dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    compiled = k_ep.compiled()
    for batch, sign in ((2, 1.0), (5, -1.0), (3, 1.0), (7, -1.0)):
        xs = np.abs(random_array((batch, 3), rng=np.random.default_rng(batch))) * sign
        expected = t_ep.module()(torch.from_numpy(xs)).detach()
        assert_close(k_ep(kiln.tensor(xs)), expected, **TOL)
        assert_close(compiled(kiln.tensor(xs)), expected, **TOL)


def test_checks_inside_an_exported_forward():
    def fn(x):
        kiln._check(x.shape[0] >= 2, lambda: "need two rows")
        kiln._check_is_size(x.shape[1])
        return x * 2
    ep = kiln.export.export(fn, (kiln.ones(3, 2),))
    assert_close(ep(kiln.ones(3, 2)), torch.ones(3, 2) * 2, **TOL)
    with pytest.raises(RuntimeError, match="need two rows"):
        kiln.export.export(fn, (kiln.ones(1, 2),))


def test_auto_and_dynamic_dims_that_must_be_equal_become_one_size_as_in_torch():
    def adder(lib):
        class Adder(lib.nn.Module):
            def forward(self, x, y):
                return (x + y).relu()
        return Adder()
    x, y = random_array((8, 4)), random_array((8, 4), rng=np.random.default_rng(9))
    k_ep = kiln.export.export(adder(kiln), (kiln.tensor(x), kiln.tensor(y)), strict=False,
                              dynamic_shapes={"x": {0: kiln.export.Dim.AUTO},
                                              "y": {0: kiln.export.Dim.DYNAMIC}})
    t_ep = torch.export.export(adder(torch), (torch.from_numpy(x), torch.from_numpy(y)),
                               strict=False,
                               dynamic_shapes={"x": {0: torch.export.Dim.AUTO},
                                               "y": {0: torch.export.Dim.DYNAMIC}})
    assert len(k_ep.range_constraints) == len(t_ep.range_constraints) == 1
    x, y = random_array((5, 4)), random_array((5, 4), rng=np.random.default_rng(10))
    assert_close(k_ep(kiln.tensor(x), kiln.tensor(y)),
                 t_ep.module()(torch.from_numpy(x), torch.from_numpy(y)), **TOL)
    with pytest.raises(RuntimeError, match="x_dim0 = 5 from the inputs before it"):
        k_ep(kiln.tensor(x), kiln.tensor(random_array((6, 4))))


def guarded(lib):
    """The export tutorial's module that branches on a size its Dim bounds."""
    class Guarded(lib.nn.Module):
        def forward(self, x, y):
            if x.shape[0] <= 16:
                return x @ y[:, :16]
            return y
    return Guarded()


def test_a_size_branch_inside_its_dims_bounds_exports_as_in_torch():
    # kiln probed the size at example + 1 and 2 * example + 3, past max=16: the `if` took the
    # other branch there and the export raised "the traced program changes"
    x, y = random_array((16, 6)), random_array((6, 20), rng=np.random.default_rng(3))
    eps = []
    for lib in (kiln, torch):
        shared = lib.export.Dim("shared")
        dims = {"x": {0: lib.export.Dim("x0", max=16), 1: shared},
                "y": {0: shared, 1: lib.export.Dim("y1", min=17)}}
        to = kiln.tensor if lib is kiln else torch.from_numpy
        eps.append(lib.export.export(guarded(lib), (to(x), to(y)), dynamic_shapes=dims))
    k_ep, t_ep = eps
    for rows, inner, cols in ((4, 3, 17), (16, 9, 40), (1, 6, 30)):
        a = random_array((rows, inner))
        b = random_array((inner, cols), rng=np.random.default_rng(rows))
        assert_close(k_ep.module()(kiln.tensor(a), kiln.tensor(b)),
                     t_ep.module()(torch.from_numpy(a), torch.from_numpy(b)), **TOL)
    with pytest.raises(RuntimeError, match=r"x0 in \[1, 16\], got 17"):
        k_ep.module()(kiln.tensor(random_array((17, 6))), kiln.tensor(y))


def test_module_is_an_nn_module_with_the_original_state_dict_names():
    k_ep, t_ep = export_both()
    k_mod, t_mod = k_ep.module(), t_ep.module()
    assert isinstance(k_mod, kiln.nn.Module) and isinstance(t_mod, torch.nn.Module)
    assert sorted(k_mod.state_dict()) == sorted(t_mod.state_dict())
    (tx, tb), (kx, kb) = data(5)
    for k_out, t_out in zip(k_mod(kx, bias=kb), t_mod(tx, bias=tb)):
        assert_close(k_out, t_out.detach(), **TOL)


def test_save_and_load_through_a_file_object_as_torch_export():
    import io
    k_ep, t_ep = export_both()
    outs = []
    for lib, ep in ((kiln, k_ep), (torch, t_ep)):
        buffer = io.BytesIO()
        lib.export.save(ep, buffer)
        buffer.seek(0)
        outs.append(lib.export.load(buffer).module())
    (tx, tb), (kx, kb) = data(5)
    for k_out, t_out in zip(outs[0](kx, bias=kb), outs[1](tx, bias=tb)):
        assert_close(k_out, t_out.detach(), **TOL)

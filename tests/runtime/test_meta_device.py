"""The meta device against PyTorch's: tensors with a shape and dtype but no data, ops that give
shapes without computing, clear errors where values are needed, and a meta module used as a
stateless template with functional_call (the model-ensembling tutorial's pattern)."""

import copy

import numpy as np
import pytest
import torch

import kiln
from kiln.func import functional_call
from kiln.runtime.device import MetaArray


def both(fn):
    return fn(kiln), fn(torch)


def test_meta_factories_and_metadata_match_torch():
    for make in (lambda lib: lib.empty(3, 4, device="meta"),
                 lambda lib: lib.zeros(2, 5, dtype=lib.float64, device="meta"),
                 lambda lib: lib.ones(7, device="meta", dtype=lib.int64),
                 lambda lib: lib.arange(6, device="meta"),
                 lambda lib: lib.ones(2, 3).to("meta")):
        k, t = both(make)
        assert tuple(k.shape) == tuple(t.shape)
        assert k.dtype.name == str(t.dtype).removeprefix("torch.")
        assert str(k.device) == str(t.device) == "meta"
        assert k.is_meta and t.is_meta and not k.is_cuda
        assert k.stride() == t.stride() and k.numel() == t.numel() and k.dim() == t.dim()
        assert isinstance(k._data, MetaArray)
        assert repr(k).replace("kiln.", "torch.") == repr(t)


def test_ops_on_meta_tensors_give_meta_results_of_torchs_shape_and_dtype():
    def run(lib):
        a = lib.empty(5, 4, device="meta")
        b = lib.empty(4, 3, device="meta", dtype=lib.float64)
        return [a @ b.float(), (a * 2 + 1).sum(0), a.t().reshape(2, 10), lib.softmax(a, -1),
                lib.cat([a, a], 1), a[1:, ::2], a.unsqueeze(0).expand(3, 5, 4), a > 0,
                a + lib.tensor(1.0)]          # a 0-d CPU tensor goes along with meta
    for k, t in zip(*both(run)):
        assert tuple(k.shape) == tuple(t.shape) and k.device.type == "meta"
        assert k.dtype.name == str(t.dtype).removeprefix("torch.")


def test_backward_through_meta_tensors_gives_meta_gradients():
    def run(lib):
        x = lib.empty(5, 3, device="meta", requires_grad=True)
        lin = lib.nn.Linear(3, 2).to("meta")
        lin(x).relu().sum().backward()
        return x.grad, lin.weight.grad, lin.bias.grad
    for k, t in zip(*both(run)):
        assert tuple(k.shape) == tuple(t.shape) and k.is_meta and t.is_meta


def test_reading_values_of_a_meta_tensor_raises_a_clear_error():
    t = kiln.empty(2, 3, device="meta")
    with pytest.raises(RuntimeError, match="cannot be called on meta tensors"):
        t.tolist()
    with pytest.raises(RuntimeError, match="cannot be called on meta tensors"):
        float(t[0, 0])
    with pytest.raises(TypeError, match="can't convert meta device type tensor to numpy"):
        t.numpy()
    with pytest.raises(NotImplementedError, match="Cannot copy out of meta tensor; no data!"):
        t.cpu()
    with pytest.raises(NotImplementedError, match="no data"):
        np.asarray(t._data)
    with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
        t + kiln.ones(2, 3)
    with pytest.raises(RuntimeError, match="Expected one of cpu, cuda, meta device type"):
        kiln.device("mps")
    # torch refuses the same things
    tt = torch.empty(2, 3, device="meta")
    with pytest.raises(NotImplementedError, match="Cannot copy out of meta tensor; no data!"):
        tt.cpu()


def mlp(lib, seed):
    rng = np.random.default_rng(seed)
    model = lib.nn.Sequential(lib.nn.Linear(4, 6), lib.nn.BatchNorm1d(6), lib.nn.ReLU(),
                              lib.nn.Linear(6, 3))
    with lib.no_grad():
        for p in model.parameters():
            p.copy_(lib.tensor(rng.uniform(-0.8, 0.8, tuple(p.shape)).astype(np.float32)))
    return model


def test_module_to_meta_is_a_stateless_template_for_functional_call_and_vmap():
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    results = []
    for lib, F in ((kiln, kiln.func), (torch, torch.func)):
        models = [mlp(lib, s) for s in range(3)]
        params, buffers = F.stack_module_state(models)
        base = copy.deepcopy(models[0]).to("meta")
        assert all(p.is_meta for p in base.parameters()) and base[1].running_mean.is_meta
        assert not models[0][0].weight.is_meta          # the copy went, not the original

        def fmodel(params, buffers, x):
            return F.functional_call(base, (params, buffers), (x,))
        out = F.vmap(fmodel, in_dims=(0, 0, None))(params, buffers, lib.tensor(x))
        assert base[0].weight.is_meta                   # put back after the call
        results.append(out.detach().numpy())
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-6)


def test_to_empty_gives_a_meta_module_real_storage_for_load_state_dict():
    source = mlp(kiln, 0)
    shell = copy.deepcopy(source).to("meta").to_empty(device="cpu")
    weight = shell[0].weight
    assert not weight.is_meta and tuple(weight.shape) == (6, 4) and weight.requires_grad
    shell.load_state_dict(source.state_dict())
    x = kiln.ones(2, 4)
    np.testing.assert_array_equal(shell.eval()(x).detach().numpy(),
                                  source.eval()(x).detach().numpy())
    assert shell[0].weight is weight                    # parameters keep their identity


def test_meta_parameters_deepcopy_and_state_dict_keep_shapes():
    base = kiln.nn.Linear(3, 2).to("meta")
    clone = copy.deepcopy(base)
    assert clone.weight.is_meta and tuple(clone.weight.shape) == (2, 3)
    assert {k: tuple(v.shape) for k, v in base.state_dict().items()} == \
        {"weight": (2, 3), "bias": (2,)}
    assert repr(base.weight) == ("Parameter containing:\ntensor(..., device='meta', "
                                 "size=(2, 3), requires_grad=True)")


def test_functional_call_of_a_meta_module_without_all_tensors_names_the_device():
    base = kiln.nn.Linear(3, 2).to("meta")
    with pytest.raises(RuntimeError, match="same device"):
        functional_call(base, {"weight": kiln.ones(2, 3)}, (kiln.ones(1, 3),))   # bias: meta


def test_modules_built_on_meta_train_a_step_of_shapes_like_torch():
    def run(lib):
        emb = lib.nn.Embedding(10, 4, device="meta")          # initialized in place: no-ops
        conv = lib.nn.Conv1d(4, 6, 3, device="meta")
        head = lib.nn.Linear(6, 5, device="meta")
        opt = lib.optim.SGD([*emb.parameters(), *conv.parameters(), *head.parameters()], lr=0.1)
        tokens = lib.zeros(2, 7, dtype=lib.int64, device="meta")
        h = conv(emb(tokens).transpose(1, 2)).relu().mean(-1)
        loss = lib.nn.functional.cross_entropy(head(h), lib.zeros(2, dtype=lib.int64,
                                                                  device="meta"))
        loss.backward()
        opt.step()
        x = lib.empty(3, device="meta")
        x.uniform_(-1, 1).add_(1).mul_(2)
        return [h, loss, emb.weight.grad, conv.weight, head.bias.grad, x]
    for k, t in zip(*both(run)):
        assert tuple(k.shape) == tuple(t.shape) and k.is_meta and t.is_meta


def test_a_device_block_builds_modules_and_tensors_there_like_torch():
    def run(lib):
        with lib.device("meta"):
            model = lib.nn.Sequential(lib.nn.Linear(3, 4), lib.nn.LayerNorm(4))
            made = [model[0].weight, model[1].bias, lib.zeros(2, 3), lib.tensor([1.0, 2.0])]
            with lib.device("cpu"):
                inner = lib.ones(2)
        return made, inner, lib.ones(1)
    (k_made, k_inner, k_after), (t_made, t_inner, t_after) = both(run)
    for k, t in zip(k_made, t_made):
        assert k.is_meta and t.is_meta and tuple(k.shape) == tuple(t.shape)
    for k, t in ((k_inner, t_inner), (k_after, t_after)):
        assert str(k.device) == str(t.device) == "cpu"
        np.testing.assert_array_equal(k.numpy(), t.numpy())


def test_a_meta_model_takes_real_weights_with_load_state_dict_assign():
    state = mlp(torch, 0).state_dict()
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    outputs = []
    for lib in (kiln, torch):
        with lib.device("meta"):
            model = lib.nn.Sequential(lib.nn.Linear(4, 6), lib.nn.BatchNorm1d(6),
                                      lib.nn.ReLU(), lib.nn.Linear(6, 3))
        given = state if lib is torch else {k: kiln.tensor(v.numpy()) for k, v in
                                            state.items()}
        model.load_state_dict(given, assign=True)
        assert not any(p.is_meta for p in model.parameters())
        outputs.append(model.eval()(lib.tensor(x)).detach().numpy())
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-6, atol=1e-6)


def test_to_empty_without_recursing_gives_storage_to_the_module_itself_only():
    model = kiln.nn.Sequential(kiln.nn.Linear(3, 2), kiln.nn.Linear(2, 1)).to("meta")
    model.register_parameter("scale", kiln.nn.Parameter(kiln.ones(2, device="meta")))
    model.to_empty(device="cpu", recurse=False)
    assert not model.scale.is_meta
    assert model[0].weight.is_meta and model[1].bias.is_meta
    tm = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1)).to("meta")
    tm.register_parameter("scale", torch.nn.Parameter(torch.ones(2, device="meta")))
    tm.to_empty(device="cpu", recurse=False)
    assert (tm.scale.is_meta, tm[0].weight.is_meta) == (model.scale.is_meta,
                                                        model[0].weight.is_meta)


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_recurrent_layers_on_the_meta_device_give_torchs_shapes(cls):
    shapes = []
    for lib in (kiln, torch):
        m = getattr(lib.nn, cls)(3, 4, 2, batch_first=True, bidirectional=True).to("meta")
        out, state = m(lib.randn(2, 5, 3, device="meta"))
        h = state[0] if cls == "LSTM" else state
        assert out.is_meta and h.is_meta
        shapes.append((tuple(out.shape), tuple(h.shape)))
    assert shapes[0] == shapes[1]


def test_a_meta_tensor_takes_a_memory_format_and_stays_meta():
    x = kiln.randn(1, 2, 3, 4, device="meta").to(memory_format=kiln.channels_last)
    model = kiln.nn.Conv2d(2, 3, 3).to("meta").to(memory_format=kiln.channels_last)
    assert x.is_meta and model.weight.is_meta and tuple(model.weight.shape) == (3, 2, 3, 3)


def test_random_factories_on_meta_draw_nothing_like_torch():
    # reasoning_about_shapes recipe: torch.rand(2**10, 3, 2**16, 2**16, device="meta") is only a
    # shape; drawing its 1.3e13 numbers ran out of memory, and meta draws leave the stream alone
    def run(lib):
        lib.manual_seed(0)
        huge = lib.rand(2 ** 10, 3, 2 ** 16, 2 ** 16, device="meta")
        made = [huge, lib.randn(4, 6, device="meta", dtype=lib.float64),
                lib.randn(3, device="meta", dtype=lib.complex64),
                lib.randint(0, 5, (2, 3), device="meta"), lib.randperm(7, device="meta"),
                lib.empty(3, 2, device="meta").uniform_(), lib.empty(5, device="meta").normal_(),
                lib.bernoulli(lib.empty(4, device="meta"), 0.5)]
        with lib.device("meta"):
            made.append(lib.nn.Linear(1 << 14, 1 << 14).weight)
        return made, lib.rand(3)
    (k_made, k_next), (t_made, t_next) = both(run)
    for k, t in zip(k_made, t_made):
        assert tuple(k.shape) == tuple(t.shape) and k.is_meta and t.is_meta
        assert k.dtype.name == str(t.dtype).removeprefix("torch.")
    np.testing.assert_array_equal(k_next.numpy(), t_next.numpy())


def test_meta_gradients_accumulate_over_backward_passes_as_torch():
    # a second backward added meta + meta with `+=`, which a MetaArray has no values for
    for lib in (torch, kiln):
        m = lib.nn.Conv1d(3, 2, 2, device="meta")
        x = lib.randn(4, 3, device="meta", requires_grad=True)
        for _ in range(2):
            (m(lib.randn(1, 3, 5, device="meta")).sum() + (x @ x.t()).sum()).backward()
        assert m.weight.grad.device.type == x.grad.device.type == "meta"
        assert tuple(m.weight.grad.shape) == (2, 3, 2) and tuple(x.grad.shape) == (4, 3)

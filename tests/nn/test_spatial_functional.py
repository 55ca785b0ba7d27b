"""The spatial functions and layers of `functional_spatial` against torch: values and gradients."""

import numpy as np
import pytest

from tests.nn.layer_parity import check_layer

LAYERS = [
    (lambda nn: nn.PixelShuffle(2), [(2, 8, 3, 5)]),
    (lambda nn: nn.PixelShuffle(3), [(9, 2, 2)]),
    (lambda nn: nn.PixelUnshuffle(2), [(2, 3, 4, 6)]),
    (lambda nn: nn.ChannelShuffle(3), [(2, 6, 2, 2)]),
]


@pytest.mark.parametrize("make,inputs", LAYERS, ids=range(len(LAYERS)))
def test_layer_matches_torch(make, inputs):
    check_layer(make, inputs)


SPATIAL = [
    (lambda nn: nn.Conv3d(2, 4, 3), [(2, 2, 5, 5, 5)]),
    (lambda nn: nn.Conv3d(4, 4, (2, 3, 1), stride=(2, 1, 2), padding=(1, 0, 1), dilation=(1, 2, 1),
                          groups=2, bias=False), [(2, 4, 5, 6, 5)]),
    (lambda nn: nn.Conv3d(2, 2, 3, padding="same", padding_mode="reflect"), [(1, 2, 4, 4, 4)]),
    (lambda nn: nn.Conv3d(2, 3, 2), [(2, 3, 3, 3)]),
    (lambda nn: nn.ConvTranspose3d(2, 3, 3, stride=2, padding=1, output_padding=1),
     [(1, 2, 3, 3, 3)]),
    (lambda nn: nn.ConvTranspose3d(4, 2, 2, groups=2, dilation=2), [(1, 4, 2, 3, 2)]),
    (lambda nn: nn.MaxPool3d(2), [(2, 2, 4, 4, 4)]),
    (lambda nn: nn.MaxPool3d((2, 3, 2), stride=(1, 2, 2), padding=(1, 1, 0), ceil_mode=True),
     [(1, 2, 4, 5, 5)]),
    (lambda nn: nn.MaxPool3d(2, return_indices=True), [(1, 2, 4, 4, 4)]),
    (lambda nn: nn.AvgPool3d(2), [(2, 2, 4, 4, 4)]),
    (lambda nn: nn.AvgPool3d(3, stride=2, padding=1, count_include_pad=False),
     [(1, 2, 5, 5, 5)]),
    (lambda nn: nn.AvgPool3d(2, divisor_override=3), [(1, 2, 4, 4, 4)]),
    (lambda nn: nn.AdaptiveAvgPool3d((2, 3, None)), [(1, 2, 5, 7, 4)]),
    (lambda nn: nn.AdaptiveMaxPool1d(3), [(2, 3, 7)]),
    (lambda nn: nn.AdaptiveMaxPool2d((3, 2), return_indices=True), [(2, 3, 7, 5)]),
    (lambda nn: nn.AdaptiveMaxPool3d(2), [(1, 2, 5, 4, 3)]),
    (lambda nn: nn.LPPool1d(2, 3, stride=2), [(2, 3, 8)]),
    (lambda nn: nn.LPPool2d(1.5, 2), [(2, 3, 4, 6)]),
    (lambda nn: nn.LPPool3d(2, 2), [(1, 2, 4, 4, 4)]),
    (lambda nn: nn.Unfold((2, 3), dilation=(1, 2), padding=1, stride=2), [(2, 3, 6, 7)]),
    (lambda nn: nn.Fold((5, 6), (2, 3), dilation=1, padding=(1, 0), stride=(1, 2)),
     [(2, 12, 12)]),
    (lambda nn: nn.Upsample(scale_factor=2, mode="nearest"), [(1, 2, 3, 4)]),
    (lambda nn: nn.Upsample(size=(5, 7), mode="bilinear"), [(1, 2, 3, 4)]),
    (lambda nn: nn.Upsample(scale_factor=1.5, mode="bilinear", align_corners=True),
     [(1, 2, 3, 4)]),
    (lambda nn: nn.Upsample(size=7, mode="linear"), [(1, 2, 4)]),
    (lambda nn: nn.Upsample(scale_factor=2, mode="trilinear"), [(1, 1, 2, 3, 2)]),
    (lambda nn: nn.Upsample(size=(6, 5), mode="bicubic"), [(1, 2, 3, 4)]),
    (lambda nn: nn.Upsample(size=(6, 5), mode="bicubic", align_corners=True), [(1, 2, 3, 4)]),
    (lambda nn: nn.Upsample(size=(5, 7), mode="nearest-exact"), [(1, 2, 3, 4)]),
    (lambda nn: nn.Upsample(size=(2, 3), mode="area"), [(1, 2, 5, 7)]),
    (lambda nn: nn.UpsamplingNearest2d(scale_factor=3), [(1, 2, 2, 3)]),
    (lambda nn: nn.UpsamplingBilinear2d(size=(5, 6)), [(1, 2, 2, 3)]),
    (lambda nn: nn.InstanceNorm1d(3), [(2, 3, 6)]),
    (lambda nn: nn.InstanceNorm2d(3, affine=True), [(2, 3, 4, 5)]),
    (lambda nn: nn.InstanceNorm3d(2, affine=True), [(2, 2, 3, 3, 3)]),
    (lambda nn: nn.InstanceNorm2d(3), [(3, 4, 5)]),
    (lambda nn: nn.LocalResponseNorm(3, alpha=0.1, beta=0.5, k=2.0), [(2, 5, 3, 3)]),
    (lambda nn: nn.LocalResponseNorm(2), [(2, 4, 6)]),
    (lambda nn: nn.PairwiseDistance(p=1.0, keepdim=True), [(4, 5), (4, 5)]),
    (lambda nn: nn.CosineSimilarity(dim=0), [(4, 5), (4, 5)]),
]
PADS = [(cls + f"{d}d", args, d) for d in (1, 2, 3)
        for cls, args in [("ConstantPad", ((1, 2) * d, 0.5)), ("ZeroPad", ((2, 1) * d,)),
                          ("ReflectionPad", ((2, 1) * d,)), ("ReplicationPad", (2,)),
                          ("CircularPad", ((1, 2) * d,))]]


@pytest.mark.parametrize("make,inputs", SPATIAL, ids=range(len(SPATIAL)))
def test_spatial_layer_matches_torch(make, inputs):
    check_layer(make, inputs)


@pytest.mark.parametrize("name,args,dims", PADS, ids=[p[0] for p in PADS])
def test_padding_layer_matches_torch(name, args, dims):
    check_layer(lambda nn: getattr(nn, name)(*args), [(2, 3) + (4,) * dims])


def test_instance_norm_running_stats_match_torch():
    t_layer, k_layer = check_layer(lambda nn: nn.InstanceNorm2d(3, track_running_stats=True,
                                                                affine=True),
                                   [(4, 3, 5, 5)], train=True)
    np.testing.assert_allclose(k_layer.running_mean.numpy(), t_layer.running_mean.numpy(),
                               rtol=1e-9)
    np.testing.assert_allclose(k_layer.running_var.numpy(), t_layer.running_var.numpy(),
                               rtol=1e-9)
    check_layer(lambda nn: nn.InstanceNorm2d(3, track_running_stats=True), [(4, 3, 5, 5)])


def test_max_unpool_inverts_max_pool_like_torch():
    import torch
    import kiln
    x = np.random.default_rng(0).normal(size=(2, 3, 6, 6))
    for lib, dims, shape in [(None, 1, (2, 3, 8)), (None, 2, (2, 3, 6, 6)),
                             (None, 3, (1, 2, 4, 4, 4))]:
        data = np.random.default_rng(dims).normal(size=shape)
        outs = []
        for lib in (torch, kiln):
            pool = getattr(lib.nn, f"MaxPool{dims}d")(2, return_indices=True)
            unpool = getattr(lib.nn, f"MaxUnpool{dims}d")(2)
            t = lib.tensor(data, requires_grad=True)
            y, idx = pool(t)
            out = unpool(y, idx)
            (out * lib.tensor(np.arange(out.numel(), dtype=np.float64).reshape(out.shape))
             ).sum().backward()
            outs.append((out.detach().numpy(), idx.numpy(), t.grad.numpy()))
        for k, t in zip(outs[1], outs[0]):
            np.testing.assert_allclose(k, t, rtol=1e-12)
    assert x.shape == (2, 3, 6, 6)


def test_embedding_bag_matches_torch():
    weight = np.random.default_rng(0).normal(size=(10, 4))
    flat = np.array([1, 2, 4, 5, 4, 3, 2, 9, 0])
    offsets = np.array([0, 4, 4, 6])
    rows = np.array([[1, 2, 4], [4, 3, 0]])
    import torch
    import kiln
    for mode in ("sum", "mean", "max"):
        for args, kwargs in [((flat, offsets), {}), ((rows,), {}),
                             ((flat, np.array([0, 4, 4, 9])), dict(include_last_offset=True)),
                             ((flat, offsets), dict(padding_idx=4))]:
            grads, outs = [], []
            for lib in (torch, kiln):
                bag = lib.nn.EmbeddingBag.from_pretrained(lib.tensor(weight), freeze=False,
                                                          mode=mode, **kwargs)
                out = bag(*[lib.tensor(a) for a in args])
                (out * lib.tensor(np.arange(out.numel(), dtype=np.float64)
                                  .reshape(out.shape))).sum().backward()
                outs.append(out.detach().numpy())
                grads.append(bag.weight.grad.numpy())
            np.testing.assert_allclose(outs[1], outs[0], rtol=1e-12, err_msg=f"{mode} {kwargs}")
            np.testing.assert_allclose(grads[1], grads[0], rtol=1e-12, err_msg=f"{mode} {kwargs}")
    ws = np.random.default_rng(1).uniform(size=len(flat))
    t = torch.nn.functional.embedding_bag(torch.tensor(flat), torch.tensor(weight),
                                          torch.tensor(offsets), mode="sum",
                                          per_sample_weights=torch.tensor(ws))
    k = kiln.nn.functional.embedding_bag(kiln.tensor(flat), kiln.tensor(weight),
                                         kiln.tensor(offsets), mode="sum",
                                         per_sample_weights=kiln.tensor(ws))
    np.testing.assert_allclose(k.numpy(), t.numpy(), rtol=1e-12)


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_embedding_bag_scale_grad_by_freq_divides_each_row_by_its_count(mode):
    """The reference is torch's F.embedding (same scaling) reduced per bag: torch 2.13's CPU
    embedding_bag divides an id that sorts after a repeated one by that one's count
    (pytorch/pytorch#190063)."""
    import torch
    import kiln
    weight = np.random.default_rng(0).normal(size=(6, 3))
    flat = np.array([1, 1, 2, 0, 1, 4, 4, 5])
    offsets = np.array([0, 3, 6])
    scale = np.arange(9.0).reshape(3, 3)
    w = torch.tensor(weight, requires_grad=True)
    rows = torch.nn.functional.embedding(torch.tensor(flat), w, padding_idx=0,
                                         scale_grad_by_freq=True)
    kept = torch.tensor(flat != 0, dtype=torch.float64)        # padding entries drop out
    rows = rows * kept[:, None]
    bags = torch.stack([rows[a:b].sum(0) / (kept[a:b].sum() if mode == "mean" else 1)
                        for a, b in zip(offsets, [*offsets[1:], len(flat)])])
    (bags * torch.tensor(scale)).sum().backward()
    k = kiln.tensor(weight, requires_grad=True)
    out = kiln.nn.functional.embedding_bag(kiln.tensor(flat), k, kiln.tensor(offsets),
                                           mode=mode, scale_grad_by_freq=True, padding_idx=0)
    np.testing.assert_allclose(out.detach().numpy(), bags.detach().numpy(), rtol=1e-12)
    (out * kiln.tensor(scale)).sum().backward()
    np.testing.assert_allclose(k.grad.numpy(), w.grad.numpy(), rtol=1e-12)


def test_embedding_bag_prints_like_torch():
    import torch
    import kiln
    for kwargs in ({}, dict(mode="sum", padding_idx=0), dict(max_norm=1.0, norm_type=3.0,
                                                            mode="max")):
        assert repr(kiln.nn.EmbeddingBag(5, 2, **kwargs)) == \
            repr(torch.nn.EmbeddingBag(5, 2, **kwargs))


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_compiles_without_graph_break(mode):
    """The text-classification step (EmbeddingBag over ids + offsets, Linear, cross-entropy,
    SGD) compiles whole: the ids and offsets are never read into Python. Its losses repeat
    torch's eager ones."""
    import torch
    import kiln
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(12, 5)).astype(np.float32)
    fc_w = rng.normal(size=(3, 5)).astype(np.float32)
    batches = [(rng.integers(0, 12, 9), np.sort(rng.choice(9, 4, replace=False))
                * (np.arange(4) > 0), rng.integers(0, 3, 4)) for _ in range(3)]
    losses = {}
    for lib in (torch, kiln):
        bag = lib.nn.EmbeddingBag.from_pretrained(lib.tensor(weight), freeze=False, mode=mode)
        fc = lib.nn.Linear(5, 3, bias=False)
        with lib.no_grad():
            fc.weight.copy_(lib.tensor(fc_w))
        opt = lib.optim.SGD([bag.weight, fc.weight], lr=0.5)

        def step(ids, offsets, labels):
            opt.zero_grad()
            loss = lib.nn.functional.cross_entropy(fc(bag(ids, offsets)), labels)
            loss.backward()
            opt.step()
            return loss
        if lib is kiln:
            step = kiln.compile(step, fullgraph=True)
        losses[lib.__name__] = [step(*[lib.tensor(a) for a in b]).item() for b in batches]
    np.testing.assert_allclose(losses["kiln"], losses["torch"], rtol=1e-5)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
def test_affine_grid_and_grid_sample_match_torch(align_corners, padding_mode, mode):
    from tests.parity import check_op
    # no grid point lands exactly on the border, where the one-sided derivative is a convention
    theta = np.array([[[0.9, -0.3, 0.13], [0.2, 1.3, -0.2]], [[1.4, 0.1, 0.3], [0.0, 0.8, 0.5]]])

    def fn(lib, x, th):
        grid = lib.nn.functional.affine_grid(th, [2, 3, 5, 4], align_corners=align_corners)
        return lib.nn.functional.grid_sample(x, grid, mode=mode, padding_mode=padding_mode,
                                             align_corners=align_corners)
    check_op(fn, [(2, 3, 4, 6), theta], dtype=np.float64, grad=mode != "nearest")


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_grid_sample_compiled_equals_eager(mode):
    """Compiled sampling with reflection padding (floats reflected by remainder) equals eager,
    values and gradients."""
    import kiln
    rng = np.random.default_rng(0)
    x = kiln.tensor(rng.normal(size=(2, 3, 5, 6)).astype(np.float32), requires_grad=True)
    grid = kiln.tensor(rng.uniform(-1.6, 1.6, (2, 4, 3, 2)).astype(np.float32))

    def fn(x, grid):
        out = kiln.nn.functional.grid_sample(x, grid, mode=mode, padding_mode="reflection",
                                             align_corners=False)
        return (out * out).sum()
    eager = fn(x, grid)
    (eager_grad,) = kiln.autograd.grad(eager, [x])
    compiled = kiln.compile(fn)(x, grid)
    (compiled_grad,) = kiln.autograd.grad(compiled, [x])
    np.testing.assert_allclose(compiled.item(), eager.item(), rtol=1e-5)
    np.testing.assert_allclose(compiled_grad.numpy(), eager_grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_grid_sample_3d_matches_torch(padding_mode, mode):
    from tests.parity import check_op
    theta = np.array([[[0.9, -0.3, 0.1, 0.13], [0.2, 1.3, 0.0, -0.2], [0.1, 0.0, 1.2, 0.3]]])

    def fn(lib, x, th):
        grid = lib.nn.functional.affine_grid(th, [1, 2, 3, 5, 4], align_corners=False)
        return lib.nn.functional.grid_sample(x, grid, mode=mode, padding_mode=padding_mode,
                                             align_corners=False)
    check_op(fn, [(1, 2, 4, 3, 6), theta], dtype=np.float64, grad=mode == "bilinear")


def test_affine_grid_3d_matches_torch():
    from tests.parity import check_op
    theta = np.random.default_rng(0).normal(size=(2, 3, 4))
    check_op(lambda lib, th: lib.nn.functional.affine_grid(th, [2, 1, 3, 4, 5]), [theta],
             dtype=np.float64)


def test_cross_map_lrn2d_values_match_torch_and_gradient_is_exact():
    """Values against torch; torch's hand-written legacy backward is not the derivative of its
    own forward, so the gradient is checked against finite differences instead."""
    import torch
    import kiln
    x = np.random.default_rng(0).normal(size=(2, 5, 3, 3))
    t = torch.nn.CrossMapLRN2d(3, alpha=0.1, beta=0.5, k=2.0)(torch.tensor(x)).numpy()
    k_in = kiln.tensor(x, requires_grad=True)
    layer = kiln.nn.CrossMapLRN2d(3, alpha=0.1, beta=0.5, k=2.0)
    out = layer(k_in)
    np.testing.assert_allclose(out.detach().numpy(), t, rtol=1e-12)
    w = np.random.default_rng(1).normal(size=x.shape)
    (out * kiln.tensor(w)).sum().backward()
    f = lambda a: float((layer(kiln.tensor(a)).numpy() * w).sum())
    numeric = np.zeros_like(x)
    for i in np.ndindex(*x.shape):
        d = np.zeros_like(x)
        d[i] = 1e-6
        numeric[i] = (f(x + d) - f(x - d)) / 2e-6
    np.testing.assert_allclose(k_in.grad.numpy(), numeric, rtol=1e-6, atol=1e-8)


def test_remaining_functional_spellings_match_torch():
    from tests.parity import check_op
    f = lambda name, *a, **k: (lambda lib, *xs: getattr(lib.nn.functional, name)(*xs, *a, **k))
    check_op(f("conv_tbc", pad=1), [(5, 2, 3), (3, 3, 4), (4,)], dtype=np.float64)
    check_op(f("upsample_nearest", scale_factor=2), [(1, 2, 3, 3)], dtype=np.float64)
    check_op(f("upsample_bilinear", size=(4, 5)), [(1, 2, 3, 3)], dtype=np.float64)
    check_op(f("upsample", scale_factor=2, mode="bilinear"), [(1, 2, 3, 3)], dtype=np.float64)
    check_op(f("interpolate", scale_factor=(1.5, 0.5), mode="nearest"), [(1, 2, 4, 6)],
             dtype=np.float64)
    check_op(f("channel_shuffle", 2), [(2, 4, 3)], dtype=np.float64)
    check_op(f("native_channel_shuffle", 2), [(2, 4, 3)], dtype=np.float64, grad=False)
    check_op(f("instance_norm", eps=1e-3), [(2, 3, 5)], dtype=np.float64)
    check_op(f("local_response_norm", 3), [(2, 4, 5)], dtype=np.float64)
    check_op(f("lp_pool2d", 2.0, 2, ceil_mode=True), [(1, 2, 5, 5)], dtype=np.float64,
             low=0.1, high=2.0)
    for name, shape in [("max_pool1d_with_indices", (2, 3, 8)),
                        ("max_pool2d_with_indices", (2, 3, 6, 6)),
                        ("max_pool3d_with_indices", (1, 2, 4, 4, 4))]:
        check_op(f(name, 2), [shape], dtype=np.float64)
    for dims, shape in [(1, (2, 3, 7)), (2, (2, 3, 5, 7)), (3, (1, 2, 4, 5, 3))]:
        check_op(f(f"adaptive_max_pool{dims}d_with_indices", 2), [shape], dtype=np.float64)

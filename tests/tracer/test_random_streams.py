"""`kiln.manual_seed(s)` gives PyTorch's CPU random numbers (kiln/runtime/mt19937.py): the
same uniforms, integers and permutations bit for bit, normals to the last bits of the math
library's log/sin/cos (float64) and of PyTorch's AVX2 kernel (float32), so the same seed gives the same initial weights and the same
DataLoader order as PyTorch 2.13."""

import numpy as np
import pytest

import kiln
from tests.torch_streams import MKL_REASON, pytorch_uses_mkl_stream

torch = pytest.importorskip("torch")

SEEDS = [0, 1, 2 ** 40 + 7]


mkl_stream = pytest.mark.skipif(pytorch_uses_mkl_stream(), reason=MKL_REASON)


def both(seed, fn):
    kiln.manual_seed(seed)
    torch.manual_seed(seed)
    k, t = fn(kiln), fn(torch)
    return ([np.asarray(v.detach().numpy()) for v in k], [v.detach().numpy() for v in t])


@pytest.mark.parametrize("seed", SEEDS)
def test_uniform_integer_and_permutation_streams_are_torchs(seed):
    def draws(lib):
        return [lib.rand(37), lib.rand(5, dtype=lib.float64), lib.rand(3, dtype=lib.float16),
                lib.empty(7).uniform_(-0.3, 0.7),
                lib.empty(1000, dtype=lib.float64).uniform_(-2.0, 3.0),
                lib.randint(-3, 17, (9,)), lib.randint(0, 2 ** 40, (4,)),
                lib.randperm(1), lib.randperm(1000), lib.randint(5, (2, 3), dtype=lib.int32),
                lib.empty(3, dtype=lib.int64).random_(), lib.empty(3).random_(),
                lib.empty(4, dtype=lib.int32).random_(10), lib.empty(4).random_(2, 9),
                lib.rand(2, 3, generator=lib.Generator().manual_seed(seed + 1))]
    k, t = both(seed, draws)
    for a, b in zip(k, t):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("seed", SEEDS)
def test_normal_streams_are_torchs(seed):
    """Fewer than 16 values: Box-Muller pairs in double whose second half waits in the
    generator (so two lone draws are one pair); 16 or more: blocks of 16 from uniforms."""
    def draws(lib):
        return [lib.randn(1, dtype=lib.float64), lib.randn(1, dtype=lib.float64),
                lib.randn(5, dtype=lib.float64), lib.randn(40, dtype=lib.float64),
                lib.randn(17, dtype=lib.float64), lib.randn(3), lib.randn(15),
                lib.randn(16), lib.randn(100), lib.empty(33).normal_(2.0, 0.5),
                lib.randn(2, 3, dtype=lib.float64)]
    k, t = both(seed, draws)
    for a, b in zip(k, t):
        assert a.dtype == b.dtype
        if a.dtype == np.float64:       # libm and NumPy may differ in the last bit
            np.testing.assert_allclose(a, b, rtol=4e-16, atol=1e-16)
        else:       # PyTorch's AVX2 kernel rounds log/sin/cos in float32
            np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_half_normal_streams_are_torchs(seed):
    """float16 and bfloat16 draw the whole blocks' uniforms only (float's kernel draws all n),
    compute in float32 and round; a stream continues after them as torch's does."""
    def draws(lib):
        return [lib.randn(n, dtype=d).float() for d in (lib.float16, lib.bfloat16)
                for n in (3, 16, 17, 40, 1000)] + [lib.rand(5)]
    k, t = both(seed, draws)
    for a, b in zip(k, t):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.sum(a != b) <= max(1, a.size // 100)  # a float32 ulp may round otherwise
        np.testing.assert_allclose(a, b, rtol=8e-3)


def test_same_seed_same_initial_weights_as_torch():
    """Layers initialized by uniform_ (Linear, Conv, RNNs, attention) equal PyTorch's bit for
    bit; by normal_ (Embedding), to float32 rounding."""
    def build(lib):
        nn = lib.nn
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.Linear(8, 5), nn.Embedding(30, 16),
                             nn.LSTM(5, 7, 2), nn.GRU(4, 3), nn.MultiheadAttention(8, 2),
                             nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0),
                             nn.BatchNorm1d(4), nn.Bilinear(3, 4, 2))
    kiln.manual_seed(3)
    torch.manual_seed(3)
    k, t = build(kiln).state_dict(), build(torch).state_dict()
    assert list(k) == list(t)
    for name in t:
        if name.startswith("2."):                       # the embedding: normal_
            np.testing.assert_allclose(k[name].numpy(), t[name].numpy(), rtol=2e-6, atol=1e-6)
        else:
            np.testing.assert_array_equal(k[name].numpy(), t[name].numpy(), err_msg=name)
    np.testing.assert_array_equal(kiln.rand(5).numpy(), torch.rand(5).numpy())   # in step


def test_data_loading_order_is_torchs():
    """A shuffled DataLoader draws its base seed, then its sampler's, as PyTorch's does: the
    same batches over epochs; random_split and samplers with replacement too."""
    kiln.manual_seed(11)
    torch.manual_seed(11)
    for lib_pair in [(kiln, torch)]:
        loaders = [lib.utils.data.DataLoader(lib.utils.data.TensorDataset(lib.arange(25)),
                                             batch_size=4, shuffle=True) for lib in lib_pair]
        for _ in range(3):
            k, t = ([b[0].tolist() for b in loader] for loader in loaders)
            assert k == t
    assert [list(s) for s in kiln.utils.data.random_split(range(20), [0.7, 0.3])] == \
        [list(s) for s in torch.utils.data.random_split(range(20), [0.7, 0.3])]
    k = list(kiln.utils.data.RandomSampler(range(10), replacement=True, num_samples=40))
    t = list(torch.utils.data.RandomSampler(range(10), replacement=True, num_samples=40))
    assert k == t


def test_rng_state_round_trips_and_generators_are_independent():
    g = kiln.Generator().manual_seed(5)
    assert g.initial_seed() == 5 and kiln.Generator().initial_seed() == \
        torch.Generator().initial_seed()
    kiln.manual_seed(2)
    kiln.randn(3, dtype=kiln.float64)                   # leaves a cached normal behind
    state = kiln.get_rng_state()
    first = [kiln.randn(1, dtype=kiln.float64).item(), kiln.rand(4).tolist()]
    kiln.set_rng_state(state)
    assert [kiln.randn(1, dtype=kiln.float64).item(), kiln.rand(4).tolist()] == first
    a = kiln.rand(3, generator=g)
    kiln.manual_seed(0)
    np.testing.assert_array_equal(a.numpy(), kiln.rand(3, generator=kiln.Generator()
                                                       .manual_seed(5)).numpy())
    with pytest.raises(RuntimeError, match="state of 2509 bytes"):
        kiln.set_rng_state(kiln.zeros(10, dtype=kiln.uint8))


@pytest.mark.parametrize("seed", SEEDS)
def test_cauchy_log_normal_and_geometric_streams_are_torchs(seed):
    """One uniform double per value (cauchy_, geometric_), or ATen's scalar double normals
    (log_normal_), whose cached second value a preceding small randn leaves behind."""
    def draws(lib):
        return [lib.randn(3, dtype=lib.float64),
                lib.empty(7, dtype=lib.float64).log_normal_(0.5, 1.5),
                lib.empty(2, 3).log_normal_(), lib.empty(40).cauchy_(1.0, 2.0),
                lib.empty(50, dtype=lib.int32).geometric_(0.2),
                lib.empty(9, dtype=lib.float64).geometric_(0.7), lib.randn(1, dtype=lib.float64)]
    k, t = both(seed, draws)
    for a, b in zip(k, t):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=0)
    for name, args in [("geometric_", (1.0,)), ("cauchy_", (0.0, 0.0)),
                       ("log_normal_", (1.0, -1.0))]:
        with pytest.raises(RuntimeError, match=name):
            getattr(kiln.empty(3), name)(*args)


@mkl_stream
@pytest.mark.parametrize("seed", SEEDS)
def test_bernoulli_dropout_and_sampling_streams_are_torchs(seed):
    def draws(lib):
        F = lib.nn.functional
        x = lib.arange(1.0, 61.0).reshape(3, 4, 5)
        probs = lib.tensor([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4]])
        return [lib.empty(30).bernoulli_(0.3), lib.bernoulli(lib.full((9,), 0.4)),
                lib.bernoulli(lib.full((5,), 0.6, dtype=lib.float64)),
                F.dropout(x, 0.3), F.dropout2d(x.unsqueeze(-1), 0.5), F.dropout1d(x, 0.25),
                F.alpha_dropout(x, 0.2, True), lib.multinomial(probs, 2),
                lib.multinomial(probs, 6, replacement=True), lib.multinomial(probs[0], 1)]
    k, t = both(seed, draws)
    for a, b in zip(k, t):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    k, t = both(seed, lambda lib: [lib.empty(20).exponential_(1.5),
                                   lib.nn.functional.gumbel_softmax(lib.ones(2, 5), tau=0.5)])
    for a, b in zip(k, t):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@mkl_stream
def test_a_seeded_training_run_with_dropout_matches_torch_compiled_too():
    """The same seed, no weights copied: a dropout MLP trained by PyTorch and by kiln (eager
    and with the step compiled) gives the same losses, because initial weights, the shuffled
    batches and every dropout mask are the same numbers."""
    def run(lib, compiled=False):
        lib.manual_seed(0)
        nn = lib.nn
        model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
        opt = lib.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        data = np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32)
        labels = (data[:, 0] > 0).astype(np.int64) + (data[:, 1] > 0)
        loader = lib.utils.data.DataLoader(lib.utils.data.TensorDataset(
            lib.tensor(data), lib.tensor(labels)), batch_size=8, shuffle=True)

        def step(x, y):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss
        step = lib.compile(step) if compiled else step
        return [step(x, y).item() for _ in range(3) for x, y in loader]
    expected = run(torch)
    np.testing.assert_allclose(run(kiln), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run(kiln, compiled=True), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, args", [
    ("trunc_normal_", (0.5, 2.0, -1.0, 3.0)),          # wide window: normal draws redrawn
    ("trunc_normal_", (0.0, 1.0, 1.0, 1.5)),           # narrow: uniform proposals accepted
    ("orthogonal_", (1.5,)), ("sparse_", (0.3, 0.1)), ("xavier_normal_", (2.0,)),
    ("kaiming_normal_", (0.1, "fan_out")), ("xavier_uniform_", ()), ("uniform_", (-2, 5))])
def test_initializers_draw_torchs_numbers(name, args):
    kiln.manual_seed(0)
    torch.manual_seed(0)
    k = getattr(kiln.nn.init, name)(kiln.empty(60, 9), *args).numpy()
    t = getattr(torch.nn.init, name)(torch.empty(60, 9), *args).numpy()
    np.testing.assert_allclose(k, t, rtol=2e-6, atol=1e-6)      # QR / AVX2 rounding
    np.testing.assert_array_equal(kiln.rand(3).numpy(), torch.rand(3).numpy())   # in step


@mkl_stream
@pytest.mark.parametrize("enforce_sorted, batch_first", [(True, False), (False, True)])
def test_packed_rnn_dropout_draws_torchs_masks(enforce_sorted, batch_first):
    """Between layers PyTorch drops elements of the packed data (time-major, sorted order);
    kiln runs the padded layout and draws one noise row per packed row in that order."""
    x = np.random.default_rng(0).standard_normal((6, 3, 4)).astype(np.float32)
    x = x.transpose(1, 0, 2).copy() if batch_first else x
    lengths = [6, 4, 2] if enforce_sorted else [2, 6, 4]

    def out(lib):
        lib.manual_seed(0)
        gru = lib.nn.GRU(4, 5, 3, dropout=0.5, bidirectional=True, batch_first=batch_first)
        rnn = lib.nn.utils.rnn
        packed = rnn.pack_padded_sequence(lib.tensor(x), lengths, batch_first=batch_first,
                                          enforce_sorted=enforce_sorted)
        return rnn.pad_packed_sequence(gru(packed)[0], batch_first=batch_first)[0]
    np.testing.assert_allclose(out(kiln).detach().numpy(), out(torch).detach().numpy(),
                               rtol=1e-5, atol=1e-6)



def test_randint_takes_requires_grad_as_torch():
    # memory_format tutorial: torch.randint(1, 10, (2, 8, 4, 4), dtype=torch.float32,
    # requires_grad=True) is a float leaf that requires grad
    kiln.manual_seed(0)
    torch.manual_seed(0)
    k = kiln.randint(1, 10, (2, 8, 4, 4), dtype=kiln.float32, requires_grad=True)
    t = torch.randint(1, 10, (2, 8, 4, 4), dtype=torch.float32, requires_grad=True)
    assert k.requires_grad and t.requires_grad and k.is_leaf
    np.testing.assert_array_equal(k.detach().numpy(), t.detach().numpy())
    (k * k).sum().backward()
    np.testing.assert_array_equal(k.grad.numpy(), 2 * t.detach().numpy())


@mkl_stream
@pytest.mark.parametrize("make", [
    lambda lib: lib.arange(1.0, 81.0).reshape(5, 2, 8).transpose(0, 1),   # batch_first MHA out
    lambda lib: lib.ones(4, 6, 8)[:, ::2].permute(2, 0, 1),               # strided, permuted
    lambda lib: lib.ones(5, 1, 8).expand(5, 3, 8).transpose(0, 2),         # a broadcast dim
], ids=["transposed", "sliced_permuted", "expanded"])
def test_dropout_draws_in_the_inputs_memory_order(make):
    """PyTorch fills dropout's noise as `empty_like(input)`, in the input's stride order: a
    transposed input (every batch_first TransformerEncoderLayer's attention output) got other
    masks than torch's from the same seed. (A channels-last input still draws in logical order:
    kiln's conv outputs are laid out so where PyTorch's are contiguous, see the next test.)"""
    k, t = both(0, lambda lib: [lib.nn.functional.dropout(make(lib), 0.5),
                                lib.nn.functional.dropout(make(lib), 0.3)])
    for a, b in zip(k, t):
        np.testing.assert_array_equal(a, b)


@mkl_stream
@pytest.mark.parametrize("conv", ["Conv1d", "Conv2d", "ConvTranspose2d"])
def test_dropout_after_a_conv_draws_torchs_mask(conv):
    # kiln's eager conv output is channels-last (PyTorch's is contiguous): its draws stay in
    # logical order, the order of PyTorch's contiguous noise
    shape = (2, 3, 6) if conv == "Conv1d" else (2, 3, 6, 6)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)

    def out(lib):
        lib.manual_seed(0)
        layer = getattr(lib.nn, conv)(3, 5, 2)
        F = lib.nn.functional
        y = F.relu(layer(lib.tensor(x)))
        return F.dropout(y, 0.5) if conv == "Conv1d" else F.dropout(F.max_pool2d(y, 2), 0.5)
    np.testing.assert_allclose(out(kiln).detach().numpy(), out(torch).detach().numpy(),
                               rtol=1e-5, atol=1e-6)


@mkl_stream
def test_inplace_dropout_of_a_transposed_tensor_draws_in_memory_order():
    k, t = both(1, lambda lib: [lib.nn.functional.dropout(
        lib.ones(6, 4).t(), 0.5, inplace=True)])
    np.testing.assert_array_equal(k[0], t[0])


@mkl_stream
def test_batch_first_encoder_layer_dropout_is_torchs():
    x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    pad = np.array([[0, 0, 0, 1, 1], [0, 0, 0, 0, 0]], bool)

    def out(lib):
        lib.manual_seed(0)
        layer = lib.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.5, batch_first=True,
                                               norm_first=True)
        return layer(lib.tensor(x), src_key_padding_mask=lib.tensor(pad))
    np.testing.assert_allclose(out(kiln).detach().numpy(), out(torch).detach().numpy(),
                               rtol=1e-5, atol=1e-6)


@mkl_stream
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_compiled_single_draws_of_multinomial_and_categorical_are_torchs(dtype):
    """`Categorical(logits=...).sample()` and `multinomial(p, 1)` read the probabilities into
    Python: a sampling step compiled broke its graph and ran eagerly. Traced, the draw is an
    exponential race (argmax of p / q, PyTorch's CPU sampler for one draw): the step compiles
    whole and each call, traced or replayed, draws torch's samples; a replay given a bad
    distribution raises eager's RuntimeError."""
    import warnings
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((4, 3, 7)).astype(dtype)

    def sample(lib, x, temperature):
        probs = lib.softmax(x / temperature, dim=-1)
        d = lib.distributions.Categorical(logits=x / temperature)
        return d.sample(), lib.multinomial(probs, 1), lib.multinomial(probs[1], 1,
                                                                       replacement=True)

    torch.manual_seed(3)
    expected = [sample(torch, torch.tensor(logits[i]), 1.0 - 0.1 * i) for i in range(4)]
    kiln.manual_seed(3)
    compiled = kiln.compile(lambda x, t: sample(kiln, x, t))
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # no graph break, no eager fallback
        for i in range(4):
            got = compiled(kiln.tensor(logits[i]), 1.0 - 0.1 * i)
            for g, e in zip(got, expected[i]):
                assert g.dtype == kiln.int64 and tuple(g.shape) == tuple(e.shape)
                np.testing.assert_array_equal(g.numpy(), e.numpy())
    bad = np.full((3, 7), np.nan, dtype)
    with pytest.raises(RuntimeError, match="multinomial: probability tensor contains"):
        kiln.compile(lambda p: kiln.multinomial(p, 1))(kiln.tensor(bad))
    single = kiln.compile(lambda p: kiln.multinomial(p, 1))
    single(kiln.tensor(np.ones((3, 7), dtype)))
    single(kiln.tensor(np.full((3, 7), 2, dtype)))
    with pytest.raises(RuntimeError, match="multinomial: probability tensor contains"):
        single(kiln.tensor(bad))
    assert len(single.entries) == 1

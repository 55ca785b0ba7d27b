"""Dynamic quantization (quantize_dynamic) against PyTorch's x86 engine: the same float model
quantized by both gives the same weights and, for the same input, the same outputs."""

import copy

import numpy as np
import pytest
import torch
import torch.ao.quantization as tq

import kiln
import kiln.ao.quantization as kq
from kiln.ao.nn.quantized import kernels

pytestmark = [pytest.mark.filterwarnings("ignore:.*quantized tensor creation functions"),
              pytest.mark.filterwarnings("ignore:.*torch.ao.quantization is deprecated")]


class TorchNet(torch.nn.Module):
    def __init__(self, sizes):
        super().__init__()
        self.fc1 = torch.nn.Linear(sizes[0], sizes[1])
        self.fc2 = torch.nn.Linear(sizes[1], sizes[2], bias=False)
        self.head = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(sizes[2], sizes[3]))

    def forward(self, x):
        return self.head(self.fc2(torch.relu(self.fc1(x))) * 0.5)


class KilnNet(kiln.nn.Module):
    def __init__(self, sizes):
        super().__init__()
        self.fc1 = kiln.nn.Linear(sizes[0], sizes[1])
        self.fc2 = kiln.nn.Linear(sizes[1], sizes[2], bias=False)
        self.head = kiln.nn.Sequential(kiln.nn.ReLU(), kiln.nn.Linear(sizes[2], sizes[3]))

    def forward(self, x):
        return self.head(self.fc2(kiln.relu(self.fc1(x))) * 0.5)


def _twins(sizes, seed: int):
    """A torch model and a kiln model with the same weights."""
    torch.manual_seed(seed)
    ref = TorchNet(sizes)
    ours = KilnNet(sizes)
    ours.load_state_dict({k: kiln.tensor(v.detach().numpy()) for k, v in
                          ref.state_dict().items()})
    return ref, ours


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_quantize_dynamic_matches_torch_exactly(seed, per_channel):
    rng = np.random.default_rng(seed)
    sizes = [int(n) for n in rng.integers(1, 80, 4)]
    ref, ours = _twins(sizes, seed)
    if per_channel:
        spec_t = {torch.nn.Linear: tq.per_channel_dynamic_qconfig}
        spec_k = {kiln.nn.Linear: kq.per_channel_dynamic_qconfig}
    else:
        spec_t, spec_k = {torch.nn.Linear}, {kiln.nn.Linear}
    qref = tq.quantize_dynamic(ref, spec_t, dtype=torch.qint8)
    qours = kq.quantize_dynamic(ours, spec_k, dtype=kiln.qint8)
    for name in ("fc1", "fc2"):
        w, w_ref = getattr(qours, name).weight(), getattr(qref, name).weight()
        np.testing.assert_array_equal(w.int_repr().numpy(), w_ref.int_repr().numpy())
        assert w.qscheme().name == str(w_ref.qscheme())[6:]
    for shape in [(5, sizes[0]), (3, 7, sizes[0]), (1, sizes[0])]:
        x = (rng.standard_normal(shape) * rng.uniform(0.1, 5) + rng.uniform(-1, 1))
        x = x.astype(np.float32)
        out = qours(kiln.tensor(x))
        expected = qref(torch.tensor(x))
        assert out.dtype is kiln.float32 and tuple(out.shape) == tuple(expected.shape)
        # the observed maximum difference is 0: asserted exactly
        np.testing.assert_array_equal(out.numpy(), expected.detach().numpy())
    assert type(ours.fc1) is kiln.nn.Linear           # not inplace: the float model is kept


def test_dynamic_model_prints_as_torch():
    ref, ours = _twins([4, 3, 2, 2], 0)
    qref = tq.quantize_dynamic(ref, {torch.nn.Linear}, dtype=torch.qint8)
    qours = kq.quantize_dynamic(ours, {kiln.nn.Linear}, dtype=kiln.qint8)
    text = repr(qref).replace("torch.", "kiln.").replace("TorchNet", "KilnNet")
    assert repr(qours) == text


def test_tiny_and_constant_inputs_choose_torch_parameters():
    ref, ours = _twins([6, 5, 4, 3], 1)
    qref = tq.quantize_dynamic(ref, {torch.nn.Linear}, dtype=torch.qint8)
    qours = kq.quantize_dynamic(ours, {kiln.nn.Linear}, dtype=kiln.qint8)
    for x in (np.zeros((2, 6)), np.full((2, 6), 3.0), np.full((2, 6), -1e-6),
              np.linspace(-1e-6, 2e-6, 12).reshape(2, 6), np.linspace(1e-7, 1e-6, 12)
              .reshape(2, 6)):
        x = x.astype(np.float32)
        np.testing.assert_array_equal(qours(kiln.tensor(x)).numpy(),
                                      qref(torch.tensor(x)).detach().numpy())


def test_choose_qparams_matches_torch():
    rng = np.random.default_rng(0)
    for _ in range(200):
        low, high = sorted(rng.standard_normal(2) * 10 ** rng.uniform(-6, 2))
        x = torch.tensor([low, high], dtype=torch.float32)
        for reduce in (False, True):
            scale, zero_point = torch._choose_qparams_per_tensor(x, reduce)
            assert kernels.choose_qparams(x.min().item(), x.max().item(), 0, 255, reduce) == \
                (float(np.float32(scale)), zero_point)


def test_integer_product_is_exact():
    rng = np.random.default_rng(0)
    a = rng.integers(-255, 256, (30, 500))
    b = rng.integers(-255, 256, (20, 500))
    exact = a @ b.T                                    # int64 products
    np.testing.assert_array_equal(kernels.integer_matmul(a.astype(np.float64),
                                                         b.astype(np.float64)), exact)


def test_inplace_and_errors():
    ref, ours = _twins([4, 3, 2, 2], 0)
    same = kq.quantize_dynamic(ours, {kiln.nn.Linear}, inplace=True)
    assert same is ours and type(ours.fc1).__name__ == "Linear"
    assert ours.fc1._get_name() == "DynamicQuantizedLinear"
    lstm = kiln.nn.Sequential(kiln.nn.LSTM(4, 4))
    with pytest.raises(NotImplementedError, match="no dynamically quantized LSTM"):
        kq.quantize_dynamic(lstm, {kiln.nn.LSTM, kiln.nn.Linear})
    with pytest.raises(NotImplementedError, match="float16"):
        kq.quantize_dynamic(copy.deepcopy(ours), {kiln.nn.Linear}, dtype=kiln.float16)
    with pytest.raises(RuntimeError, match="does not match weight"):
        ours.fc1(kiln.randn(2, 5))
    try:
        kiln.backends.quantized.engine = "qnnpack"
        with pytest.raises(NotImplementedError, match="engine is 'qnnpack'"):
            ours.fc1(kiln.randn(2, 4))
    finally:
        kiln.backends.quantized.engine = "x86"

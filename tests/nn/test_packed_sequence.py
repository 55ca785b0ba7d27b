"""pad/pack utilities and RNN/LSTM/GRU over a PackedSequence, against torch.nn.utils.rnn."""

import numpy as np
import pytest
import torch
from torch.nn.utils import rnn as trnn

import kiln
from kiln.nn.utils import rnn as krnn
from tests.nn.layer_parity import torch_to_kiln_state

LENGTHS = [3, 5, 2, 5]


def _seqs():
    rng = np.random.default_rng(0)
    return [rng.standard_normal((n, 3)) for n in LENGTHS]


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_pad_sequence_matches_torch(batch_first, padding_side):
    seqs = _seqs()
    t = trnn.pad_sequence([torch.tensor(s) for s in seqs], batch_first, -1.0, padding_side)
    k = krnn.pad_sequence([kiln.tensor(s) for s in seqs], batch_first, -1.0, padding_side)
    np.testing.assert_array_equal(k.numpy(), t.numpy())


@pytest.mark.parametrize("batch_first", [False, True])
def test_pack_and_pad_round_trip_matches_torch(batch_first):
    seqs = _seqs()
    t_pad = trnn.pad_sequence([torch.tensor(s) for s in seqs], batch_first)
    k_pad = kiln.tensor(t_pad.numpy())
    t_pack = trnn.pack_padded_sequence(t_pad, LENGTHS, batch_first, enforce_sorted=False)
    k_pack = krnn.pack_padded_sequence(k_pad, LENGTHS, batch_first, enforce_sorted=False)
    np.testing.assert_array_equal(k_pack.data.numpy(), t_pack.data.numpy())
    for field in ("batch_sizes", "sorted_indices", "unsorted_indices"):
        assert getattr(k_pack, field).tolist() == getattr(t_pack, field).tolist(), field
    t_back, t_len = trnn.pad_packed_sequence(t_pack, batch_first, 7.0, total_length=6)
    k_back, k_len = krnn.pad_packed_sequence(k_pack, batch_first, 7.0, total_length=6)
    np.testing.assert_array_equal(k_back.numpy(), t_back.numpy())
    assert k_len.tolist() == t_len.tolist()
    with pytest.raises(RuntimeError, match="enforce_sorted"):
        krnn.pack_padded_sequence(k_pad, LENGTHS, batch_first)
    parts = krnn.unpack_sequence(k_pack)
    for part, s in zip(parts, seqs):
        np.testing.assert_array_equal(part.numpy(), s)


def test_pack_sequence_sorted_has_no_indices():
    seqs = sorted(_seqs(), key=len, reverse=True)
    t = trnn.pack_sequence([torch.tensor(s) for s in seqs])
    k = krnn.pack_sequence([kiln.tensor(s) for s in seqs])
    assert k.sorted_indices is None and t.sorted_indices is None
    np.testing.assert_array_equal(k.data.numpy(), t.data.numpy())


@pytest.mark.parametrize("cls", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("enforce_sorted", [False, True])
def test_recurrent_layers_on_packed_input_match_torch(cls, enforce_sorted):
    seqs = _seqs()
    if enforce_sorted:
        seqs = sorted(seqs, key=len, reverse=True)
    torch.manual_seed(0)
    t_layer = getattr(torch.nn, cls)(3, 4, num_layers=2, bidirectional=True).double()
    k_layer = getattr(kiln.nn, cls)(3, 4, num_layers=2, bidirectional=True).double()
    k_layer.load_state_dict(torch_to_kiln_state(t_layer))
    k_layer.flatten_parameters()        # a no-op, as scripts call it after .to(device)
    t_in = [torch.tensor(s, requires_grad=True) for s in seqs]
    k_in = [kiln.tensor(s, requires_grad=True) for s in seqs]
    t_out, t_state = t_layer(trnn.pack_sequence(t_in, enforce_sorted))
    k_out, k_state = k_layer(krnn.pack_sequence(k_in, enforce_sorted))
    assert isinstance(k_out, krnn.PackedSequence)
    np.testing.assert_allclose(k_out.data.detach().numpy(), t_out.data.detach().numpy(),
                               atol=1e-12)
    t_h = t_state[0] if cls == "LSTM" else t_state
    k_h = k_state[0] if cls == "LSTM" else k_state
    np.testing.assert_allclose(k_h.detach().numpy(), t_h.detach().numpy(), atol=1e-12)
    (t_out.data.sum() + t_h.square().sum()).backward()
    (k_out.data.sum() + k_h.square().sum()).backward()
    for k, t in zip(k_in, t_in):
        np.testing.assert_allclose(k.grad.numpy(), t.grad.numpy(), atol=1e-12)
    k_params = dict(k_layer.named_parameters())
    for name, p in t_layer.named_parameters():
        np.testing.assert_allclose(k_params[name].grad.numpy(), p.grad.numpy(), atol=1e-12)


@pytest.mark.parametrize("lengths", [[4, 3, 4, 2], [5, 3, 2]])
def test_packed_dropout_between_layers_compiled_matches_eager(lengths):
    # the traced (and the cuda) path runs the steps one by one; its loop over time once reused
    # the name that held the batch's sort order, so the dropout noise between layers was
    # drawn for the wrong rows: silently when the batch had as many sequences as time steps,
    # an IndexError otherwise
    rng = np.random.default_rng(1)
    seqs = [kiln.tensor(rng.standard_normal((n, 3)).astype(np.float32)) for n in lengths]
    kiln.manual_seed(0)
    layer = kiln.nn.LSTM(3, 4, num_layers=2, dropout=0.5)

    def run(padded):
        packed = krnn.pack_padded_sequence(padded, lengths, enforce_sorted=False)
        out, (h, c) = layer(packed)
        return out.data.sum() + h.square().sum()

    padded = krnn.pad_sequence(seqs)
    kiln.manual_seed(7)
    eager = run(padded)
    kiln.manual_seed(7)
    compiled = kiln.compile(run, fullgraph=True)(padded)
    np.testing.assert_allclose(compiled.item(), eager.item(), rtol=1e-5)
    packed = krnn.pack_sequence(seqs, enforce_sorted=False)
    # and the noise is the same with the layer's sequences on the default device elsewhere:
    # the packed batch sizes and the lengths stay on the CPU, as PyTorch keeps them
    assert packed.batch_sizes.device.type == "cpu"
    assert krnn.pad_packed_sequence(packed)[1].device.type == "cpu"

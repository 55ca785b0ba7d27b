"""RNN/LSTM/GRU, their cells, MultiheadAttention and the Transformer encoder against PyTorch."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import kiln
from tests.nn.layer_parity import build_pair, check_layer

RNN_CASES = [
    ("rnn", lambda nn: nn.RNN(3, 4), [(5, 2, 3)]),
    ("rnn_relu_2layer", lambda nn: nn.RNN(3, 4, num_layers=2, nonlinearity="relu"),
     [(5, 2, 3)]),
    ("rnn_bidir_batch_first", lambda nn: nn.RNN(3, 4, batch_first=True, bidirectional=True),
     [(2, 5, 3)]),
    ("rnn_no_bias", lambda nn: nn.RNN(3, 4, bias=False), [(4, 2, 3)]),
    ("lstm", lambda nn: nn.LSTM(3, 4), [(5, 2, 3)]),
    ("lstm_2layer_bidir", lambda nn: nn.LSTM(3, 4, num_layers=2, bidirectional=True),
     [(5, 2, 3)]),
    ("lstm_batch_first", lambda nn: nn.LSTM(3, 5, batch_first=True), [(2, 4, 3)]),
    ("lstm_unbatched", lambda nn: nn.LSTM(3, 4, num_layers=2), [(5, 3)]),
    ("gru", lambda nn: nn.GRU(3, 4), [(5, 2, 3)]),
    ("gru_2layer_bidir_bf", lambda nn: nn.GRU(3, 4, 2, batch_first=True, bidirectional=True),
     [(2, 5, 3)]),
]


@pytest.mark.parametrize("name,make,inputs", RNN_CASES, ids=[c[0] for c in RNN_CASES])
def test_recurrent_layer(name, make, inputs):
    check_layer(make, inputs)


def test_lstm_with_initial_state():
    # h0 and c0 are inputs too: their gradients must match
    check_layer(lambda nn: nn.LSTM(3, 4, num_layers=2, bidirectional=True),
                [(5, 2, 3), (4, 2, 4), (4, 2, 4)],
                call=lambda layer, x, h, c: layer(x, (h, c)))


def test_lstm_with_projections():
    # proj_size: h = (o * tanh(c)) W_hr^T, so h (and the next layer's input) has proj_size
    # features while c keeps hidden_size; weight_hr_l{k} after the biases, initialized alike
    check_layer(lambda nn: nn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2),
                [(4, 2, 3), (4, 2, 2), (4, 2, 5)],
                call=lambda layer, x, h, c: layer(x, (h, c)))
    check_layer(lambda nn: nn.LSTM(3, 5, batch_first=True, bias=False, proj_size=3),
                [(2, 4, 3)])
    t_layer, k_layer = build_pair(lambda nn: nn.LSTM(3, 5, num_layers=2, proj_size=2))
    assert repr(k_layer) == repr(t_layer)
    assert [tuple(w.shape) for w in k_layer.all_weights[1]] == \
        [tuple(w.shape) for w in t_layer.all_weights[1]]
    # packed sequences of different lengths: outputs, final states and gradients
    lengths = [4, 2, 3]

    def packed(layer, x):
        lib = torch if isinstance(x, torch.Tensor) else kiln
        seq = lib.nn.utils.rnn.pack_padded_sequence(x, lib.tensor(lengths), batch_first=True,
                                                    enforce_sorted=False)
        out, (h, c) = layer(seq)
        return lib.nn.utils.rnn.pad_packed_sequence(out, batch_first=True)[0], h, c
    check_layer(lambda nn: nn.LSTM(3, 5, num_layers=2, batch_first=True, bidirectional=True,
                                   proj_size=2), [(3, 4, 3)], call=packed)
    for lib in (torch, kiln):
        with pytest.raises(ValueError, match="proj_size has to be smaller than hidden_size"):
            lib.nn.LSTM(3, 4, proj_size=4)


def test_gru_with_initial_state_float32():
    check_layer(lambda nn: nn.GRU(3, 4, 2), [(6, 3, 3), (2, 3, 4)],
                call=lambda layer, x, h: layer(x, h), dtype=np.float32, atol=1e-5, rtol=1e-4)


def test_rnn_dropout_between_layers_is_train_only():
    t_layer, k_layer = build_pair(lambda nn: nn.LSTM(3, 4, num_layers=2, dropout=0.5))
    x = np.random.default_rng(0).normal(size=(5, 2, 3))
    k_layer.eval()
    out_eval = k_layer(kiln.tensor(x))[0].detach().numpy()
    np.testing.assert_allclose(out_eval, t_layer(torch.from_numpy(x))[0].detach().numpy(),
                               atol=1e-10)
    k_layer.train()
    out_train = k_layer(kiln.tensor(x))[0].detach().numpy()
    assert not np.allclose(out_train, out_eval)


CELL_CASES = [
    ("rnn_cell", lambda nn: nn.RNNCell(3, 4), [(2, 3), (2, 4)]),
    ("rnn_cell_relu", lambda nn: nn.RNNCell(3, 4, nonlinearity="relu"), [(2, 3), (2, 4)]),
    ("gru_cell", lambda nn: nn.GRUCell(3, 4), [(2, 3), (2, 4)]),
    ("gru_cell_unbatched", lambda nn: nn.GRUCell(3, 4, bias=False), [(3,), (4,)]),
]


@pytest.mark.parametrize("name,make,inputs", CELL_CASES, ids=[c[0] for c in CELL_CASES])
def test_cell(name, make, inputs):
    check_layer(make, inputs)


def test_cell_without_state_and_lstm_cell():
    check_layer(lambda nn: nn.GRUCell(3, 4), [(2, 3)])
    check_layer(lambda nn: nn.LSTMCell(3, 4), [(2, 3), (2, 4), (2, 4)],
                call=lambda layer, x, h, c: layer(x, (h, c)))
    check_layer(lambda nn: nn.LSTMCell(3, 4), [(3,)])


def test_recurrent_reprs():
    for make in (lambda nn: nn.LSTM(3, 4, num_layers=2, batch_first=True, bidirectional=True,
                                    dropout=0.1),
                 lambda nn: nn.RNN(3, 4, nonlinearity="relu", bias=False),
                 lambda nn: nn.GRUCell(3, 4), lambda nn: nn.RNNCell(3, 4, nonlinearity="relu")):
        assert repr(make(kiln.nn)) == repr(make(torch.nn))


# ----------------------------------------------------------------------------- attention

def _mha_call(**kwargs):
    return lambda layer, q, k, v: layer(q, k, v, **kwargs)


MHA_CASES = [
    ("self", lambda nn: nn.MultiheadAttention(8, 2), [(5, 3, 8)] * 3, _mha_call()),
    ("cross_no_avg", lambda nn: nn.MultiheadAttention(8, 4),
     [(5, 3, 8), (7, 3, 8), (7, 3, 8)], _mha_call(average_attn_weights=False)),
    ("batch_first_no_weights", lambda nn: nn.MultiheadAttention(8, 2, batch_first=True),
     [(3, 5, 8)] * 3, _mha_call(need_weights=False)),
    ("kdim_vdim", lambda nn: nn.MultiheadAttention(8, 2, kdim=5, vdim=6),
     [(4, 2, 8), (6, 2, 5), (6, 2, 6)], _mha_call()),
    ("no_bias", lambda nn: nn.MultiheadAttention(8, 2, bias=False), [(4, 2, 8)] * 3,
     _mha_call()),
    ("unbatched", lambda nn: nn.MultiheadAttention(8, 2), [(4, 8), (5, 8), (5, 8)],
     _mha_call()),
    ("bias_kv_zero_attn", lambda nn: nn.MultiheadAttention(8, 2, add_bias_kv=True,
                                                            add_zero_attn=True),
     [(4, 3, 8), (5, 3, 8), (5, 3, 8)], _mha_call()),
    ("bias_kv_unbatched", lambda nn: nn.MultiheadAttention(8, 4, add_bias_kv=True),
     [(4, 8), (5, 8), (5, 8)], _mha_call(average_attn_weights=False)),
]


@pytest.mark.parametrize("name,make,inputs,call", MHA_CASES, ids=[c[0] for c in MHA_CASES])
def test_multihead_attention(name, make, inputs, call):
    check_layer(make, inputs, call=call)


def _masks():
    causal_bool = np.triu(np.ones((5, 5), dtype=bool), 1)
    padding = np.zeros((3, 5), dtype=bool)
    padding[0, 3:] = True
    padding[2, 4] = True
    return causal_bool, padding


def test_multihead_attention_masks():
    causal_bool, padding = _masks()
    float_mask = np.where(causal_bool, -np.inf, 0.0)
    per_head = np.random.default_rng(3).normal(size=(3 * 2, 5, 5))
    make = lambda nn: nn.MultiheadAttention(8, 2)
    check_layer(make, [(5, 3, 8)] * 3 + [causal_bool, padding],
                call=lambda m, q, k, v, am, kp: m(q, k, v, attn_mask=am, key_padding_mask=kp))
    check_layer(make, [(5, 3, 8)] * 3 + [float_mask],
                call=lambda m, q, k, v, am: m(q, k, v, attn_mask=am))
    check_layer(make, [(5, 3, 8)] * 3 + [per_head],
                call=lambda m, q, k, v, am: m(q, k, v, attn_mask=am))
    # the appended key (bias_k) and the zero key take a mask column each, never masked
    check_layer(lambda nn: nn.MultiheadAttention(8, 2, add_bias_kv=True, add_zero_attn=True),
                [(5, 3, 8)] * 3 + [causal_bool, padding],
                call=lambda m, q, k, v, am, kp: m(q, k, v, attn_mask=am, key_padding_mask=kp))


def test_multihead_attention_float32_and_repr():
    check_layer(lambda nn: nn.MultiheadAttention(16, 4, batch_first=True), [(2, 6, 16)] * 3,
                call=_mha_call(), dtype=np.float32, atol=1e-5, rtol=1e-4)
    assert repr(kiln.nn.MultiheadAttention(8, 2)) == repr(torch.nn.MultiheadAttention(8, 2))


def test_scaled_dot_product_attention():
    from tests.parity import check_op
    check_op(lambda lib, q, k, v: lib.nn.functional.scaled_dot_product_attention(q, k, v),
             [(2, 3, 4, 8), (2, 3, 6, 8), (2, 3, 6, 5)], dtype=np.float64)
    check_op(lambda lib, q, k, v: lib.nn.functional.scaled_dot_product_attention(
        q, k, v, is_causal=True, scale=0.3), [(2, 5, 4)] * 3, dtype=np.float64)
    mask = np.random.default_rng(0).random((4, 6)) > 0.3
    mask[:, 0] = True
    check_op(lambda lib, q, k, v, m: lib.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=m), [(2, 4, 8), (2, 6, 8), (2, 6, 8), mask], dtype=np.float64)
    add = np.random.default_rng(1).normal(size=(4, 6))
    check_op(lambda lib, q, k, v, m: lib.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=m), [(2, 4, 8), (2, 6, 8), (2, 6, 8), add], dtype=np.float64)


# ----------------------------------------------------------------------------- transformer

ENCODER_CASES = [
    ("post_norm_relu", lambda nn: nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0)),
    ("pre_norm_gelu_bf", lambda nn: nn.TransformerEncoderLayer(
        8, 2, 16, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)),
    ("stack_with_norm", lambda nn: nn.TransformerEncoder(
        nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0), 2, norm=nn.LayerNorm(8),
        enable_nested_tensor=False)),
]


@pytest.mark.parametrize("name,make", ENCODER_CASES, ids=[c[0] for c in ENCODER_CASES])
def test_transformer_encoder(name, make):
    # train mode: PyTorch's eval fast path (nested tensors) is a different algorithm
    check_layer(make, [(5, 3, 8)], train=True)


def test_transformer_encoder_masks_and_repr():
    causal_bool, padding = _masks()
    make = lambda nn: nn.TransformerEncoder(nn.TransformerEncoderLayer(
        8, 2, 16, dropout=0.0), 2, enable_nested_tensor=False)
    check_layer(make, [(5, 3, 8), causal_bool, padding], train=True,
                call=lambda m, x, am, kp: m(x, mask=am, src_key_padding_mask=kp))
    assert repr(make(kiln.nn)) == repr(make(torch.nn))


def _encoder_pair(**kw):
    """The same batch_first encoder (2 heads, relu) in torch and kiln, in eval mode."""
    out = []
    for lib in (torch, kiln):
        lib.manual_seed(0)
        layer = lib.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        out.append(lib.nn.TransformerEncoder(layer, 2, **kw).eval())
    out[1].load_state_dict({k: kiln.tensor(v.numpy()) for k, v in out[0].state_dict().items()})
    return out


@pytest.mark.parametrize("padding,norm", [
    ([[False] * 5, [False, False, False, True, True]], False),      # left-aligned: fast path
    ([[False] * 5, [False, False, False, True, True]], True),       # zeros, then the norm
    ([[False] * 5, [False, True, False, False, True]], False),      # not left-aligned: masked
])
def test_transformer_encoder_eval_fast_path_zeros_padded_positions_as_torch(padding, norm):
    # torch's eval, no-grad inference runs the layers on a nested tensor built from the
    # padding mask and pads the output back with zeros (before the final norm)
    tenc, kenc = _encoder_pair(norm=None)
    if norm:
        tenc.norm, kenc.norm = torch.nn.LayerNorm(8), kiln.nn.LayerNorm(8)
        kenc.norm.load_state_dict({k: kiln.tensor(v.numpy())
                                   for k, v in tenc.norm.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    for grad in (False, True):          # with grad enabled and weights requiring it: no fast path
        with torch.set_grad_enabled(grad), kiln.set_grad_enabled(grad):
            want = tenc(torch.tensor(x), src_key_padding_mask=torch.tensor(padding))
            got = kenc(kiln.tensor(x), src_key_padding_mask=kiln.tensor(padding))
        np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=1e-5,
                                   atol=1e-5)
    # a float mask (0 keeps, -inf pads) takes the same path; the flag turns it off
    fmask = np.where(np.array(padding), -np.inf, 0.0).astype(np.float32)
    with torch.no_grad(), kiln.no_grad():
        for enabled in (True, False):
            torch.backends.mha.set_fastpath_enabled(enabled)
            kiln.backends.mha.set_fastpath_enabled(enabled)
            try:
                want = tenc(torch.tensor(x), src_key_padding_mask=torch.tensor(fmask))
                got = kenc(kiln.tensor(x), src_key_padding_mask=kiln.tensor(fmask))
            finally:
                torch.backends.mha.set_fastpath_enabled(True)
                kiln.backends.mha.set_fastpath_enabled(True)
            assert kiln.backends.mha.get_fastpath_enabled()
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


def test_compiled_transformer_encoder_eval_pads_with_zeros_as_eager():
    # the left-alignment check is a tensor in the program, not a read: whole graph, eager's
    # zeros for a left-aligned mask and the masked path's values for another, on replay too
    tenc, kenc = _encoder_pair()
    compiled = kiln.compile(lambda x, m: kenc(x, src_key_padding_mask=m), fullgraph=True)
    x = kiln.tensor(np.random.default_rng(1).standard_normal((2, 5, 8)).astype(np.float32))
    with kiln.no_grad(), torch.no_grad():
        for padding in ([[False] * 5, [False, False, True, True, True]],
                        [[False] * 5, [True, False, False, False, False]]):
            m = kiln.tensor(padding)
            want = tenc(torch.tensor(x.numpy()), src_key_padding_mask=torch.tensor(padding))
            np.testing.assert_allclose(compiled(x, m).numpy(),
                                       kenc(x, src_key_padding_mask=m).numpy(), rtol=1e-6,
                                       atol=1e-6)
            np.testing.assert_allclose(compiled(x, m).numpy(), want.numpy(), rtol=1e-5,
                                       atol=1e-5)


def test_transformer_encoder_says_why_it_uses_no_nested_tensor_as_torch():
    for lib in (torch, kiln):
        layer = lib.nn.TransformerEncoderLayer(8, 2, 16, norm_first=True, batch_first=True)
        with pytest.warns(UserWarning, match="use_nested_tensor is False because "
                          "encoder_layer.norm_first was True"):
            enc = lib.nn.TransformerEncoder(layer, 2)
        assert enc.enable_nested_tensor and not enc.use_nested_tensor and enc.mask_check
        odd = lib.nn.TransformerEncoderLayer(9, 3, 16, batch_first=True)
        with pytest.warns(UserWarning, match="num_heads is odd"):
            lib.nn.TransformerEncoder(odd, 1)
        assert layer.activation_relu_or_gelu == 1


def test_transformer_encoder_dropout_active_in_training():
    layer = kiln.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.5)
    x = kiln.randn(5, 3, 8)
    layer.eval()
    a, b = layer(x), layer(x)
    np.testing.assert_array_equal(a.detach().numpy(), b.detach().numpy())
    layer.train()
    assert not np.allclose(layer(x).detach().numpy(), a.detach().numpy())


def _built_encoder_pair(norm_first=False, final_norm=True):
    """torch's TransformerEncoder in eval mode, kiln's with its weights, and the warnings each
    gave when built."""
    built = []
    for lib in (torch, kiln):
        lib.manual_seed(0)
        layer = lib.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True,
                                               norm_first=norm_first)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            encoder = lib.nn.TransformerEncoder(
                layer, 2, norm=lib.nn.LayerNorm(8) if final_norm else None)
        built.append((encoder.eval(), [str(w.message) for w in caught]))
    (t, t_notes), (k, k_notes) = built
    k.load_state_dict({name: kiln.tensor(v.numpy()) for name, v in t.state_dict().items()})
    return t, k, t_notes, k_notes


def _padded_batch(left_aligned=True):
    x = np.random.default_rng(4).normal(size=(3, 6, 8)).astype(np.float32)
    padding = np.zeros((3, 6), dtype=bool)
    padding[1, 4:] = True
    padding[2, 2:] = True
    if not left_aligned:
        padding[0, 0] = True                  # padding before a token
    return x, padding


@pytest.mark.parametrize("left_aligned", [True, False])
@pytest.mark.parametrize("final_norm", [True, False])
def test_transformer_encoder_inference_zeroes_padding_as_torch_nested_path(left_aligned,
                                                                           final_norm):
    # PyTorch's eval fast path runs a key-padding-masked batch as a nested tensor and pads the
    # result back with zeros (then the final norm): the padded rows were the attention's output
    t, k, _, _ = _built_encoder_pair(final_norm=final_norm)
    x, padding = _padded_batch(left_aligned)
    with torch.no_grad():
        expected = t(torch.tensor(x), src_key_padding_mask=torch.tensor(padding))
    expected = expected.to_padded_tensor(0.0, x.shape) if expected.is_nested else expected
    expected = expected.numpy()
    if left_aligned and not final_norm:
        assert np.all(expected[padding] == 0)
    with kiln.no_grad():
        got = k(kiln.tensor(x), src_key_padding_mask=kiln.tensor(padding)).numpy()
        # with a float mask too, and compiled (its mask check a tensor, not a graph break)
        float_mask = kiln.tensor(np.where(padding, -np.inf, 0.0).astype(np.float32))
        got_float = k(kiln.tensor(x), src_key_padding_mask=float_mask).numpy()
        step = kiln.compile(lambda a, m: k(a, src_key_padding_mask=m), fullgraph=True)
        compiled = [step(kiln.tensor(x), kiln.tensor(padding)).numpy() for _ in range(2)]
    for value in (got, got_float, *compiled):
        np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-5)


def test_transformer_encoder_keeps_padded_rows_off_the_fast_path():
    # training mode, a gradient wanted, or the fast path turned off: no nested tensor, so the
    # padded positions keep the layers' values, as in PyTorch
    t, k, _, _ = _built_encoder_pair()
    x, padding = _padded_batch()
    kiln.backends.mha.set_fastpath_enabled(False)
    try:
        with kiln.no_grad():
            off = k(kiln.tensor(x), src_key_padding_mask=kiln.tensor(padding)).numpy()
    finally:
        kiln.backends.mha.set_fastpath_enabled(True)
    with_grad = k(kiln.tensor(x), src_key_padding_mask=kiln.tensor(padding)).detach().numpy()
    expected = t(torch.tensor(x), src_key_padding_mask=torch.tensor(padding)).detach().numpy()
    assert kiln.backends.mha.get_fastpath_enabled()
    for value in (off, with_grad):
        np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-5)
        assert np.abs(value[padding]).min() > 0


def test_transformer_encoder_says_why_it_takes_no_nested_tensors():
    t, k, t_notes, k_notes = _built_encoder_pair(norm_first=True)
    assert k_notes == t_notes and "norm_first was True" in k_notes[0]
    assert (k.enable_nested_tensor, k.use_nested_tensor, k.mask_check) == (True, False, True)
    assert k.layers[0].activation_relu_or_gelu == t.layers[0].activation_relu_or_gelu == 1


def test_transformer_in_inference_decodes_from_the_nested_paths_memory():
    # nn.Transformer's encoder takes the same fast path: the decoder attends to a memory whose
    # padded rows are the encoder norm of zeros (no memory_key_padding_mask given)
    rng = np.random.default_rng(5)
    src, tgt = (rng.normal(size=s).astype(np.float32) for s in [(2, 5, 8), (2, 4, 8)])
    padding = np.array([[False] * 5, [False] * 3 + [True] * 2])
    outs = []
    for lib in (torch, kiln):
        lib.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = lib.nn.Transformer(8, 2, 2, 2, 16, batch_first=True)
        if lib is kiln:
            model.load_state_dict({k: kiln.tensor(v.numpy()) for k, v in state.items()})
        state = model.state_dict()
        with lib.no_grad():
            outs.append(model.eval()(lib.tensor(src), lib.tensor(tgt),
                                     src_key_padding_mask=lib.tensor(padding)).numpy())
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-5)


def _left_padded_causal():
    """A causal mask with left padding: the padded queries of row 1 see no key at all."""
    keep = np.tril(np.ones((4, 4), dtype=bool))[None].repeat(2, 0)
    keep[1, :, :2] = False                          # row 1's first two tokens are padding
    return keep[:, None]                            # (batch, 1, L, S): True takes part


def test_sdpa_fully_masked_rows_give_zeros_and_zero_gradients_like_torch():
    # PyTorch (since 2.5) gives 0 where a query sees no key; kiln gave NaN, and NaN gradients
    # for every key and value, so a left-padded causal batch trained to NaN
    from tests.parity import check_op
    keep = _left_padded_causal()
    additive = np.where(keep, 0.0, -np.inf)
    for mask in (keep, additive):
        check_op(lambda lib, q, k, v, m: lib.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=m), [(2, 3, 4, 8), (2, 3, 4, 8), (2, 3, 4, 8), mask],
            dtype=np.float64)
    with kiln.no_grad():
        q = kiln.ones(2, 3, 4, 8)
        out = kiln.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=kiln.tensor(keep))
    assert np.all(out.numpy()[1, :, :2] == 0) and np.isfinite(out.numpy()).all()


def test_multihead_attention_fully_padded_query_without_weights_is_zero_as_torch():
    # need_weights=False goes through scaled_dot_product_attention in PyTorch: zeros; the
    # weights it returns otherwise come from a plain softmax, NaN in such a row, in both
    padding = np.array([[False, False, False], [True, True, True]])
    for need_weights in (False, True):
        outs = []
        for lib in (torch, kiln):
            lib.manual_seed(0)
            mha = lib.nn.MultiheadAttention(4, 2, batch_first=True)
            if lib is kiln:
                mha.load_state_dict({k: kiln.tensor(v.numpy()) for k, v in state.items()})
            state = mha.state_dict()
            x = lib.tensor(np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32))
            out, _ = mha(x, x, x, key_padding_mask=lib.tensor(padding),
                         need_weights=need_weights)
            outs.append(out.detach().numpy())
        np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-6)
        assert np.isnan(outs[1][1]).all() == need_weights


def test_compiled_left_padded_causal_attention_step_matches_eager_without_nan():
    keep = kiln.tensor(_left_padded_causal())
    rng = np.random.default_rng(1)
    x = kiln.tensor(rng.normal(size=(2, 3, 4, 8)).astype(np.float32))
    losses = {}
    for compiled in (False, True):
        w = kiln.tensor(np.eye(8, dtype=np.float32) + 0.1, requires_grad=True)
        opt = kiln.optim.SGD([w], lr=0.1)

        def step():
            q = x @ w
            out = kiln.nn.functional.scaled_dot_product_attention(q, x, x @ w.t(), attn_mask=keep)
            loss = out.square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss

        if compiled:
            step = kiln.compile(step, fullgraph=True)
        losses[compiled] = [step().item() for _ in range(3)]
        assert np.isfinite(w.detach().numpy()).all()
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)


def test_compiled_transformer_encoder_sees_the_fast_path_flag_change():
    # the flag a replay's choice of zeros depends on is guarded: turned off between calls,
    # the next call traces again and gives the masked path's values, as eager
    _, kenc = _encoder_pair()
    compiled = kiln.compile(lambda x, m: kenc(x, src_key_padding_mask=m))
    x = kiln.tensor(np.random.default_rng(2).standard_normal((2, 5, 8)).astype(np.float32))
    m = kiln.tensor([[False] * 5, [False, False, False, True, True]])
    try:
        with kiln.no_grad():
            for enabled in (True, True, False, False, True):
                kiln.backends.mha.set_fastpath_enabled(enabled)
                got, want = compiled(x, m), kenc(x, src_key_padding_mask=m)
                np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-6)
                assert (float(got[1, 4].abs().sum()) == 0.0) == enabled
    finally:
        kiln.backends.mha.set_fastpath_enabled(True)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_recurrent_initial_state_of_the_wrong_shape_is_refused_as_torch(mode):
    # a batch of one would broadcast over the batch: kiln returned an output where PyTorch
    # raises
    def state(lib, shape, cell_shape=None):
        h = lib.zeros(*shape)
        return (h, lib.zeros(*(cell_shape or shape))) if mode == "LSTM" else h

    def words(lib, call):
        with pytest.raises(RuntimeError) as caught:
            call(lib)
        return str(caught.value).split(" (at ")[0]

    cases = [lambda lib, m, x: m(x, state(lib, (2, 1, 4))),
             lambda lib, m, x: m(x, state(lib, (1, 2, 4))),
             lambda lib, m, x: m(x, state(lib, (2, 4))),
             lambda lib, m, x: m(x[:, 0], state(lib, (2, 1, 4)))]
    if mode == "LSTM":
        cases.append(lambda lib, m, x: m(x, state(lib, (2, 2, 4), (2, 2, 5))))
    for case in cases:
        got = []
        for lib in (torch, kiln):
            module = getattr(lib.nn, mode)(3, 4, 2)
            x = lib.zeros(5, 2, 3)
            got.append(words(lib, lambda lib: case(lib, module, x)))
        assert got[0] == got[1]
    for lib in (torch, kiln):
        with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM"):
            getattr(lib.nn, mode)(3, 4, proj_size=2) if mode != "LSTM" else \
                lib.nn.GRU(3, 4, proj_size=2)

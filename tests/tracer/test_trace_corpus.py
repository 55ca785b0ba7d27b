"""Tracing a corpus of programs: every graph verifies, and the interpreter reproduces eager.

Each case builds fresh, seeded state and returns `(fn, args)`. The traced run is an ordinary
eager run, so its results are the reference: interpreting the captured graph on the values the
inputs had at trace time must give the same outputs, write-backs and `.grad`s.
"""

import numpy as np
import pytest

import kiln
from kiln.ir.graph import Graph
from kiln.ir.interpreter import interpret
from kiln.tracer import functional as TF
from kiln.tracer.trace import flatten


def _params(*shapes, scale=0.5):
    return [(kiln.randn(*s) * scale).requires_grad_() for s in shapes]


def _backward(loss_fn, params):
    """Wrap `loss_fn` so the traced program also runs backward (gradients are write-backs)."""
    def fn(*args):
        loss = loss_fn(*args)
        loss.backward()
        return loss.detach()
    return fn


def case_elementwise_chain():
    x, y = kiln.randn(4, 5), kiln.randn(5)
    return (lambda a, b: ((a * b + 1).tanh() - a.exp() / 3).abs().sqrt()), (x, y)


def case_int_float_promotion():
    x = kiln.arange(12).reshape(3, 4)
    return (lambda a: (a * 2.5 + a // 3 - a % 2).sigmoid()), (x,)


def case_comparisons_where():
    x, y = kiln.randn(3, 4), kiln.randn(3, 4)
    return (lambda a, b: kiln.where((a > b) & (a > 0), a, b * 2).clamp(-1, 1)), (x, y)


def case_reductions():
    x = kiln.randn(4, 6)
    return (lambda a: (a.sum(1), a.mean(0, keepdim=True), a.amax(1), a.var(0),
                       a.logsumexp(1), a.argmax(1), a.prod(0), a.std())), (x,)


def case_softmax_logsoftmax():
    x = kiln.randn(5, 7)
    return (lambda a: (kiln.softmax(a, 1), kiln.log_softmax(a, 0))), (x,)


def case_views_and_movement():
    x = kiln.randn(2, 3, 4)
    return (lambda a: a.permute(2, 0, 1).reshape(4, 6).t().flatten()[::2].unsqueeze(0)
            .expand(3, 12)), (x,)


def case_cat_stack_split():
    x, y = kiln.randn(2, 3), kiln.randn(2, 3)
    return (lambda a, b: kiln.cat([kiln.stack([a, b]).sum(0), *kiln.split(b, 1, dim=1)], 1)
            .flip(0).roll(1, 1)), (x, y)


def case_pad_tril():
    x = kiln.randn(4, 4)
    return (lambda a: (kiln.tril(a) + kiln.triu(a, 1) * 2).narrow(0, 1, 2)), (x,)


def case_indexing_basic():
    x = kiln.randn(4, 5, 6)
    return (lambda a: a[1, :, ::2] + a[..., 0:3, None][2, :, :, 0]), (x,)


def case_indexing_tensor():
    x = kiln.randn(5, 4)
    idx = kiln.tensor([3, 0, 4, 4])
    return (lambda a, i: a[i] * 2 + a[:, kiln.tensor([1, 2])].sum()), (x, idx)


def case_gather_scatter():
    x = kiln.randn(3, 5)
    idx = kiln.tensor([[0, 2], [1, 1], [4, 3]])
    return (lambda a, i: kiln.gather(a, 1, i).exp() + kiln.zeros(3, 5).scatter_add(
        1, i, kiln.ones(3, 2)).sum(1, keepdim=True)), (x, idx)


def case_masked_fill_one_hot():
    x = kiln.randn(3, 4)
    labels = kiln.tensor([1, 0, 3])
    return (lambda a, l: a.masked_fill(a < 0, 0.0) * TF.one_hot(l, 4)), (x, labels)


def case_setitem():
    def fn(a):
        b = a.clone()
        b[0] = 1.0
        b[:, 1] = b[:, 2] * 3
        return b
    return fn, (kiln.randn(3, 4),)


def case_inplace_on_argument():
    def fn(a):
        a.mul_(2).add_(1)
        return a.sum()
    return fn, (kiln.randn(3, 3),)


def case_matmul_batched():
    a, b = kiln.randn(2, 3, 4), kiln.randn(4, 5)
    c = kiln.randn(2, 5, 3)
    return (lambda x, y, z: (x @ y) @ z + kiln.bmm(x, x.mT)), (a, b, c)


def case_einsum():
    a, b = kiln.randn(2, 3, 4), kiln.randn(2, 4, 5)
    return (lambda x, y: kiln.einsum("bij,bjk->bik", x, y)), (a, b)


def case_creation_inside():
    def fn(a):
        return a + kiln.arange(4) * 0.5 + kiln.ones(3, 4) + kiln.eye(4)[:3] + kiln.tensor(2.0)
    return fn, (kiln.randn(3, 4),)


def case_random_dropout_like():
    def fn(a):
        keep = kiln.rand(a.shape) > 0.3
        return a * keep / 0.7 + kiln.randn(3, 4) * 0.1
    return fn, (kiln.randn(3, 4),)


def case_closed_over_parameters():
    w, b = _params((4, 3), (3,))
    return (lambda x: (x @ w + b).relu().sum(0)), (kiln.randn(5, 4),)


def case_backward_mlp():
    w1, b1, w2 = _params((6, 8), (8,), (8, 3))

    def loss(x):
        h = kiln.tanh(x @ w1 + b1)
        return ((h @ w2) ** 2).mean()
    return _backward(loss, [w1, b1, w2]), (kiln.randn(4, 6),)


def case_backward_softmax_cross_entropy():
    w = _params((5, 4))[0]

    def loss(x, y):
        logp = kiln.log_softmax(x @ w, 1)
        return -(logp * TF.one_hot(y, 4)).sum(1).mean()
    return _backward(loss, [w]), (kiln.randn(6, 5), kiln.tensor([0, 1, 2, 3, 0, 1]))


def case_backward_gelu_layernorm():
    g, b = _params((8,), (8,))

    def loss(x):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        y = (x - mu) / (var + 1e-5).sqrt() * g + b
        return TF.gelu(y, approximate="tanh").sum()
    return _backward(loss, [g, b]), (kiln.randn(4, 8),)


def case_backward_indexing_and_cat():
    w = _params((6, 3))[0]

    def loss(idx):
        e = w[idx]
        return kiln.cat([e, e.flip(0)], 1).pow(2).sum()
    return _backward(loss, [w]), (kiln.tensor([0, 5, 2, 2]),)


def case_backward_accumulates_existing_grad():
    w = _params((3, 3))[0]
    w.grad = kiln.ones(3, 3)

    def loss(x):
        return (x @ w).sin().sum()
    return _backward(loss, [w]), (kiln.randn(2, 3),)


def case_manual_sgd_step():
    w, b = _params((4, 2), (2,))

    def step(x, y):
        loss = ((x @ w + b - y) ** 2).mean()
        loss.backward()
        with kiln.no_grad():
            for p in (w, b):
                p -= 0.1 * p.grad
                p.grad = None
        return loss.detach()
    return step, (kiln.randn(8, 4), kiln.randn(8, 2))


def case_autograd_grad_higher_order():
    def fn(x):
        x = x.detach().requires_grad_()
        y = (x ** 3).sum()
        (g,) = kiln.autograd.grad(y, x, create_graph=True)
        (gg,) = kiln.autograd.grad(g.sum(), x)
        return g.detach(), gg
    return fn, (kiln.randn(5),)


def case_cumsum_norm_minmax():
    x = kiln.randn(3, 5)
    return (lambda a: (a.cumsum(1), a.norm(dim=1), a.min(1).values, a.max(0).indices,
                       a.amin(), kiln.maximum(a, a.T[:3, :3].sum()))), (x,)


def case_bool_logic():
    x = kiln.randn(4, 4)
    return (lambda a: (((a > 0) | (a < -1)) ^ (a.abs() > 0.5), (~(a > 0)).any(1),
                       (a > -3).all())), (x,)


def case_adam_training_step():
    from kiln.optim import Adam
    w1, b1, w2 = _params((6, 8), (8,), (8, 2))
    opt = Adam([w1, b1, w2], lr=1e-2)

    def step(x, y):
        opt.zero_grad()
        loss = ((kiln.relu(x @ w1 + b1) @ w2 - y) ** 2).mean()
        loss.backward()
        opt.step()
        return loss.detach()
    x, y = kiln.randn(5, 6), kiln.randn(5, 2)
    step(x, y)          # the first step creates the optimizer state; trace the second
    return step, (x, y)


def case_activations():
    x = kiln.randn(4, 5)
    return (lambda a: TF.silu(a) + TF.softplus(a) + TF.leaky_relu(a, 0.2) + TF.elu(a)
            + TF.gelu(a)), (x,)


def case_expand_repeat_unbind():
    x = kiln.randn(3, 1, 2)
    return (lambda a: sum(a.expand(3, 4, 2).repeat(1, 1, 2).unbind(1)).chunk(2, dim=1)[0]), (x,)


def case_rounding_and_nan_handling():
    x = kiln.tensor([[0.5, -1.5, float("nan")], [float("inf"), 2.7, -0.2]])
    return (lambda a: (a.floor(), a.ceil(), a.round(), a.trunc(), a.isnan(), a.isinf(),
                       a.nan_to_num(0.0, 9.0, -9.0), a.sign())), (x,)


# ----------------------------------------------------------------------------- nn layers, losses

def _module_case(make_module, *input_shapes, train=True, backward=True):
    """A forward through a freshly built module (and backward when asked)."""
    def build():
        module = make_module()
        module.train(train)
        xs = [kiln.randn(*s) for s in input_shapes]

        def fn(*args):
            out = module(*args)
            out = out[0] if isinstance(out, tuple) else out
            if backward:
                (out * out).mean().backward()
            return out.detach()
        return fn, tuple(xs)
    return build


def _nn():
    import kiln.nn as nn
    return nn


case_nn_linear_mlp = _module_case(lambda: _nn().Sequential(
    _nn().Linear(6, 8), _nn().GELU(), _nn().Linear(8, 3), _nn().LogSoftmax(1)), (4, 6))
case_nn_conv_pool = _module_case(lambda: _nn().Sequential(
    _nn().Conv2d(2, 3, 3, padding=1), _nn().ReLU(), _nn().MaxPool2d(2), _nn().Conv2d(3, 2, 2),
    _nn().AvgPool2d(1), _nn().AdaptiveAvgPool2d(1), _nn().Flatten()), (2, 2, 6, 6))
case_nn_conv1d_transpose = _module_case(lambda: _nn().Sequential(
    _nn().Conv1d(2, 3, 3, stride=2), _nn().Tanh()), (2, 2, 9))
case_nn_conv_transpose2d = _module_case(lambda: _nn().ConvTranspose2d(2, 3, 3, stride=2),
                                        (1, 2, 4, 4))
case_nn_batchnorm_train = _module_case(lambda: _nn().Sequential(
    _nn().BatchNorm2d(3), _nn().Flatten(), _nn().BatchNorm1d(48)), (4, 3, 4, 4))
case_nn_norms_eval = _module_case(lambda: _nn().Sequential(
    _nn().LayerNorm(8), _nn().Unflatten(1, (2, 4)), _nn().GroupNorm(1, 2)), (3, 8),
    train=False)
case_nn_dropout_embedding = _module_case(lambda: _EmbedDrop(), (2,), backward=True)
case_nn_lstm = _module_case(lambda: _nn().LSTM(4, 5, num_layers=2, batch_first=True), (2, 3, 4))
case_nn_gru_bidirectional = _module_case(lambda: _nn().GRU(4, 3, bidirectional=True), (3, 2, 4))
case_nn_rnn_cell = _module_case(lambda: _nn().RNNCell(4, 6), (3, 4))
case_nn_multihead_attention = _module_case(lambda: _SelfAttention(), (2, 5, 8))
case_nn_transformer_encoder = _module_case(lambda: _nn().TransformerEncoder(
    _nn().TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), 2), (2, 4, 8))


class _EmbedDrop:
    """Embedding lookup followed by dropout, fed integer ids made from the float input."""

    def __init__(self):
        nn = _nn()
        self.embed, self.drop = nn.Embedding(10, 4, padding_idx=0), nn.Dropout(0.3)

    def train(self, mode):
        self.embed.train(mode)
        self.drop.train(mode)

    def __call__(self, x):
        ids = kiln.tensor([[1, 0, 5], [9, 2, 2]])
        return self.drop(self.embed(ids)) + x.sum()


class _SelfAttention:
    def __init__(self):
        self.mha = _nn().MultiheadAttention(8, 2, batch_first=True)

    def train(self, mode):
        self.mha.train(mode)

    def __call__(self, x):
        return self.mha(x, x, x)


def _loss_case(make_loss, shape, target):
    def build():
        loss_fn = make_loss()
        x = kiln.randn(*shape).requires_grad_()

        def fn(inp, tgt):
            loss = loss_fn(inp, tgt)
            loss.backward()
            return loss.detach()
        return fn, (x, target())
    return build


case_loss_mse_l1_smooth_huber = _loss_case(lambda: (lambda a, b: _nn().MSELoss()(a, b)
    + _nn().L1Loss()(a, b) + _nn().SmoothL1Loss(beta=0.5)(a, b)
    + _nn().HuberLoss(delta=0.7)(a, b)), (4, 3), lambda: kiln.randn(4, 3))
case_loss_bce_family = _loss_case(lambda: (lambda a, b: _nn().BCELoss()(a.sigmoid(), b)
    + _nn().BCEWithLogitsLoss(pos_weight=kiln.tensor([1.0, 2.0, 0.5]))(a, b)), (4, 3),
    lambda: (kiln.rand(4, 3) > 0.5).float())
case_loss_cross_entropy = _loss_case(lambda: _nn().CrossEntropyLoss(
    weight=kiln.tensor([1.0, 2.0, 0.5, 1.0]), ignore_index=2, label_smoothing=0.1), (6, 4),
    lambda: kiln.tensor([0, 1, 2, 3, 3, 1]))
case_loss_cross_entropy_probs = _loss_case(lambda: _nn().CrossEntropyLoss(), (3, 4),
                                           lambda: kiln.softmax(kiln.randn(3, 4), 1))
case_loss_nll_kl = _loss_case(lambda: (lambda a, b: _nn().NLLLoss()(kiln.log_softmax(a, 1), b)
    + _nn().KLDivLoss(reduction="batchmean")(kiln.log_softmax(a, 1),
                                             kiln.softmax(b.float().unsqueeze(1) * a.detach(), 1))),
    (5, 3), lambda: kiln.tensor([0, 2, 1, 1, 0]))


def case_nn_training_step_adam_clip():
    nn = _nn()
    from kiln.optim import Adam
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()

    def step(x, y):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.detach()
    x, y = kiln.randn(8, 6), kiln.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    step(x, y)
    return step, (x, y)


CASES = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}


def _run_traced(build):
    kiln.manual_seed(0)
    fn, args = build()
    captured = kiln.compiler.trace(fn, *args, _snapshot=True)
    return fn, args, captured


@pytest.mark.parametrize("name", sorted(CASES))
def test_trace_verify_interpret_equals_eager(name):
    fn, args, captured = _run_traced(CASES[name])
    assert not captured.breaks, captured.breaks
    (program,) = captured.programs
    graph = program.graph
    graph.verify()
    assert graph.nodes, "nothing was captured"

    outs, news = interpret(graph, program.snapshots)
    eager_leaves, _ = flatten(captured.result)
    assert len(eager_leaves) == program.num_user_outputs
    for got, want in zip(outs, eager_leaves):
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-6, atol=1e-6)
    leaves, _ = flatten((args, {}))
    for (src, _), new in zip(graph.mutations, news):
        b = program.bindings[graph.inputs.index(src)]
        tensor = leaves[b.path] if b.kind == "arg" else b.tensor
        np.testing.assert_allclose(new, tensor.detach().numpy(), rtol=1e-6, atol=1e-6)
    for gw in program.grad_writes:
        if gw.output is None:
            assert gw.tensor.grad is None
        else:
            np.testing.assert_allclose(outs[gw.output], gw.tensor.grad.numpy(), rtol=1e-6,
                                       atol=1e-6)

    again = Graph.from_json(graph.to_json())
    again.verify()
    assert again.structure() == graph.structure()
    assert str(again) == str(graph)


@pytest.mark.parametrize("name", sorted(CASES))
def test_tracing_does_not_change_eager_results(name):
    kiln.manual_seed(0)
    fn, args = CASES[name]()
    plain = [t.detach().numpy().copy() for t in flatten(fn(*args))[0]]
    _, _, captured = _run_traced(CASES[name])
    traced = [t.detach().numpy() for t in flatten(captured.result)[0]]
    for a, b in zip(plain, traced):
        np.testing.assert_array_equal(a, b)


def test_corpus_is_large_enough():
    assert len(CASES) >= 30


def test_training_step_writes_back_parameters_grads_and_optimizer_state():
    fn, args, captured = _run_traced(CASES["adam_training_step"])
    program = captured.programs[0]
    kinds = {program.bindings[program.graph.inputs.index(src)].kind
             for src, _ in program.graph.mutations}
    assert kinds == {"lifted"}
    # three parameters, and Adam's exp_avg, exp_avg_sq and step for each
    assert len(program.graph.mutations) >= 3 + 3 * 3
    assert len(program.grad_writes) == 3


def test_listing_is_readable():
    fn, args, captured = _run_traced(CASES["backward_mlp"])
    text = str(captured.graphs[0])
    first = text.splitlines()[0]
    assert first.startswith("graph fn(%args: f32[4,6], %w1: f32[6,8] [lifted], %b1: f32[8] "
                            "[lifted], %w2: f32[8,3] [lifted]")
    assert "matmul(" in text and "# test_trace_corpus.py:" in text
    assert "tanh(" in text

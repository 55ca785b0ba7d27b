"""One draw per row of `multinomial` (a categorical policy's action, a sampled token) is part of
a compiled program on the CPU: it read the probabilities into Python, a graph break that ran a
whole policy step eagerly. Replays draw eager's numbers from the generator (the same actions
from the same seed) and check the probabilities as eager does. Several draws per row still
break the graph, with a message naming multinomial."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import kiln
import kiln.nn as nn
from kiln.distributions import Categorical


@pytest.mark.parametrize("shape,dtype", [((6, 5), kiln.float32), ((9,), kiln.float32),
                                         ((3, 4), kiln.float64)])
def test_one_draw_per_row_replays_eagers_draws(shape, dtype):
    probs = kiln.softmax(kiln.randn(*shape, dtype=dtype), -1)

    def f(p, g):
        return kiln.multinomial(p * 2, 1, generator=g) + 1

    cf = kiln.compile(f, fullgraph=True)        # a graph break would raise
    eager_gen, compiled_gen = kiln.Generator().manual_seed(3), kiln.Generator().manual_seed(3)
    eager = [f(probs, eager_gen) for _ in range(6)]
    compiled = [cf(probs, compiled_gen) for _ in range(6)]
    assert [e.tolist() for e in eager] == [c.tolist() for c in compiled]
    assert compiled[0].shape == eager[0].shape and compiled[0].dtype == kiln.int64
    assert len({tuple(e.reshape(-1).tolist()) for e in eager}) > 1     # draws do differ
    assert len(cf.entries) == 1


@pytest.mark.parametrize("bad", [[[0.5, -0.1, 0.6]], [[0.0, 0.0, 0.0]],
                                 [[float("nan"), 1.0, 1.0]], [[float("inf"), 1.0, 1.0]]],
                         ids=["negative", "zero_row", "nan", "inf"])
def test_a_replay_checks_the_probabilities_as_eager_does(bad):
    cf = kiln.compile(lambda p: kiln.multinomial(p, 1) + 0)
    good = kiln.tensor([[0.5, 0.1, 0.6]])
    cf(good)
    cf(good)                                     # traced, then replayed
    with pytest.raises(RuntimeError) as eager:
        kiln.multinomial(kiln.tensor(bad), 1)
    with pytest.raises(RuntimeError) as compiled:
        cf(kiln.tensor(bad))
    assert str(compiled.value).split(" (at ")[0] == str(eager.value).split(" (at ")[0]
    assert "probability tensor contains" in str(compiled.value)
    assert len(cf.entries) == 1 and next(iter(cf.entries.values())).program is not None


def test_a_compiled_policy_step_samples_the_actions_eager_samples():
    kiln.manual_seed(0)
    policy = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))

    def act(obs):
        with kiln.no_grad():
            dist = Categorical(logits=policy(obs))
            action = dist.sample()
            return action, dist.log_prob(action), dist.entropy()

    compiled_act = kiln.compile(act)
    obs = kiln.randn(8, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # no graph break, no fallback
        kiln.manual_seed(5)
        eager = [act(obs) for _ in range(5)]
        kiln.manual_seed(5)
        compiled = [compiled_act(obs) for _ in range(5)]
    for (a, logp, h), (b, logq, g) in zip(eager, compiled):
        assert a.tolist() == b.tolist()
        np.testing.assert_allclose(logq.numpy(), logp.numpy(), rtol=1e-6)
        np.testing.assert_allclose(g.numpy(), h.numpy(), rtol=1e-6)
    assert len(compiled_act.entries) == 1


def test_several_draws_per_row_still_break_the_graph_by_name():
    probs = kiln.softmax(kiln.randn(3, 5), -1)
    cf = kiln.compile(lambda p: kiln.multinomial(p, 2) + 0)
    with pytest.warns(UserWarning, match=r"graph break .*multinomial"):
        out = cf(probs)
    assert out.shape == (3, 2)

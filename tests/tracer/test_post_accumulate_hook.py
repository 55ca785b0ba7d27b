"""Tensor.register_post_accumulate_grad_hook and autograd.queue_callback against PyTorch."""

import numpy as np
import torch

import kiln
from kiln.tracer.autograd import queue_callback


def _mlp(lib, w1, w2, x):
    a = lib.tensor(w1, requires_grad=True)
    b = lib.tensor(w2, requires_grad=True)
    return a, b, lambda: ((lib.tensor(x) @ a).tanh() @ b).sum() + (a * a).sum()


def test_post_accumulate_hook_sees_the_full_gradient_and_runs_in_backward_order():
    rng = np.random.default_rng(0)
    w1, w2, x = rng.normal(size=(3, 4)), rng.normal(size=(4, 2)), rng.normal(size=(5, 3))
    seen = {}
    for lib in (kiln, torch):
        a, b, loss = _mlp(lib, w1, w2, x)
        log = []
        for name, t in (("a", a), ("b", b)):
            t.register_post_accumulate_grad_hook(
                lambda p, name=name: log.append((name, p.grad.detach().numpy().copy())))
        loss().backward()
        loss().backward()          # accumulates: the hook sees the sum of both
        seen[lib.__name__] = log
    assert [n for n, _ in seen["kiln"]] == [n for n, _ in seen["torch"]] == ["b", "a"] * 2
    for (_, g), (_, ref) in zip(seen["kiln"], seen["torch"]):
        np.testing.assert_allclose(g, ref, rtol=1e-12)


def test_post_accumulate_hook_fires_before_the_rest_of_backward_and_can_be_removed():
    rng = np.random.default_rng(1)
    a, b, loss = _mlp(kiln, rng.normal(size=(3, 4)), rng.normal(size=(4, 2)),
                      rng.normal(size=(5, 3)))
    events = []
    handle = b.register_post_accumulate_grad_hook(lambda p: events.append(("b", a.grad)))
    queue_hits = []
    a.register_post_accumulate_grad_hook(
        lambda p: queue_callback(lambda: queue_hits.append(p.grad.numpy().copy())))
    loss().backward()
    assert events == [("b", None)]     # b's gradient was final before a's was written
    np.testing.assert_array_equal(queue_hits[0], a.grad.numpy())
    handle.remove()
    loss().backward()
    assert len(events) == 1 and len(queue_hits) == 2


def test_a_hooked_parameter_alive_at_exit_leaves_no_error_message(tmp_path):
    """The optimizer-step-in-backward recipe keeps its hooked parameters until the interpreter
    exits; their registry's cleanup then must not fail (it printed 'Exception ignored in ...
    AttributeError: NoneType has no attribute pop')."""
    import os
    import subprocess
    import sys
    script = tmp_path / "hooked.py"
    script.write_text("import kiln\n"
                      "m = kiln.nn.Linear(3, 2)\n"
                      "for p in m.parameters():\n"
                      "    p.register_post_accumulate_grad_hook(lambda p: None)\n"
                      "m(kiln.ones(1, 3)).sum().backward()\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Exception ignored" not in done.stderr, done.stderr

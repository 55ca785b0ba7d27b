"""A compiled function's argument that requires grad but does not reach the output: eager
backward leaves its .grad None (as PyTorch does), and optimizers skip it. A replay of the
compiled function gave it a gradient of zeros, so an eager AdamW step after it decayed the
unused tensor that eager left alone: a silent compiled-vs-eager difference (the joint backward
now differentiates only for the inputs the outputs reach, `tracer/joint.py`). Found writing
tests/scripts/programs' DPO test."""

import numpy as np

import kiln


def loss_of(x, unused):
    return (x * x).sum()


def test_unused_argument_keeps_no_grad_and_optimizers_skip_it():
    results = []
    for fn in (loss_of, kiln.compile(loss_of)):
        x = kiln.tensor([1.0, -2.0], requires_grad=True)
        unused = kiln.tensor([3.0, 4.0], requires_grad=True)
        opt = kiln.optim.AdamW([x, unused], lr=0.1, weight_decay=0.5)
        grads = []
        for _ in range(3):                   # trace, then replays
            opt.zero_grad()
            fn(x, unused).backward()
            grads.append(unused.grad)
            opt.step()
        results.append((grads, unused.detach().numpy().copy()))
    (eager_grads, eager_unused), (compiled_grads, compiled_unused) = results
    assert all(g is None for g in eager_grads)
    np.testing.assert_array_equal(eager_unused, [3.0, 4.0])
    assert all(g is None for g in compiled_grads), compiled_grads
    np.testing.assert_array_equal(compiled_unused, eager_unused)

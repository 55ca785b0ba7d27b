"""The one joint forward+backward tracer (`kiln.tracer.joint.trace_backward`): what
`@kiln.compile` derives its backward with and `trace_joint` traces for tests, so both give the
same gradients to the same inputs; non-float inputs never get one (issue 15)."""

import numpy as np
import torch

import kiln
import kiln.compiler
from kiln.ir.interpreter import interpret
from kiln.tracer import joint
from kiln.tracer.joint import trace_joint


def test_the_compiler_derives_its_backward_with_the_one_joint_tracer():
    assert kiln.compiler.function.trace_backward is joint.trace_backward


def test_an_integer_input_computed_from_one_that_requires_grad_gets_no_gradient():
    # `w.long()` does not require grad, as in PyTorch; its value still reaches the function
    # as an input, and it must get no gradient there
    w = kiln.randn(3).requires_grad_()
    idx = (w * 0 + kiln.tensor([1.0, 2.0, 3.0])).long()
    assert not idx.requires_grad and idx.dtype is kiln.int64
    x = kiln.randn(3).requires_grad_()

    def f(x):
        return (x * idx).sum()
    graph, info = trace_joint(f, x)
    kinds = [v.dtype.name for v in graph.inputs]
    assert [kinds[i] for i in info.grad_inputs] == ["float32"]      # x, not idx
    outs, _ = interpret(graph, info.snapshots + info.tangent_values)
    np.testing.assert_array_equal(outs[1], [1.0, 2.0, 3.0])

    compiled = kiln.compile(f, backend="numpy")
    out = compiled(x)
    (entry,) = compiled.entries.values()
    assert entry.joint.grad_inputs == info.grad_inputs
    assert entry.joint.differentiable_outputs == info.differentiable_outputs
    out.backward()
    tx = torch.from_numpy(x.detach().numpy()).requires_grad_()
    (tx * torch.tensor([1, 2, 3])).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy())
    x.grad = None
    compiled(x).backward()                 # the replay runs the compiled backward
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy())
    assert w.grad is None


def test_given_tangents_seed_the_backward():
    a = kiln.randn(2, 3).requires_grad_()
    tangent = np.arange(6, dtype=np.float32).reshape(2, 3)
    graph, info = trace_joint(lambda a: a.sin() * 3.0, a, tangents=[tangent])
    np.testing.assert_array_equal(info.tangent_values[0], tangent)
    outs, _ = interpret(graph, info.snapshots + info.tangent_values)
    ta = torch.from_numpy(a.detach().numpy()).requires_grad_()
    (ta.sin() * 3.0).backward(torch.from_numpy(tangent))
    np.testing.assert_allclose(outs[1], ta.grad.numpy(), rtol=1e-6)
    np.testing.assert_allclose(info.eager_grads[0], ta.grad.numpy(), rtol=1e-6)


def test_each_gradient_has_its_inputs_dtype_as_eager_autograd_stores_it():
    a = kiln.randn(3, dtype=kiln.float16).requires_grad_()
    b = kiln.randn(3).requires_grad_()
    graph, info = trace_joint(lambda a, b: (a * b).sum(), a, b)
    assert [graph.outputs[1].dtype, graph.outputs[2].dtype] == [kiln.float16, kiln.float32]
    outs, _ = interpret(graph, info.snapshots + info.tangent_values)
    ta = torch.from_numpy(a.detach().numpy()).requires_grad_()
    tb = torch.from_numpy(b.detach().numpy()).requires_grad_()
    (ta * tb).sum().backward()
    assert outs[1].dtype == np.float16
    np.testing.assert_allclose(outs[1], ta.grad.numpy(), rtol=1e-3)
    np.testing.assert_allclose(outs[2], tb.grad.numpy(), rtol=1e-3)
